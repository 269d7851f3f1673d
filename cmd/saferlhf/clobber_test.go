package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/train/checkpoint"
)

// TestOutputNeverClobbered: every training and evaluation command refuses a non-empty output
// directory without --resume, --force replaces only a previous run of the same command, and
// --resume (training commands only) refuses another command's output, all before any model is loaded.
func TestOutputNeverClobbered(t *testing.T) {
	cmds := []struct {
		name, kind, outFlag string
		run                 func([]string) error
		args                []string
	}{
		{"train-rm", "train-rm", "--out", runTrainRM, []string{"--model", "missing.bin", "--data", "d.json"}},
		{"sft", "sft", "--out", runSFT, []string{"--model", "missing.bin", "--data", "d.json"}},
		{"ppo-lag", "ppo-lag", "--output", runPPOLag, []string{"--actor", "missing.bin", "--reward-model", "r", "--cost-model", "c", "--train-data", "d.json"}},
		{"ppo", "ppo", "--output", runPPO, []string{"--actor", "missing.bin", "--reward-model", "r", "--train-data", "d.json"}},
		{"eval-rm", "eval-rm", "--out", runEvalRM, []string{"--model", "missing.bin", "--data", "d.json"}},
		{"eval-cm", "eval-cm", "--out", runEvalCM, []string{"--model", "missing.bin", "--data", "d.json"}},
		{"judge", "judge", "--out", runJudge, []string{"--model", "missing.bin", "--before", "missing-before.jsonl", "--after", "missing-after.jsonl"}},
	}
	for _, c := range cmds {
		for _, tc := range []struct {
			name  string
			setup func(dir string)
			flags []string
			err   string
		}{
			{"unrelated files", func(dir string) { os.WriteFile(filepath.Join(dir, "thesis.tex"), []byte("x"), 0o644) }, nil, "not empty"},
			{"unrelated files, --force", func(dir string) { os.WriteFile(filepath.Join(dir, "thesis.tex"), []byte("x"), 0o644) }, []string{"--force"}, "replaces only a previous " + c.kind + " run"},
			{"previous run", func(dir string) { checkpoint.PrepareOutput(dir, c.kind, false, false) }, nil, "not empty"},
			{"another command's run, --resume", func(dir string) { checkpoint.PrepareOutput(dir, "train-cm", false, false) }, []string{"--resume"}, "not a " + c.kind + " run"},
			{"previous run, --force", func(dir string) { checkpoint.PrepareOutput(dir, c.kind, false, false) }, []string{"--force"}, "missing"},
		} {
			if strings.HasSuffix(tc.name, "--resume") && (c.name == "judge" || strings.HasPrefix(c.name, "eval-")) {
				continue // evaluations have no --resume
			}
			t.Run(c.name+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				tc.setup(dir)
				err := c.run(append(append(append([]string{}, c.args...), c.outFlag, dir), tc.flags...))
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				if strings.Contains(tc.name, "unrelated") {
					if _, err := os.Stat(filepath.Join(dir, "thesis.tex")); err != nil {
						t.Fatalf("an unrelated file was removed: %v", err)
					}
				}
			})
		}
	}
}
