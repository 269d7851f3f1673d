package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/train/collectives"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/ppo"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// runIn runs the CLI in-process and returns the exit code and what it wrote to stderr.
func runIn(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var b strings.Builder
	code := run(args, &b)
	return code, b.String()
}

// trainEval lists every command that trains or evaluates.
var trainEval = []string{"sft", "train-rm", "train-cm", "dpo", "ppo-lag", "ppo", "compare", "eval-rm", "eval-cm", "eval-arena", "judge", "generate"}

// Every training and evaluation command takes --config; its keys are the flag names (old
// spellings too), and a bad file is a usage error.
func TestEveryCommandTakesConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("no-such-setting: 1\n"), 0o644)
	for _, cmd := range trainEval {
		code, errOut := runIn(t, cmd, "--config", bad)
		if code != 2 || !strings.Contains(errOut, "no-such-setting") {
			t.Errorf("%s --config bad.yaml: exit %d, stderr %q", cmd, code, errOut)
		}
		// A valid file reaches validation (a missing required flag: usage error naming it).
		good := filepath.Join(dir, cmd+".yaml")
		os.WriteFile(good, []byte("seed: 3\n"), 0o644)
		code, errOut = runIn(t, cmd, "--config", good)
		if code != 2 || !strings.Contains(errOut, "--model") && !strings.Contains(errOut, "--red") {
			t.Errorf("%s --config good.yaml: exit %d, stderr %q", cmd, code, errOut)
		}
	}
}

// Exit codes: 2 for a bad command line, 0 for -h, 1 for a failure, in every command.
func TestExitCodes(t *testing.T) {
	all := append([]string{"tokenize", "verify-reference", "bench"}, trainEval...)
	for _, cmd := range all {
		if code, errOut := runIn(t, cmd, "--no-such-flag"); code != 2 {
			t.Errorf("%s --no-such-flag: exit %d (%s)", cmd, code, errOut)
		}
		if code, errOut := runIn(t, cmd, "-h"); code != 0 {
			t.Errorf("%s -h: exit %d (%s)", cmd, code, errOut)
		}
	}
	for _, sub := range []string{"pack", "inspect", "verify", "demo"} {
		if code, errOut := runIn(t, "data", sub, "--no-such-flag"); code != 2 {
			t.Errorf("data %s --no-such-flag: exit %d (%s)", sub, code, errOut)
		}
	}
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"data", "-h"}, 0},
		{[]string{"data", "--help"}, 0},
		{[]string{"data"}, 2},
		{[]string{"data", "nope"}, 2},
		{[]string{"sft", "--lr", "1", "--lr", "2"}, 2},
		{[]string{"sft", "--lr", "nan"}, 2},
		{[]string{"sft", "stray-arg"}, 2},
		{[]string{"data", "pack", "--kind", "sft", "--kind", "prompts"}, 2},
		{[]string{"generate", "--seed", "1", "--seed", "2"}, 2},
		{[]string{"eval-rm", "--model", "/nonexistent", "--data", "x.json"}, 1},
		{[]string{"generate", "--model", "/nonexistent", "--tokenizer", "assets/data/models/tok512.bin"}, 1},
		{[]string{"generate", "--model", "/nonexistent"}, 1}, // no tokenizer given and none next to the model
	} {
		if code, errOut := runIn(t, tc.args...); code != tc.code {
			t.Errorf("%v: exit %d, want %d (%s)", tc.args, code, tc.code, errOut)
		}
	}
}

// One name per concept: the same flags in every command, the old spellings still accepted.
func TestOneNamePerConcept(t *testing.T) {
	cfg, _, err := parseRL("ppo-lag", "ppo-lag", []string{"--actor", "a", "--output", "o", "--train-data", "d",
		"--eval-split", "0.2", "--eval-size", "5", "--checkpoint-every", "3"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Model != "a" || cfg.Out != "o" || len(cfg.Data) != 1 || cfg.EvalRatio != 0.2 || cfg.EvalMax != 5 || cfg.SaveEvery != 3 {
		t.Errorf("old spellings: %+v", cfg)
	}
	for _, cmd := range []string{"sft", "train-rm", "ppo-lag", "ppo"} {
		for _, f := range []string{"model", "out", "data", "max-steps", "save-every", "eval-ratio", "eval-max", "seed", "backend", "resume"} {
			if code, errOut := runIn(t, cmd, "--"+f+"=1", "-h"); code == 2 && strings.Contains(errOut, "not defined") {
				t.Errorf("%s has no --%s", cmd, f)
			}
		}
	}
	for _, cmd := range []string{"eval-rm", "eval-cm"} {
		for _, f := range []string{"model", "out", "data", "eval-ratio", "eval-max", "seed", "backend"} {
			if code, errOut := runIn(t, cmd, "--"+f+"=1", "-h"); code == 2 && strings.Contains(errOut, "not defined") {
				t.Errorf("%s has no --%s", cmd, f)
			}
		}
	}
}

// Each algorithm's defaults come from its own DefaultConfig: the reward-shaping baseline's KL
// coefficient is the reference script's 0.02, not PPO-Lag's 0.01; an explicit value wins.
func TestRLDefaultsPerAlgorithm(t *testing.T) {
	for _, tc := range []struct {
		cmd  string
		args []string
		kl   float64
	}{
		{"ppo-lag", nil, 0.01},
		{"ppo-lag", []string{"--lambda", "pid"}, 0.01},
		{"ppo-lag", []string{"--lambda", "fixed"}, 0.02},
		{"ppo-lag", []string{"--lambda", "fixed", "--kl-coeff", "0.05"}, 0.05},
		{"ppo", nil, 0.02},
	} {
		alg := map[string]string{"ppo-lag": "ppo-lag", "ppo": "ppo"}[tc.cmd]
		c, _, err := parseRL(tc.cmd, ppo.Algorithm(alg), tc.args)
		if err != nil || c.KLCoeff != tc.kl {
			t.Errorf("%s %v: err %v, kl %v want %v", tc.cmd, tc.args, err, c.KLCoeff, tc.kl)
		}
	}
	// One default for the response length: the flag's default is the struct's.
	c, _, _ := parseRL("ppo-lag", "ppo-lag", nil)
	if c.MaxNewTokens+c.MaxPromptTokens != 512 {
		t.Errorf("max-prompt-tokens %d + max-new-tokens %d, want the reference's max_length 512", c.MaxPromptTokens, c.MaxNewTokens)
	}
}

// The data-parallel flags (--zero-stage, --collectives) are defined by the commands that run as
// ranks of a launcher and by no single-process command (compare reuses ppo-lag's settings),
// where they would do nothing: there they are unknown flags and unknown --config keys.
func TestDataParallelFlagsOnlyWhereRanksRun(t *testing.T) {
	dir := t.TempDir()
	for _, c := range commands {
		for flag, bad := range map[string]string{"zero-stage": "7", "collectives": "nope", "dist-timeout": "-3m"} { // refused where defined: no work starts
			args := []string{c.name, "--" + flag, bad}
			if c.name == "data" {
				args = []string{"data", "pack", "--" + flag, bad}
			}
			code, errOut := runIn(t, args...)
			undefined := strings.Contains(errOut, "not defined: -"+flag)
			if undefined == c.ranked || !c.ranked && code != 2 {
				t.Errorf("%v (ranked %v): exit %d, stderr %q", args, c.ranked, code, errOut)
			}
			if c.ranked || c.name == "data" || c.name == "verify-reference" { // these two take no --config
				continue
			}
			cfg := filepath.Join(dir, c.name+"-"+flag+".yaml")
			os.WriteFile(cfg, []byte(flag+": 1\n"), 0o644)
			if code, errOut := runIn(t, c.name, "--config", cfg); code != 2 || !strings.Contains(errOut, flag) {
				t.Errorf("%s --config {%s: 1}: exit %d, stderr %q", c.name, flag, code, errOut)
			}
		}
	}
}

// The data-parallel flags have one usage text, the same in every command that defines them
// (bench's --zero-stage and --dist-timeout said less than the others').
func TestDataParallelFlagsHelp(t *testing.T) {
	helps := map[string]string{trainer.ZeroStageFlag: trainer.ZeroStageHelp, collectives.Flag: collectives.Help, dist.TimeoutFlag: dist.TimeoutHelp}
	for _, c := range commands {
		if !c.ranked {
			continue
		}
		usage := helpText(t, c.name)
		for flag, help := range helps {
			_, after, ok := strings.Cut(usage, "\n  -"+flag+" ")
			_, line, _ := strings.Cut(after, "\n")
			if line, _, _ = strings.Cut(line, "\n"); !ok || !strings.HasPrefix(line, "    \t"+help) {
				t.Errorf("%s --%s: usage %q, want %q", c.name, flag, strings.TrimSpace(line), help)
			}
		}
	}
}

// helpText returns what `saferlhf cmd -h` prints (a flag set prints its usage to os.Stderr).
func helpText(t *testing.T, cmd string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "usage")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stderr := os.Stderr
	os.Stderr = f
	code, _ := runIn(t, cmd, "-h")
	os.Stderr = stderr
	b, err := os.ReadFile(f.Name())
	if err != nil || code != 0 {
		t.Fatalf("%s -h: exit %d, %v", cmd, code, err)
	}
	return string(b)
}

// TestErrorsNameTheCommandOnce: a trainer's error, which names its stage as a library's does, is
// printed after "saferlhf <command>: " without the stage a second time.
func TestErrorsNameTheCommandOnce(t *testing.T) {
	for _, cmd := range []string{"sft", "train-rm", "train-cm", "dpo"} {
		code, errOut := runIn(t, cmd, "--model", "m", "--data", "d", "--out", t.TempDir(), "--zero-stage", "7")
		if code != 2 || !strings.HasPrefix(errOut, "saferlhf "+cmd+": --zero-stage 7") || strings.Contains(errOut, cmd+": "+cmd+":") {
			t.Errorf("%s: exit %d, stderr %q", cmd, code, errOut)
		}
	}
}
