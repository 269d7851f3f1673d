package main

import (
	"errors"
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

func parseScoreEval(name string, args []string) (scoreEval, func(*error), error) {
	c := scoreEval{Options: eval.DefaultOptions()}
	fs := newFlagSet(name, "")
	config.Register(fs, &c)
	if err := parseFlags(fs, args, false); err != nil {
		return c, nil, err
	}
	if err := c.Validate(); err != nil {
		return c, nil, usagef("%v", err)
	}
	undo, err := prepareReport(c.Out, name, c.Force)
	return c, undo, err
}

// prepareReport readies an evaluation's --out directory: like a training run's, an
// existing report is never overwritten without --force (nothing is lost). The command defers
// the returned function with its error: a failed run removes the directory it created, so it
// leaves nothing behind that would make the next run need --force.
func prepareReport(dir, command string, force bool) (undo func(*error), err error) {
	undo = func(*error) {}
	if dir == "" {
		return undo, nil
	}
	_, statErr := os.Stat(dir)
	if err := checkpoint.PrepareOutput(dir, command, false, force); err != nil {
		return undo, err
	}
	if errors.Is(statErr, os.ErrNotExist) {
		undo = func(err *error) {
			if *err != nil {
				os.RemoveAll(dir)
			}
		}
	}
	return undo, nil
}

func runEvalRM(args []string) (err error) {
	c, undo, err := parseScoreEval("eval-rm", args)
	if err != nil {
		return err
	}
	defer undo(&err)
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

func runEvalCM(args []string) (err error) {
	c, undo, err := parseScoreEval("eval-cm", args)
	if err != nil {
		return err
	}
	defer undo(&err)
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

func runEvalArena(args []string) (err error) {
	c := arenaEval{ArenaOptions: eval.DefaultArenaOptions()}
	fs := newFlagSet("eval-arena", "")
	config.Register(fs, &c)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := c.Validate(); err != nil {
		return usagef("%v", err)
	}
	undo, err := prepareReport(c.Out, "eval-arena", c.Force)
	if err != nil {
		return err
	}
	defer undo(&err)
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
