package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/stages"
)

// runDPO parses the flags (and --config file) of dpo and runs it.
func runDPO(args []string) error {
	cfg := stages.DPODefaults()
	fs := newFlagSet("dpo", "")
	cfg.RegisterFlags(fs)
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	if err := cfg.Validate(); err != nil {
		return usagef("%v", err)
	}
	cfg.Progress = os.Stderr
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return err
	}
	// The effective settings, reusable as --config for a rerun.
	if err := config.WriteEffective(fs, filepath.Join(cfg.Out, "config.yaml")); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := stages.RunDPO(ctx, cfg)
	if res != nil {
		printStageResult(res)
	}
	return err
}
