package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/stages"
)

func runSFT(args []string) error { return runStage(stages.SFT, args) }

// runStage parses the flags (and --config file) of a training stage and runs it.
func runStage(stage stages.Stage, args []string) error {
	cfg := stages.Defaults(stage)
	fs := newFlagSet(string(stage), "")
	cfg.RegisterFlags(fs, stage)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := cfg.Validate(stage); err != nil {
		return usagef("%v", err)
	}
	// The output is checked now (never clobbered) and claimed by Prepare once the inputs
	// have loaded, so a run that fails on its inputs leaves nothing behind.
	if err := checkpoint.CheckOutput(cfg.Out, string(stage), cfg.Resume, cfg.Force); err != nil {
		return err
	}
	cfg.Progress = os.Stderr
	cfg.Prepare = func() error { // on rank 0 only in a data-parallel run
		if err := checkpoint.PrepareOutput(cfg.Out, string(stage), cfg.Resume, cfg.Force); err != nil {
			return err
		}
		// The effective settings, reusable as --config for a rerun.
		return config.WriteEffective(fs, filepath.Join(cfg.Out, "config.yaml"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := stages.Run(ctx, stage, cfg)
	// A run that failed has no summary to print (its Result counts no steps and holds no
	// held-out metrics: it printed "0 steps" and "after 0.0000"); one interrupted after a
	// checkpoint has.
	if res != nil && (err == nil || res.Steps > 0) {
		printStageResult(res)
	}
	return err
}

func printStageResult(r *stages.Result) {
	fmt.Printf("%s: %d steps, %d training examples, %d held-out (%d dropped), %.1f s, %.0f tokens/s\n",
		r.Stage, r.Steps, r.Train, r.HeldOut, r.Dropped, r.Seconds, r.TokPerSec)
	if r.World > 1 {
		fmt.Printf("  %d ranks: %.0f tokens/s per rank, %.1f s in gradient all-reduces on this rank\n", r.World, r.TokPerSec/float64(r.World), r.CommSecs)
	}
	keys := map[string]bool{}
	for k := range r.Initial {
		keys[k] = true
	}
	for k := range r.Final {
		keys[k] = true
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		if k != "score_sq" {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Printf("  held-out %-14s before %-10.4f after %.4f\n", k, r.Initial[k], r.Final[k])
	}
	if r.ModelDir != "" {
		fmt.Printf("  model: %s\n", r.ModelDir)
	}
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}
