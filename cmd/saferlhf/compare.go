package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/eval"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/ppo"
)

// compareRun is one training run of saferlhf compare.
type compareRun struct {
	name string
	alg  ppo.Algorithm
	args []string // flags that set the algorithm (after the shared ones)
}

// compareRuns returns the runs of the comparison: plain PPO, reward shaping with each fixed
// λ, PPO-Lag with the SGD and the PID multiplier.
func compareRuns(lambdas []float64) []compareRun {
	runs := []compareRun{{name: "ppo", alg: ppo.PPO}}
	for _, l := range lambdas {
		s := strconv.FormatFloat(l, 'g', -1, 64)
		runs = append(runs, compareRun{name: "shaping-" + s, alg: ppo.Fixed, args: []string{"--lambda", "fixed", "--lambda-init", s}})
	}
	return append(runs,
		compareRun{name: "ppo-lag", alg: ppo.PPOLag, args: []string{"--lambda", "sgd"}},
		compareRun{name: "ppo-lag-pid", alg: ppo.PPOLagPID, args: []string{"--lambda", "pid"}})
}

// compareConfig is the command line of compare: a ppo-lag run's flags (passed to every run)
// and the comparison's own. Compare runs as one process, so a data-parallel run's flags
// (group "dist": --zero-stage, --collectives) are not among them.
type compareConfig struct {
	ppo.RunConfig
	Judge          string   `flag:"judge-cost-model" help:"independent judge cost model dir (trained on data the training cost model never saw); its own tokenizer is found beside it"`
	ShapingLambdas []string `flag:"shaping-lambdas" help:"the fixed penalties λ of the reward-shaping runs (r − λ·c), comma-separated"`
	Bootstrap      int      `flag:"bootstrap" help:"bootstrap resamples of the held-out prompts for the 95% confidence intervals"`
	ScoreMaxLength int      `flag:"score-max-length" help:"scoring width in tokens (0: --max-prompt-tokens + --max-new-tokens)"`
}

// runCompare trains every algorithm of the paper's comparison from one SFT policy,
// reward model and cost model with the same seed and budget, then evaluates them
// (and the SFT policy) on the same held-out prompts with the training cost model
// and an independent judge cost model.
func runCompare(args []string) error {
	c := compareConfig{RunConfig: ppo.DefaultRunConfig(ppo.PPOLag), ShapingLambdas: []string{"0.1", "5"}, Bootstrap: 1000}
	fs := newFlagSet("compare", "")
	config.Register(fs, &c, "cost")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	var ls []float64
	for _, s := range c.ShapingLambdas {
		l, err := strconv.ParseFloat(s, 64)
		if err != nil || !(l > 0) || math.IsInf(l, 0) {
			return usagef("--shaping-lambdas: %q is not a positive number", s)
		}
		ls = append(ls, l)
	}
	var ck config.Checker
	ck.Required("judge-cost-model", c.Judge)
	ck.Check(c.EvalMax >= 1, "--eval-max %d: the comparison needs held-out prompts", c.EvalMax)
	ck.PositiveInt("bootstrap", c.Bootstrap)
	if err := joinErrs(ck.Err(), c.RunConfig.Validate()); err != nil {
		return usagef("%v", err)
	}
	if err := inputsExist("model", c.Model, "reward-model", c.RewardModel, "cost-model", c.CostModel, "judge-cost-model", c.Judge); err != nil {
		return err
	}
	if entries, err := os.ReadDir(c.Out); err == nil && len(entries) > 0 && !c.Resume {
		return usagef("--out %s is not empty: pass --resume to continue (finished runs are kept) or choose another directory", c.Out)
	}
	if err := os.MkdirAll(c.Out, 0o755); err != nil {
		return err
	}
	if err := config.WriteEffective(fs, filepath.Join(c.Out, "config.yaml")); err != nil {
		return err
	}

	// Every run gets the flags set here (the same seed, data and budget); the rest keep
	// each algorithm's own defaults (ppo.DefaultConfig).
	own := map[string]bool{"judge-cost-model": true, "shaping-lambdas": true, "bootstrap": true, "score-max-length": true,
		"out": true, "resume": true, "force": true, "eval-max": true, "lambda": true, config.FlagName: true}
	policies := []eval.ComparePolicy{{Name: "sft", Model: c.Model}}
	for _, r := range compareRuns(ls) {
		dir := filepath.Join(c.Out, r.name)
		pol := eval.ComparePolicy{Name: r.name, Model: filepath.Join(dir, "policy")}
		if r.alg != ppo.PPO {
			pol.Run = dir // λ and Jc − d curves (plain PPO has no cost)
		}
		policies = append(policies, pol)
		if _, err := os.Stat(filepath.Join(dir, "policy", "config.json")); err == nil {
			fmt.Fprintf(os.Stderr, "compare: %s: done earlier (%s)\n", r.name, dir)
			continue
		}
		var a []string
		fs.Visit(func(fl *flag.Flag) {
			name := config.Canonical(fl)
			if own[name] || r.alg == ppo.Fixed && name == "lambda-init" || r.alg == ppo.PPO && fs.Lookup(name) != nil && isCostFlag(name) {
				return
			}
			a = append(a, "--"+name+"="+fl.Value.String())
		})
		a = append(a, r.args...)
		a = append(a, "--out", dir, "--eval-max", "0")
		if _, err := os.Stat(filepath.Join(dir, "checkpoints", checkpoint.LatestFile)); err == nil && c.Resume {
			a = append(a, "--resume")
		} else if _, err := os.Stat(dir); err == nil {
			a = append(a, "--force") // a run interrupted before its first checkpoint starts again
		}
		fmt.Fprintf(os.Stderr, "\ncompare: == %s: saferlhf %s %s\n", r.name, map[bool]string{true: "ppo", false: "ppo-lag"}[r.alg == ppo.PPO], strings.Join(a, " "))
		var err error
		if r.alg == ppo.PPO {
			err = runPPO(a)
		} else {
			err = runPPOLag(a)
		}
		if err != nil {
			return fmt.Errorf("compare: %s: %w", r.name, err)
		}
	}

	be, err := backend.New(c.Backend)
	if err != nil {
		return err
	}
	tokPath, err := model.ResolveTokenizer(c.Tokenizer, c.Model)
	if err != nil {
		return err
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return err
	}
	held, err := ppo.HeldOutPrompts(c.RunConfig, tok)
	if err != nil {
		return err
	}
	if len(held) == 0 {
		return fmt.Errorf("compare: no held-out prompts (raise --eval-ratio or give --eval-data)")
	}
	width := c.ScoreMaxLength
	if width <= 0 {
		width = c.MaxPromptTokens + c.MaxNewTokens
	}
	rep, err := eval.Compare(be, eval.CompareOptions{Policies: policies, Reward: c.RewardModel, Cost: c.CostModel,
		Judge: c.Judge, Tokenizer: tokPath, Prompts: held, MaxNewTokens: c.MaxNewTokens,
		Temperature: c.Temperature, TopP: c.TopP, TopK: c.TopK, Seed: c.Seed ^ 0xe7a1, Batch: c.EvalBatch,
		MaxLength: width, Bootstrap: c.Bootstrap, Progress: os.Stderr})
	if err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(c.Out, "compare.json"), rep); err != nil {
		return err
	}
	var md bytes.Buffer
	if err := rep.Markdown(&md); err != nil {
		return err
	}
	if err := atomicfile.WriteBytes(filepath.Join(c.Out, "compare.md"), md.Bytes(), 0o644); err != nil {
		return err
	}
	png := filepath.Join(c.Out, "compare.png")
	if err := eval.PlotCompare(png, rep, c.Threshold); err != nil {
		return err
	}
	if err := rep.Format(os.Stdout); err != nil {
		return err
	}
	fmt.Printf("table: %s\nplot: %s\nper-prompt scores: %s\n", filepath.Join(c.Out, "compare.md"), png, filepath.Join(c.Out, "compare.json"))
	return nil
}

// isCostFlag reports whether a ppo-lag flag has no meaning for plain ppo (it has no cost model).
func isCostFlag(name string) bool {
	fs := newFlagSet("ppo", "")
	c := ppo.DefaultRunConfig(ppo.PPO)
	config.Register(fs, &c, "dist")
	return fs.Lookup(name) == nil
}

func joinErrs(a, b error) error {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	return fmt.Errorf("%w\n%w", a, b)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteBytes(path, append(b, '\n'), 0o644)
}
