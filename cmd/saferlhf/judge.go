package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/eval"
)

func runJudge(args []string) error {
	var o eval.JudgeOptions
	var be, out string
	var force bool
	fs := newFlagSet("judge", "")
	fs.StringVar(&o.Judge, "cost-model", "", "the judge: a cost model directory (train-cm output) trained on data the training cost model never saw")
	fs.StringVar(&o.Tokenizer, "tokenizer", "", "the judge's tokenizer (default: the one saved with it); samples are re-tokenised through text")
	fs.StringVar(&o.Before, "before", "", "samples of the policy before RL (ppo-lag's samples_before.jsonl)")
	fs.StringVar(&o.After, "after", "", "samples of the policy after RL on the same prompts (samples_after.jsonl)")
	fs.IntVar(&o.MaxLength, "max-length", 256, "longest scored sequence in the judge's tokens (longer ones keep BOS and their tail)")
	fs.IntVar(&o.Batch, "batch-size", 32, "sequences per forward pass")
	fs.IntVar(&o.Bootstrap, "bootstrap", 2000, "paired bootstrap resamples of the prompts for the drop's 95% CI")
	fs.Uint64Var(&o.Seed, "seed", 1, "bootstrap seed")
	fs.StringVar(&out, "out", "", "write the JSON report here")
	fs.BoolVar(&force, "force", false, "overwrite an existing --out")
	fs.StringVar(&be, "backend", "", "GoMLX backend")
	if err := config.Parse(fs, args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usagef("unexpected arguments %q", fs.Args())
	case o.Judge == "" || o.Before == "" || o.After == "":
		return usagef("--cost-model, --before and --after are required")
	case o.MaxLength < 8 || o.Batch < 1 || o.Bootstrap < 1:
		return usagef("--max-length must be >= 8, --batch-size >= 1, --bootstrap >= 1")
	}
	if out != "" && !force {
		if _, err := os.Stat(out); err == nil {
			return fmt.Errorf("%s exists (use --force to overwrite)", out)
		}
	}
	b, err := backend.New(be)
	if err != nil {
		return err
	}
	r, err := eval.Judge(b, o)
	if err != nil {
		return err
	}
	if out != "" {
		js, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		if err := atomicfile.WriteBytes(out, append(js, '\n'), 0o644); err != nil {
			return err
		}
	}
	return r.Format(os.Stdout)
}
