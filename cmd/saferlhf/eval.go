package main

import (
	"fmt"
	"os"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/eval"
)

// scoreEval is the command line of eval-rm and eval-cm.
type scoreEval struct {
	eval.Options
	Backend string `flag:"backend" help:"GoMLX backend (default $SAFERLHF_BACKEND or go)"`
}

// arenaEval is the command line of eval-arena.
type arenaEval struct {
	eval.ArenaOptions
	Backend string `flag:"backend" help:"GoMLX backend (default $SAFERLHF_BACKEND or go)"`
}

func parseScoreEval(name string, args []string) (scoreEval, error) {
	c := scoreEval{Options: eval.DefaultOptions()}
	fs := newFlagSet(name, "")
	config.Register(fs, &c)
	if err := parseFlags(fs, args, false); err != nil {
		return c, err
	}
	if err := c.Validate(); err != nil {
		return c, usagef("%v", err)
	}
	return c, prepareReport(c.Out, name, c.Force)
}

// prepareReport readies an evaluation's --out directory: like a training run's, an
// existing report is never overwritten without --force (nothing is lost).
func prepareReport(dir, command string, force bool) error {
	if dir == "" {
		return nil
	}
	return checkpoint.PrepareOutput(dir, command, false, force)
}

func runEvalRM(args []string) error {
	c, err := parseScoreEval("eval-rm", args)
	if err != nil {
		return err
	}
	be, err := backend.New(c.Backend)
	if err != nil {
		return err
	}
	r, err := eval.EvalRM(be, c.Options)
	if err != nil {
		return err
	}
	return r.Format(os.Stdout)
}

func runEvalCM(args []string) error {
	c, err := parseScoreEval("eval-cm", args)
	if err != nil {
		return err
	}
	be, err := backend.New(c.Backend)
	if err != nil {
		return err
	}
	r, err := eval.EvalCM(be, c.Options)
	if err != nil {
		return err
	}
	return r.Format(os.Stdout)
}

func runEvalArena(args []string) error {
	c := arenaEval{ArenaOptions: eval.DefaultArenaOptions()}
	fs := newFlagSet("eval-arena", "")
	config.Register(fs, &c)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := c.Validate(); err != nil {
		return usagef("%v", err)
	}
	if err := prepareReport(c.Out, "eval-arena", c.Force); err != nil {
		return err
	}
	be, err := backend.New(c.Backend)
	if err != nil {
		return err
	}
	r, err := eval.RunArena(be, c.ArenaOptions)
	if err != nil {
		return err
	}
	if err := r.Format(os.Stdout); err != nil {
		return err
	}
	if c.Out != "" {
		fmt.Printf("\nJSON: %s/arena.json\n", c.Out)
	}
	return nil
}
