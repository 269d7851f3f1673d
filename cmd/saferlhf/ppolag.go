package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/ppo"
)

func runPPOLag(args []string) error { return runRL("ppo-lag", ppo.PPOLag, args) }

func runPPO(args []string) error { return runRL("ppo", ppo.PPO, args) }

// parseRL parses the command line of ppo-lag (alg PPOLag: --lambda picks the variant) or ppo.
// Defaults are the chosen algorithm's own (ppo.DefaultConfig), so the flags are parsed once
// to learn --lambda and again over that algorithm's defaults.
func parseRL(name string, alg ppo.Algorithm, args []string) (ppo.RunConfig, *flag.FlagSet, error) {
	parse := func(alg ppo.Algorithm) (ppo.RunConfig, *flag.FlagSet, error) {
		c := ppo.DefaultRunConfig(alg)
		fs := newFlagSet(name, "")
		if alg == ppo.PPO {
			config.Register(fs, &c, "dist")
		} else {
			config.Register(fs, &c, "cost", "dist")
		}
		return c, fs, parseFlags(fs, args, false)
	}
	c, fs, err := parse(alg)
	if err != nil || alg == ppo.PPO {
		return c, fs, err
	}
	a, err := ppo.AlgorithmOf(c.Lambda)
	if err != nil {
		return c, fs, usagef("%v", err)
	}
	if a != alg {
		if c, fs, err = parse(a); err != nil {
			return c, fs, err
		}
	}
	c.Algorithm = a
	return c, fs, nil
}

func runRL(name string, alg ppo.Algorithm, args []string) error {
	c, fs, err := parseRL(name, alg, args)
	if err != nil {
		return err
	}
	if err := c.Validate(); err != nil {
		return usagef("%v", err)
	}
	// The output directory is checked now (never clobbered) and prepared, with the effective
	// settings (reusable as --config for a rerun), once the inputs are loaded and checked (by rank 0
	// of a data-parallel run, after every rank has checked it and joined).
	if err := checkpoint.CheckOutput(c.Out, name, c.Resume, c.Force); err != nil {
		return err
	}
	ready := func() error {
		if err := checkpoint.PrepareOutput(c.Out, name, c.Resume, c.Force); err != nil {
			return err
		}
		return config.WriteEffective(fs, filepath.Join(c.Out, "config.yaml"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := ppo.Run(ctx, c, os.Stderr, ready)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%s: %d rollout batches in %.0fs\n", name, res.Steps, res.Seconds)
	res.Format(os.Stdout)
	fmt.Printf("policy: %s\nmetrics: %s\nsummary: %s\nplots: %s\n", res.PolicyDir, filepath.Join(c.Out, "metrics.jsonl"),
		filepath.Join(c.Out, "summary.json"), strings.Join(res.Plots, " "))
	return nil
}
