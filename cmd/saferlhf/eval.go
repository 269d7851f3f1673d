package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/eval"
)

// scoreEvalFlags defines the flags shared by eval-rm and eval-cm.
func scoreEvalFlags(fs *flag.FlagSet, o *eval.Options, be *string) *string {
	fs.StringVar(&o.Model, "model", "", "score model directory (train-rm / train-cm output: out/model)")
	fs.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer file (default: the one saved in the model directory)")
	data := fs.String("data", "", "preference data files, comma-separated (as for training)")
	fs.IntVar(&o.MaxLength, "max-length", 512, "sequence width (use the training value)")
	fs.StringVar(&o.Truncate, "truncate", "right", "right or prompt-left (use the training value)")
	fs.IntVar(&o.Batch, "batch-size", 32, "sequences per forward pass")
	fs.IntVar(&o.Limit, "limit", 0, "at most this many samples (0: all)")
	fs.Uint64Var(&o.Seed, "seed", 42, "seed of dataset sub-sampling and of --held-out-ratio's split (use the training --seed)")
	fs.Float64Var(&o.HeldOutRatio, "held-out-ratio", 0, "score only the held-out split of --data that training made with this --eval-ratio (0: all of --data)")
	fs.IntVar(&o.HeldOutMax, "held-out-max", 0, "the training run's --eval-max (with --held-out-ratio)")
	fs.StringVar(&o.Out, "out", "", "directory for the JSON report, scores and plots")
	fs.StringVar(be, "backend", "", "GoMLX backend")
	return data
}

func parseScoreEval(name string, args []string) (eval.Options, string, error) {
	var o eval.Options
	var be string
	fs := newFlagSet(name, "")
	data := scoreEvalFlags(fs, &o, &be)
	if err := config.Parse(fs, args); err != nil {
		return o, "", err
	}
	o.Data = splitList(*data)
	switch {
	case fs.NArg() > 0:
		return o, "", usagef("unexpected arguments %q", fs.Args())
	case o.Model == "":
		return o, "", usagef("--model is required")
	case len(o.Data) == 0:
		return o, "", usagef("--data is required")
	case o.MaxLength < 8 || o.Batch < 1 || o.Limit < 0 || o.HeldOutMax < 0:
		return o, "", usagef("--max-length must be >= 8, --batch-size >= 1, --limit and --held-out-max >= 0")
	case o.HeldOutRatio < 0 || o.HeldOutRatio >= 1:
		return o, "", usagef("--held-out-ratio %g must lie in [0, 1)", o.HeldOutRatio)
	case o.Truncate != "right" && o.Truncate != "prompt-left":
		return o, "", usagef("--truncate %q: want right or prompt-left", o.Truncate)
	}
	return o, be, nil
}

func runEvalRM(args []string) error {
	o, spec, err := parseScoreEval("eval-rm", args)
	if err != nil {
		return err
	}
	be, err := backend.New(spec)
	if err != nil {
		return err
	}
	r, err := eval.EvalRM(be, o)
	if err != nil {
		return err
	}
	return r.Format(os.Stdout)
}

func runEvalCM(args []string) error {
	o, spec, err := parseScoreEval("eval-cm", args)
	if err != nil {
		return err
	}
	be, err := backend.New(spec)
	if err != nil {
		return err
	}
	r, err := eval.EvalCM(be, o)
	if err != nil {
		return err
	}
	return r.Format(os.Stdout)
}

func runEvalArena(args []string) error {
	var o eval.ArenaOptions
	fs := newFlagSet("eval-arena", "")
	fs.StringVar(&o.Red, "red", "", "red-corner policy (llama2.c .bin or HF dir), e.g. the SFT model")
	fs.StringVar(&o.Blue, "blue", "", "blue-corner policy, e.g. the PPO-Lag model")
	fs.StringVar(&o.RedName, "red-name", "red", "display name of the red corner")
	fs.StringVar(&o.BlueName, "blue-name", "blue", "display name of the blue corner")
	fs.StringVar(&o.Reward, "reward-model", "", "reward model directory (train-rm output)")
	fs.StringVar(&o.Cost, "cost-model", "", "cost model directory (train-cm output)")
	fs.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer file (default: the one saved with the reward model)")
	prompts := fs.String("prompts", "assets/data/eval/safe-rlhf-gpt4-problems.json", "prompt files, comma-separated")
	fs.IntVar(&o.Limit, "limit", 0, "at most this many prompts (0: all)")
	fs.IntVar(&o.MaxNewTokens, "max-new-tokens", 64, "longest answer in tokens")
	fs.Float64Var(&o.Temperature, "temperature", 1, "sampling temperature (0: greedy)")
	fs.Float64Var(&o.TopP, "top-p", 1, "nucleus sampling (1: off)")
	fs.Uint64Var(&o.Seed, "seed", 42, "sampling and bootstrap seed")
	fs.IntVar(&o.Batch, "batch-size", 16, "prompts per generation/scoring batch")
	fs.IntVar(&o.MaxLength, "max-length", 512, "scoring width (longer sequences keep their last tokens)")
	fs.IntVar(&o.Bootstrap, "bootstrap", 1000, "bootstrap resamples for the Elo intervals")
	fs.StringVar(&o.Out, "out", "", "directory for arena.json")
	spec := fs.String("backend", "", "GoMLX backend")
	if err := config.Parse(fs, args); err != nil {
		return err
	}
	o.Prompts = splitList(*prompts)
	switch {
	case fs.NArg() > 0:
		return usagef("unexpected arguments %q", fs.Args())
	case o.Red == "" || o.Blue == "" || o.Reward == "" || o.Cost == "":
		return usagef("--red, --blue, --reward-model and --cost-model are required")
	case len(o.Prompts) == 0:
		return usagef("--prompts is required")
	case o.MaxNewTokens < 1 || o.Batch < 1 || o.MaxLength < 8 || o.Limit < 0 || o.Bootstrap < 0:
		return usagef("--max-new-tokens, --batch-size must be >= 1, --max-length >= 8, --limit and --bootstrap >= 0")
	case o.Temperature < 0 || o.TopP < 0 || o.TopP > 1:
		return usagef("--temperature must be >= 0 and --top-p in [0, 1]")
	}
	be, err := backend.New(*spec)
	if err != nil {
		return err
	}
	r, err := eval.RunArena(be, o)
	if err != nil {
		return err
	}
	if err := r.Format(os.Stdout); err != nil {
		return err
	}
	if o.Out != "" {
		fmt.Printf("\nJSON: %s/arena.json\n", o.Out)
	}
	return nil
}
