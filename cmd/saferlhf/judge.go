package main

import (
	"os"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/eval"
)

// judgeEval is the command line of judge.
type judgeEval struct {
	eval.JudgeOptions
	Backend string `flag:"backend" help:"GoMLX backend (default $SAFERLHF_BACKEND or go)"`
}

func runJudge(args []string) (err error) {
	c := judgeEval{JudgeOptions: eval.DefaultJudgeOptions()}
	fs := newFlagSet("judge", "")
	config.Register(fs, &c)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := c.Validate(); err != nil {
		return usagef("%v", err)
	}
	undo, err := prepareReport(c.Out, "judge", c.Force)
	if err != nil {
		return err
	}
	defer undo(&err)
	if err := inputsExist("model", c.Judge); err != nil {
		return err
	}
	be, err := backend.New(c.Backend)
	if err != nil {
		return err
	}
	r, err := eval.Judge(be, c.JudgeOptions)
	if err != nil {
		return err
	}
	return r.Format(os.Stdout)
}
