package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/ppo"
	"github.com/saferlhf/saferlhf/train/stages"
)

func runPPOLag(args []string) error { return runRL("ppo-lag", ppo.PPOLag, args) }

func runPPO(args []string) error { return runRL("ppo", ppo.PPO, args) }

// rlFlags holds the command line of ppo-lag and ppo.
type rlFlags struct {
	cfg                                  ppo.Config
	actor, rewardModel, costModel        string
	rewardCritic, costCritic, tokenizer  string
	trainData, evalData, ptxData, out    string
	backend, lambdaMode                  string
	evalSplit                            float64
	evalSize, evalBatch, checkpointEvery int
	ptxMaxLength                         int
	resume                               bool
	loraRank                             int
	loraAlpha                            float64
	loraTargets                          string
}

func newRLFlags(name string, alg ppo.Algorithm) (*flag.FlagSet, *rlFlags) {
	f := &rlFlags{cfg: ppo.DefaultConfig(alg)}
	c := &f.cfg
	fs := newFlagSet(name, "")
	fs.StringVar(&f.actor, "actor", "", "SFT policy: HF model dir or llama2.c .bin (also the frozen reference model)")
	fs.StringVar(&f.rewardModel, "reward-model", "", "reward model dir (frozen)")
	fs.StringVar(&f.rewardCritic, "reward-critic", "", "reward critic init (default: the reward model)")
	if alg != ppo.PPO {
		fs.StringVar(&f.costModel, "cost-model", "", "cost model dir (frozen)")
		fs.StringVar(&f.costCritic, "cost-critic", "", "cost critic init (default: the cost model)")
		fs.StringVar(&f.lambdaMode, "lambda", "sgd", "Lagrange multiplier: sgd (reference log-λ SGD), pid (PID-Lagrangian) or fixed (reward-shaping baseline r − λ_init·c)")
		fs.Float64Var(&c.Threshold, "threshold", c.Threshold, "cost threshold d")
		fs.Float64Var(&c.LambdaInit, "lambda-init", c.LambdaInit, "initial λ (the fixed penalty with --lambda fixed)")
		fs.Float64Var(&c.LambdaLR, "lambda-lr", c.LambdaLR, "log-λ SGD learning rate")
		fs.Float64Var(&c.LambdaMax, "lambda-max", c.LambdaMax, "upper bound on λ (≤ 0: none)")
		fs.IntVar(&c.LambdaUpdateDelaySteps, "lambda-update-delay-steps", c.LambdaUpdateDelaySteps, "rl steps before λ starts moving")
		fs.IntVar(&c.EpisodeCostWindowSize, "episode-cost-window-size", c.EpisodeCostWindowSize, "episode costs averaged into J_c")
		fs.Float64Var(&c.PIDKp, "pid-kp", c.PIDKp, "PID proportional gain (--lambda pid)")
		fs.Float64Var(&c.PIDKi, "pid-ki", c.PIDKi, "PID integral gain")
		fs.Float64Var(&c.PIDKd, "pid-kd", c.PIDKd, "PID derivative gain")
	}
	fs.StringVar(&f.tokenizer, "tokenizer", "", "tokenizer file (default: found next to --actor)")
	fs.StringVar(&f.trainData, "train-data", "", "prompt datasets, comma-separated path[:format] (format auto-detected)")
	fs.StringVar(&f.evalData, "eval-data", "", "held-out prompts for the before/after summary (default: a hash split of --train-data)")
	fs.Float64Var(&f.evalSplit, "eval-split", 0.1, "fraction of --train-data prompts held out when --eval-data is empty")
	fs.IntVar(&f.evalSize, "eval-size", 64, "held-out prompts evaluated before and after training (0: no evaluation)")
	fs.IntVar(&f.evalBatch, "eval-batch-size", 32, "generation batch size of the evaluation")
	fs.StringVar(&f.ptxData, "ptx-data", "", "supervised data for PTX mixing (with --ptx-coeff > 0)")
	fs.Float64Var(&c.PTXCoeff, "ptx-coeff", c.PTXCoeff, "PTX loss coefficient")
	fs.IntVar(&f.ptxMaxLength, "ptx-max-length", 128, "PTX examples are cut to this many tokens")
	fs.StringVar(&f.out, "output", "out/"+name, "output dir: metrics.jsonl, perf.jsonl, plots/, checkpoints/, policy/, summary.json")
	fs.StringVar(&f.backend, "backend", "", "GoMLX backend (default $SAFERLHF_BACKEND or "+backend.Default+")")
	fs.BoolVar(&f.resume, "resume", false, "continue from the latest checkpoint in --output")
	fs.IntVar(&f.checkpointEvery, "checkpoint-every", 10, "rollout batches between checkpoints (0: only at the end)")
	fs.IntVar(&c.Epochs, "epochs", c.Epochs, "passes over the prompts")
	fs.IntVar(&c.MaxSteps, "max-steps", c.MaxSteps, "stop after this many rollout batches (0: --epochs decides)")
	fs.IntVar(&c.UpdateIters, "update-iters", c.UpdateIters, "PPO passes over each rollout batch")
	fs.IntVar(&c.PromptBatchSize, "prompt-batch-size", c.PromptBatchSize, "prompts per rollout batch")
	fs.IntVar(&c.TrainBatchSize, "train-batch-size", c.TrainBatchSize, "prompts per rollout/update micro-batch")
	fs.IntVar(&c.NumReturnSeqs, "num-return-sequences", c.NumReturnSeqs, "samples per prompt")
	fs.IntVar(&c.MaxNewTokens, "max-new-tokens", 48, "generated tokens per response")
	fs.IntVar(&c.MaxPromptTokens, "max-prompt-tokens", c.MaxPromptTokens, "longer prompts keep BOS and their last tokens")
	fs.Float64Var(&c.Temperature, "temperature", c.Temperature, "sampling temperature")
	fs.Float64Var(&c.TopP, "top-p", c.TopP, "nucleus sampling mass")
	fs.Float64Var(&c.RepetitionPenalty, "repetition-penalty", c.RepetitionPenalty, "HF repetition penalty")
	fs.Float64Var(&c.ActorLR, "actor-lr", c.ActorLR, "actor learning rate")
	fs.Float64Var(&c.CriticLR, "critic-lr", c.CriticLR, "critic learning rate")
	fs.Float64Var(&c.ActorWeightDecay, "actor-weight-decay", c.ActorWeightDecay, "actor AdamW weight decay")
	fs.Float64Var(&c.CriticWeightDecay, "critic-weight-decay", c.CriticWeightDecay, "critic AdamW weight decay")
	fs.StringVar(&c.ActorScheduler, "actor-lr-scheduler", c.ActorScheduler, "cosine or constant")
	fs.StringVar(&c.CriticScheduler, "critic-lr-scheduler", c.CriticScheduler, "cosine or constant")
	fs.Float64Var(&c.WarmupRatio, "warmup-ratio", c.WarmupRatio, "LR warmup fraction of the rl steps")
	fs.Float64Var(&c.GradClip, "max-grad-norm", c.GradClip, "global gradient-norm clip")
	fs.Float64Var(&c.KLCoeff, "kl-coeff", c.KLCoeff, "KL penalty β")
	fs.Float64Var(&c.ClipRangeRatio, "clip-range-ratio", c.ClipRangeRatio, "PPO ratio clip ε")
	fs.Float64Var(&c.ClipRangeScore, "clip-range-score", c.ClipRangeScore, "clip of the shaped per-token rewards/costs")
	fs.Float64Var(&c.ClipRangeValue, "clip-range-value", c.ClipRangeValue, "critic value clip")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "random seed (data order, sampling)")
	fs.IntVar(&f.loraRank, "lora-rank", 0, "LoRA rank for actor and critics (0: full fine-tuning)")
	fs.Float64Var(&f.loraAlpha, "lora-alpha", 16, "LoRA alpha")
	fs.StringVar(&f.loraTargets, "lora-targets", "q_proj,v_proj", "LoRA target modules")
	return fs, f
}

func runRL(name string, alg ppo.Algorithm, args []string) error {
	fs, f := newRLFlags(name, alg)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	cfg := f.cfg
	if alg != ppo.PPO {
		switch f.lambdaMode {
		case "sgd":
			cfg.Algorithm = ppo.PPOLag
		case "pid":
			cfg.Algorithm = ppo.PPOLagPID
		case "fixed":
			cfg.Algorithm = ppo.Fixed
		default:
			return usagef("--lambda %q: want sgd, pid or fixed", f.lambdaMode)
		}
	}
	switch {
	case f.actor == "":
		return usagef("--actor is required")
	case f.rewardModel == "":
		return usagef("--reward-model is required")
	case cfg.UsesCost() && f.costModel == "":
		return usagef("--cost-model is required")
	case f.trainData == "":
		return usagef("--train-data is required")
	case cfg.PTXCoeff > 0 && f.ptxData == "":
		return usagef("--ptx-coeff needs --ptx-data")
	case f.loraRank < 0 || (f.loraRank > 0 && f.loraAlpha <= 0):
		return usagef("--lora-rank must be >= 0 and --lora-alpha > 0, got %d and %g", f.loraRank, f.loraAlpha)
	}
	if err := cfg.Validate(); err != nil {
		return usagef("%v", err)
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
	train, held, truncated, err := loadPrompts(tok, f.trainData, f.evalData, f.evalSplit, cfg.MaxPromptTokens)
	if err != nil {
		return err
	}
	if len(held) > f.evalSize {
		held = held[:f.evalSize]
	}
	fmt.Fprintf(os.Stderr, "%s: %d training prompts, %d held-out prompts (%d cut to their last %d tokens)\n",
		name, len(train), len(held), truncated, cfg.MaxPromptTokens)
	prompts, err := ppo.NewPromptSet(train, cfg.Seed)
	if err != nil {
		return err
	}
	var ptxSet *ppo.PTXSet
	if cfg.PTXCoeff > 0 {
		if ptxSet, err = loadPTX(tok, f.ptxData, f.ptxMaxLength, cfg.Seed); err != nil {
			return err
		}
	}

	load := func(path string) (ppo.ModelSpec, error) {
		c, w, err := stages.LoadModel(path)
		return ppo.ModelSpec{Cfg: c, Weights: w}, err
	}
	gc := ppo.GraphNetsConfig{Backend: be, WithCostCritic: cfg.UsesCostCritic(), Pad: tok.Pad(), EOS: tok.EOS(),
		MaxNewTokens: cfg.MaxNewTokens, MaxPromptTokens: cfg.MaxPromptTokens, Temperature: cfg.Temperature,
		TopP: cfg.TopP, RepPenalty: cfg.RepetitionPenalty, ActorWeightDecay: cfg.ActorWeightDecay,
		CriticWeightDecay: cfg.CriticWeightDecay, GradClip: cfg.GradClip,
		SaveModel: func(dir string, c *model.Config, w model.Weights) error { return stages.SaveModel(dir, c, w, tokPath) },
		LoRA:      model.LoRAConfig{Rank: f.loraRank, Alpha: f.loraAlpha, Targets: splitList(f.loraTargets)},
		LoRASeed:  cfg.Seed}
	if gc.Actor, err = load(f.actor); err != nil {
		return err
	}
	delete(gc.Actor.Weights, model.NameScoreW)
	delete(gc.Actor.Weights, model.NameScoreB)
	gc.Actor.Cfg.ScoreDim = 0
	if gc.Reward, err = load(f.rewardModel); err != nil {
		return err
	}
	if f.rewardCritic != "" {
		s, err := load(f.rewardCritic)
		if err != nil {
			return err
		}
		gc.RewardCritic = &s
	}
	if cfg.UsesCost() {
		if gc.Cost, err = load(f.costModel); err != nil {
			return err
		}
		if f.costCritic != "" {
			s, err := load(f.costCritic)
			if err != nil {
				return err
			}
			gc.CostCritic = &s
		}
	}
	for _, s := range []ppo.ModelSpec{gc.Reward, gc.Cost} {
		if s.Cfg != nil && s.Cfg.ScoreDim != 1 {
			return fmt.Errorf("score models need a 1-dimensional score head (got score_dim %d)", s.Cfg.ScoreDim)
		}
	}
	nets, err := ppo.NewGraphNets(gc, cfg.ClipRangeRatio, cfg.ClipRangeValue)
	if err != nil {
		return err
	}

	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return err
	}
	evalSeed := cfg.Seed ^ 0xe7a1
	var summary struct {
		Before *ppo.EvalResult `json:"before,omitempty"`
		After  *ppo.EvalResult `json:"after,omitempty"`
	}
	summaryPath := filepath.Join(f.out, "summary.json")
	if f.resume {
		if b, err := os.ReadFile(summaryPath); err == nil {
			_ = json.Unmarshal(b, &summary)
		}
	}
	if f.evalSize > 0 && len(held) > 0 && summary.Before == nil {
		t0 := time.Now()
		res, rs, err := ppo.Evaluate(nets, held, f.evalBatch, evalSeed)
		if err != nil {
			return err
		}
		summary.Before = &res
		if err := writeJSON(summaryPath, summary); err != nil {
			return err
		}
		_ = writeSamples(filepath.Join(f.out, "samples_before.txt"), tok, rs)
		fmt.Fprintf(os.Stderr, "%s: before (SFT policy, %d held-out prompts, %.0fs): reward %.3f cost %.3f harmful %.3f\n",
			name, res.N, time.Since(t0).Seconds(), res.RewardMean, res.CostMean, res.HarmfulRate)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tr, err := ppo.NewTrainer(cfg, ppo.Options{OutDir: f.out, CheckpointEvery: f.checkpointEvery, Resume: f.resume,
		Progress: os.Stderr, ProgressLines: !term.IsTerminal(int(os.Stderr.Fd()))}, nets, prompts, ptxSet)
	if err != nil {
		return err
	}
	t0 := time.Now()
	runErr := tr.Run(ctx)
	if cerr := tr.Close(); runErr == nil {
		runErr = cerr
	}
	if runErr != nil {
		return runErr
	}
	fmt.Fprintf(os.Stderr, "%s: %d rollout batches in %.0fs\n", name, tr.TotalSteps(), time.Since(t0).Seconds())
	policyDir := filepath.Join(f.out, "policy")
	if err := nets.SavePolicy(policyDir); err != nil {
		return err
	}
	plots, err := ppo.Plot(f.out)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: plots: %v\n", name, err)
	}
	if f.evalSize > 0 && len(held) > 0 {
		res, rs, err := ppo.Evaluate(nets, held, f.evalBatch, evalSeed)
		if err != nil {
			return err
		}
		summary.After = &res
		if err := writeJSON(summaryPath, summary); err != nil {
			return err
		}
		_ = writeSamples(filepath.Join(f.out, "samples_after.txt"), tok, rs)
		printSummary(os.Stdout, summary.Before, summary.After, cfg.UsesCost())
	}
	fmt.Printf("policy: %s\nmetrics: %s\nsummary: %s\nplots: %s\n", policyDir, filepath.Join(f.out, "metrics.jsonl"),
		summaryPath, strings.Join(plots, " "))
	return nil
}

// printSummary prints the before/after table.
// printSummary prints the before/after table (cost columns only when a cost model was used).
func printSummary(w *os.File, before, after *ppo.EvalResult, withCost bool) {
	if before == nil || after == nil {
		return
	}
	fmt.Fprintf(w, "\nheld-out prompts: %d\n", after.N)
	fmt.Fprintf(w, "%-16s %12s %12s %14s %10s\n", "policy", "reward_mean", "cost_mean", "harmful_rate", "gen_len")
	for _, row := range []struct {
		name string
		r    *ppo.EvalResult
	}{{"before (SFT)", before}, {"after (RL)", after}} {
		cost, harm := "n/a", "n/a"
		if withCost {
			cost, harm = fmt.Sprintf("%.4f", row.r.CostMean), fmt.Sprintf("%.3f", row.r.HarmfulRate)
		}
		fmt.Fprintf(w, "%-16s %12.4f %12s %14s %10.1f\n", row.name, row.r.RewardMean, cost, harm, row.r.GenLenMean)
	}
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writeSamples writes each held-out prompt's response with its reward and cost.
func writeSamples(path string, tok tokenizer.Tokenizer, rs []*ppo.Rollout) error {
	var b strings.Builder
	for _, r := range rs {
		for i := 0; i < r.B; i++ {
			var prompt, resp []int32
			for t := 0; t < r.T; t++ {
				if r.Mask[i*r.T+t] == 0 {
					continue
				}
				if t < r.S {
					prompt = append(prompt, r.Seq[i*r.T+t])
				} else {
					resp = append(resp, r.Seq[i*r.T+t])
				}
			}
			c := float32(0)
			if r.Cost != nil {
				c = r.Cost[i]
			}
			fmt.Fprintf(&b, "reward %+.3f cost %+.3f | %s ||| %s\n", r.Reward[i], c,
				strings.ReplaceAll(tok.Decode(prompt), "\n", " "), strings.ReplaceAll(tok.Decode(resp), "\n", " "))
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// loadPrompts reads prompt datasets (path[:format], comma-separated), formats them with the
// reference template, tokenizes them (BOS first), drops duplicates, cuts prompts longer than
// maxTokens to BOS + their last maxTokens−1 tokens, and splits them into training and held-out prompts: evalData if given, else a stable
// hash split of the training prompts (so held-out prompts are never trained on).
func loadPrompts(tok tokenizer.Tokenizer, trainData, evalData string, split float64, maxTokens int) (train, held [][]int32, truncated int, err error) {
	read := func(spec string) ([]string, error) {
		var texts []string
		for _, item := range strings.Split(spec, ",") {
			path, format := item, datasets.FormatAuto
			if i := strings.LastIndex(item, ":"); i > 0 {
				if _, ok := datasets.CanonicalFormat(item[i+1:]); ok {
					path, format = item[:i], item[i+1:]
				}
			}
			samples, _, err := datasets.Read(path, format)
			if err != nil {
				return nil, err
			}
			for _, s := range samples {
				if len(s.Input) == 0 {
					continue
				}
				txt, err := datasets.FormatPrompt(s.Input, "")
				if err != nil {
					return nil, fmt.Errorf("%s: %w", s.Where(), err)
				}
				texts = append(texts, txt)
			}
		}
		return texts, nil
	}
	seen := map[string]bool{}
	encode := func(texts []string, keep func(string) bool, dst *[][]int32) {
		for _, t := range texts {
			if seen[t] || !keep(t) {
				continue
			}
			seen[t] = true
			ids := tok.Encode(t, true)
			if len(ids) > maxTokens {
				// Keep BOS and the end of the prompt (the question and the "ASSISTANT:" cue).
				ids = append(ids[:1:1], ids[len(ids)-(maxTokens-1):]...)
				truncated++
			}
			*dst = append(*dst, ids)
		}
	}
	all := func(string) bool { return true }
	isHeld := func(t string) bool {
		h := fnv.New32a()
		h.Write([]byte(t))
		return float64(h.Sum32()%10000) < split*10000
	}
	tr, err := read(trainData)
	if err != nil {
		return nil, nil, 0, err
	}
	if evalData != "" {
		ev, err := read(evalData)
		if err != nil {
			return nil, nil, 0, err
		}
		encode(ev, all, &held)
		encode(tr, all, &train)
	} else {
		encode(tr, isHeld, &held)
		encode(tr, all, &train)
	}
	if len(train) == 0 {
		return nil, nil, truncated, fmt.Errorf("no training prompts in %s", trainData)
	}
	return train, held, truncated, nil
}

// loadPTX reads supervised data for PTX mixing: prompt (labels −100) + answer + EOS, cut to maxLen tokens.
func loadPTX(tok tokenizer.Tokenizer, spec string, maxLen int, seed uint64) (*ppo.PTXSet, error) {
	var ids, labels [][]int32
	for _, item := range strings.Split(spec, ",") {
		samples, _, err := datasets.Read(item, datasets.FormatAuto)
		if err != nil {
			return nil, err
		}
		for _, s := range samples {
			if len(s.Input) == 0 || s.Answer == "" {
				continue
			}
			p, err := datasets.FormatPrompt(s.Input, "")
			if err != nil {
				continue
			}
			pi := tok.Encode(p, true)
			full := append(tok.Encode(p+s.Answer, true), tok.EOS())
			if len(full) > maxLen {
				full = full[:maxLen] // the reference truncates on the right
			}
			if len(full) <= len(pi) {
				continue // no answer token left to learn
			}
			lab := make([]int32, len(full))
			for i := range lab {
				lab[i] = full[i]
				if i < len(pi) {
					lab[i] = datasets.IgnoreIndex
				}
			}
			ids, labels = append(ids, full), append(labels, lab)
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("--ptx-data %s: no usable supervised examples of at most %d tokens", spec, maxLen)
	}
	return ppo.NewPTXSet(ids, labels, tok.Pad(), seed)
}
