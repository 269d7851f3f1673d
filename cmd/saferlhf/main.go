// Command saferlhf runs the Safe RLHF pipeline: SFT, reward and cost models,
// PPO-Lagrangian, evaluation, and the tools around them (data packing,
// tokenization, generation, reference verification, benchmarks).
//
// Usage:
//
//	saferlhf <command> [flags] [args]
//
// Run "saferlhf help" for the list of commands and "saferlhf <command> -h" for a command's flags.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/dist"
)

// command is one subcommand: its name, a one-line summary and its entry point. Commands not
// marked ranked refuse to start as one of several ranks (dist.RequireSingle), so that copies
// started by a launcher never race on one output.
type command struct {
	name    string
	summary string
	run     func(args []string) error
	ranked  bool // runs data-parallel under a launcher
}

// commands lists every subcommand, in pipeline order. Each lives in its own file.
var commands = []command{
	{"verify-reference", "check every kernel against the reference implementation's test vectors", runVerifyReference, false},
	{"tokenize", "print the token ids of a text (or decode ids with --decode)", runTokenize, false},
	{"data", "pack, inspect and verify zstd token shards (data pack|inspect|verify)", runData, false},
	{"generate", "sample a completion from a model", runGenerate, false},
	{"sft", "supervised fine-tuning of the base model", runSFT, true},
	{"train-rm", "train the reward model (helpfulness)", runTrainRM, true},
	{"train-cm", "train the cost model (harmlessness)", runTrainCM, true},
	{"dpo", "direct preference optimisation of the SFT policy on better or safer pairs (baseline)", runDPO, true},
	{"ppo-lag", "PPO-Lagrangian: maximise reward subject to expected cost <= d", runPPOLag, true},
	{"ppo", "plain PPO on the reward model (baseline)", runPPO, true},
	{"compare", "the paper's comparison: PPO, reward shaping (fixed λ), PPO-Lag (SGD and PID λ) from one SFT/RM/CM, judged on held-out prompts", runCompare, false},
	{"eval-rm", "reward-model accuracy and score statistics on preference data", runEvalRM, false},
	{"eval-cm", "cost-model accuracy, sign accuracy and cost distributions", runEvalCM, false},
	{"eval-arena", "two policies answer prompts; reward, cost, win rates, harmful rate, Elo", runEvalArena, false},
	{"judge", "harmful rate before/after RL under an independent cost model, with bootstrap CIs of the drop", runJudge, false},
	{"bench", "run the standard benchmark suite", runBench, true},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			var err error
			if !c.ranked {
				err = dist.RequireSingle(c.name)
			}
			if err == nil {
				err = c.run(args[1:])
			}
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			if err == nil {
				return 0
			}
			// The trainers name their stage as libraries do ("train-rm: ..."); said once.
			fmt.Fprintf(stderr, "saferlhf %s: %s\n", c.name, strings.TrimPrefix(err.Error(), c.name+": "))
			var ue usageError
			if errors.As(err, &ue) {
				return 2
			}
			return 1
		}
	}
	fmt.Fprintf(stderr, "saferlhf: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: saferlhf <command> [flags] [args]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-17s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'saferlhf <command> -h' for a command's flags.")
}

// usageError marks a bad command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// usagef reports a bad command line.
func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// newFlagSet returns a flag set for a subcommand that reports errors instead of exiting.
func newFlagSet(name, argsUsage string) *flag.FlagSet {
	fs := flag.NewFlagSet("saferlhf "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: saferlhf %s [flags] %s\n\nflags:\n", name, argsUsage)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and the --config file into fs (every command takes
// --config); a bad command line is a usage error. With args false, positional
// arguments are an error.
func parseFlags(fs *flag.FlagSet, args []string, positional bool) error {
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if !positional && fs.NArg() > 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	return nil
}
