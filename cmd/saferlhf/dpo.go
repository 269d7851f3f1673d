package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/stages"
)

// runDPO parses the flags (and --config file) of dpo and runs it.
func runDPO(args []string) error {
	cfg := stages.DPODefaults()
	fs := newFlagSet("dpo", "")
	cfg.RegisterFlags(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return usagef("%v", err)
	}
	// The output is checked now (never clobbered) and claimed by Prepare once the inputs
	// have loaded, so a run that fails on its inputs leaves nothing behind.
	if err := checkpoint.CheckOutput(cfg.Out, string(stages.DPO), cfg.Resume, cfg.Force); err != nil {
		return err
	}
	cfg.Progress = os.Stderr
	cfg.Prepare = func() error { // on rank 0 only in a data-parallel run
		if err := checkpoint.PrepareOutput(cfg.Out, string(stages.DPO), cfg.Resume, cfg.Force); err != nil {
			return err
		}
		// The effective settings, reusable as --config for a rerun.
		return config.WriteEffective(fs, filepath.Join(cfg.Out, "config.yaml"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := stages.RunDPO(ctx, cfg)
	if res != nil {
		printStageResult(res)
	}
	return err
}
