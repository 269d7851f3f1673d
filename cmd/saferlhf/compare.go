package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/eval"
	"github.com/saferlhf/saferlhf/train/ppo"
	"github.com/saferlhf/saferlhf/train/stages"
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

// runCompare trains every algorithm of the paper's comparison from one SFT policy,
// reward model and cost model with the same seed and budget, then evaluates them
// (and the SFT policy) on the same held-out prompts with the training cost model
// and an independent judge cost model.
func runCompare(args []string) error {
	fs, f := newRLFlags("compare", ppo.PPOLag)
	judge := fs.String("judge-cost-model", "", "independent judge cost model dir (trained on data the training cost model never saw); its own tokenizer is found beside it")
	lambdas := fs.String("shaping-lambdas", "0.1,5", "the fixed penalties λ of the reward-shaping runs (r − λ·c), comma-separated")
	boot := fs.Int("bootstrap", 1000, "bootstrap resamples of the held-out prompts for the 95% confidence intervals")
	scoreLen := fs.Int("score-max-length", 0, "scoring width in tokens (0: --max-prompt-tokens + --max-new-tokens)")
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	var ls []float64
	for _, s := range splitList(*lambdas) {
		l, err := strconv.ParseFloat(s, 64)
		if err != nil || !(l > 0) {
			return usagef("--shaping-lambdas: %q is not a positive number", s)
		}
		ls = append(ls, l)
	}
	switch {
	case f.actor == "" || f.rewardModel == "" || f.costModel == "" || *judge == "":
		return usagef("--actor, --reward-model, --cost-model and --judge-cost-model are required")
	case f.trainData == "":
		return usagef("--train-data is required")
	case f.evalSize < 1:
		return usagef("--eval-size %d: the comparison needs held-out prompts", f.evalSize)
	case *boot < 1:
		return usagef("--bootstrap %d must be >= 1", *boot)
	}
	if entries, err := os.ReadDir(f.out); err == nil && len(entries) > 0 && !f.resume {
		return usagef("--output %s is not empty: pass --resume to continue (finished runs are kept) or choose another directory", f.out)
	}
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return err
	}
	if err := config.WriteEffective(fs, filepath.Join(f.out, "config.yaml")); err != nil {
		return err
	}

	// Every run gets the flags set here (the same seed, data and budget); the rest keep
	// each algorithm's own defaults (ppo.DefaultConfig).
	own := map[string]bool{"judge-cost-model": true, "shaping-lambdas": true, "bootstrap": true, "score-max-length": true,
		"output": true, "resume": true, "eval-size": true, "lambda": true, config.FlagName: true}
	policies := []eval.ComparePolicy{{Name: "sft", Model: f.actor}}
	for _, r := range compareRuns(ls) {
		dir := filepath.Join(f.out, r.name)
		pol := eval.ComparePolicy{Name: r.name, Model: filepath.Join(dir, "policy")}
		if r.alg != ppo.PPO {
			pol.Run = dir // λ and Jc − d curves (plain PPO has no cost)
		}
		policies = append(policies, pol)
		if _, err := os.Stat(filepath.Join(dir, "policy", "config.json")); err == nil {
			fmt.Fprintf(os.Stderr, "compare: %s: done earlier (%s)\n", r.name, dir)
			continue
		}
		target, _ := newRLFlags(r.name, r.alg)
		var a []string
		fs.Visit(func(fl *flag.Flag) {
			if !own[fl.Name] && target.Lookup(fl.Name) != nil && !(r.alg == ppo.Fixed && fl.Name == "lambda-init") {
				a = append(a, "--"+fl.Name+"="+fl.Value.String())
			}
		})
		a = append(a, r.args...)
		a = append(a, "--output", dir, "--eval-size", "0")
		if _, err := os.Stat(filepath.Join(dir, "checkpoints")); err == nil && f.resume {
			a = append(a, "--resume")
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

	be, err := backend.New(f.backend)
	if err != nil {
		return err
	}
	tokPath, err := stages.ResolveTokenizer(f.tokenizer, f.actor)
	if err != nil {
		return err
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return err
	}
	_, held, _, err := loadPrompts(tok, f.trainData, f.evalData, f.evalSplit, f.cfg.MaxPromptTokens)
	if err != nil {
		return err
	}
	if len(held) > f.evalSize {
		held = held[:f.evalSize]
	}
	if len(held) == 0 {
		return fmt.Errorf("compare: no held-out prompts (raise --eval-split or give --eval-data)")
	}
	width := *scoreLen
	if width <= 0 {
		width = f.cfg.MaxPromptTokens + f.cfg.MaxNewTokens
	}
	rep, err := eval.Compare(be, eval.CompareOptions{Policies: policies, Reward: f.rewardModel, Cost: f.costModel,
		Judge: *judge, Tokenizer: tokPath, Prompts: held, MaxNewTokens: f.cfg.MaxNewTokens,
		Temperature: f.cfg.Temperature, TopP: f.cfg.TopP, Seed: f.cfg.Seed ^ 0xe7a1, Batch: f.evalBatch,
		MaxLength: width, Bootstrap: *boot, Progress: os.Stderr})
	if err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(f.out, "compare.json"), rep); err != nil {
		return err
	}
	var md bytes.Buffer
	if err := rep.Markdown(&md); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.out, "compare.md"), md.Bytes(), 0o644); err != nil {
		return err
	}
	png := filepath.Join(f.out, "compare.png")
	if err := eval.PlotCompare(png, rep, f.cfg.Threshold); err != nil {
		return err
	}
	if err := rep.Format(os.Stdout); err != nil {
		return err
	}
	fmt.Printf("table: %s\nplot: %s\nper-prompt scores: %s\n", filepath.Join(f.out, "compare.md"), png, filepath.Join(f.out, "compare.json"))
	return nil
}
