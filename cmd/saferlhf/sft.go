package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/saferlhf/saferlhf/train/stages"
)

func runSFT(args []string) error { return runStage(stages.SFT, args) }

// runStage parses the flags (and --config file) of a training stage and runs it.
func runStage(stage stages.Stage, args []string) error {
	cfg := stages.Defaults(stage)
	fs := newFlagSet(string(stage), "")
	configPath := fs.String("config", "", "JSON config file whose keys are these flag names (flags given on the command line win)")
	cfg.RegisterFlags(fs, stage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	if *configPath != "" {
		if err := applyConfigFile(fs, *configPath); err != nil {
			return usagef("%v", err)
		}
	}
	if err := cfg.Validate(stage); err != nil {
		return usagef("%v", err)
	}
	cfg.Progress = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := stages.Run(ctx, stage, cfg)
	if res != nil {
		printStageResult(res)
	}
	return err
}

// applyConfigFile sets, from a JSON object whose keys are flag names, every flag not
// given on the command line.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "config" || fs.Lookup(k) == nil {
			return fmt.Errorf("config %s: unknown key %q (keys are the flag names)", path, k)
		}
		if given[k] {
			continue
		}
		var s string
		switch v := m[k].(type) {
		case string:
			s = v
		case bool:
			s = strconv.FormatBool(v)
		case float64:
			s = strconv.FormatFloat(v, 'g', -1, 64)
		case []any:
			parts := make([]string, len(v))
			for i, x := range v {
				parts[i] = fmt.Sprint(x)
			}
			s = strings.Join(parts, ",")
		default:
			return fmt.Errorf("config %s: key %q: unsupported value %v", path, k, v)
		}
		if err := fs.Set(k, s); err != nil {
			return fmt.Errorf("config %s: key %q: %w", path, k, err)
		}
	}
	return nil
}

func printStageResult(r *stages.Result) {
	fmt.Printf("%s: %d steps, %d training examples, %d held-out (%d dropped), %.1f s, %.0f tokens/s\n",
		r.Stage, r.Steps, r.Train, r.HeldOut, r.Dropped, r.Seconds, r.TokPerSec)
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
