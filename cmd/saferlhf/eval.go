package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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

// prepareReport readies an evaluation's --out directory: like a training run's, an existing
// report is never overwritten without --force (nothing is lost). The command defers the returned
// function with its error. A failed run leaves --out as it found it: a directory it created is
// removed and one that was empty is emptied again (either would make the corrected rerun need
// --force), and a previous report that --force replaces is kept aside (as --out.replaced-PID)
// until the run succeeds and put back if it fails (a mistyped --model must not cost the old report).
func prepareReport(dir, command string, force bool) (finish func(*error), err error) {
	finish = func(*error) {}
	if dir == "" {
		return finish, nil
	}
	if err := checkpoint.CheckOutput(dir, command, false, force); err != nil {
		return finish, err
	}
	entries, readErr := os.ReadDir(dir)
	existed := readErr == nil
	kept := ""
	if st, e := os.Lstat(dir); e == nil && st.IsDir() && len(entries) > 0 { // --force over a previous report
		kept = fmt.Sprintf("%s.replaced-%d", filepath.Clean(dir), os.Getpid())
		if err := os.Rename(dir, kept); err != nil {
			kept = "" // a mount point, say: --force removes it as a training run's does
		}
	}
	if err := checkpoint.PrepareOutput(dir, command, false, force); err != nil {
		if kept != "" {
			err = errors.Join(err, os.Rename(kept, dir))
		}
		return finish, err
	}
	return func(err *error) {
		if *err == nil {
			if kept != "" {
				os.RemoveAll(kept)
			}
			return
		}
		if !existed || kept != "" {
			os.RemoveAll(dir)
		} else if made, e := os.ReadDir(dir); e == nil { // it was empty (or --force emptied it): all is this run's
			for _, m := range made {
				os.RemoveAll(filepath.Join(dir, m.Name()))
			}
		}
		if kept != "" {
			if e := os.Rename(kept, dir); e != nil {
				*err = fmt.Errorf("%w (the previous report is kept as %s: %v)", *err, kept, e)
			}
		}
	}, nil
}

// inputsExist checks the model paths of a command, given as flag name, path pairs, so that a
// missing one is reported naming its flag rather than as a bare stat error from loading.
func inputsExist(flagPaths ...string) error {
	var ck config.Checker
	for i := 0; i+1 < len(flagPaths); i += 2 {
		ck.Exists(flagPaths[i], flagPaths[i+1])
	}
	return ck.Err()
}

func runEvalRM(args []string) (err error) {
	c, undo, err := parseScoreEval("eval-rm", args)
	if err != nil {
		return err
	}
	defer undo(&err)
	if err := inputsExist("model", c.Model); err != nil {
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

func runEvalCM(args []string) (err error) {
	c, undo, err := parseScoreEval("eval-cm", args)
	if err != nil {
		return err
	}
	defer undo(&err)
	if err := inputsExist("model", c.Model); err != nil {
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
	if err := inputsExist("red", c.Red, "blue", c.Blue, "reward-model", c.Reward, "cost-model", c.Cost); err != nil {
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
