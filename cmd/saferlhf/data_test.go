package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTokenizeAndDataCLI(t *testing.T) {
	bin := buildCLIBinary(t)
	// Golden: stories260k_greedy.json prompt_ids of "Once upon a time" (tok512).
	if out, errOut, code := runCLI(t, bin, "tokenize", "--tokenizer", "assets/data/models/tok512.bin", "Once upon a time"); code != 0 || out != "1 403 407 261 378\n" {
		t.Fatalf("tokenize: %q %q %d", out, errOut, code)
	}
	if out, _, code := runCLI(t, bin, "tokenize", "--decode", "1", "403", "407", "261", "378"); code != 0 || out != "Once upon a time\n" {
		t.Fatalf("decode: %q %d", out, code)
	}
	dir := filepath.Join(t.TempDir(), "prompts")
	pack := []string{"data", "pack", "--quiet", "--kind", "prompts", "--tokenizer", "assets/data/models/tokenizer.model", "--out", dir,
		"prompts:assets/data/eval/safe-rlhf-gpt4-problems.json", "assets/data/eval/advbench-harmful_behaviors.csv"}
	if out, errOut, code := runCLI(t, bin, pack...); code != 0 || !strings.Contains(out, "603 prompts examples") {
		t.Fatalf("pack: %q %q %d", out, errOut, code)
	}
	if _, errOut, code := runCLI(t, bin, pack...); code != 1 || !strings.Contains(errOut, "--force") {
		t.Fatalf("pack over an existing dir: %q %d", errOut, code)
	}
	if out, _, code := runCLI(t, bin, "data", "verify", dir); code != 0 || !strings.HasPrefix(out, "ok:") {
		t.Fatalf("verify: %q %d", out, code)
	}
	if out, _, code := runCLI(t, bin, "data", "inspect", "--n", "1", dir); code != 0 || !strings.Contains(out, "BEGINNING OF CONVERSATION: USER: ") {
		t.Fatalf("inspect: %q %d", out, code)
	}
	shard := filepath.Join(dir, "shard-00000.bin")
	b, _ := os.ReadFile(shard)
	b[len(b)-3] ^= 0xff
	os.WriteFile(shard, b, 0o644)
	if _, errOut, code := runCLI(t, bin, "data", "verify", dir); code != 1 || !strings.Contains(errOut, "shard-00000.bin: offset ") {
		t.Fatalf("verify damaged: %q %d", errOut, code)
	}
	if _, _, code := runCLI(t, bin, "data", "pack", "--kind", "nope"); code != 2 {
		t.Fatalf("bad kind: exit %d, want 2", code)
	}
}

// TestDataPackFlagErrors: negative or empty sizes are refused before anything is read (a negative
// --max-length packed without a cap, a negative --eval-fraction held nothing out).
func TestDataPackFlagErrors(t *testing.T) {
	base := []string{"--kind", "sft", "--out", filepath.Join(t.TempDir(), "o"), "--quiet"}
	for _, tc := range []struct {
		flag, value, want string
	}{
		{"--max-length", "-1", "--max-length must be >= 0, got -1"},
		{"--workers", "-2", "--workers must be >= 0, got -2"},
		{"--block-kib", "0", "--block-kib must be > 0, got 0"},
		{"--shard-mib", "-64", "--shard-mib must be > 0, got -64"},
		{"--eval-fraction", "-0.1", "--eval-fraction must be in [0, 1), got -0.1"},
		{"--eval-fraction", "1", "--eval-fraction must be in [0, 1), got 1"},
	} {
		err := runDataPack(append(append([]string(nil), base...), tc.flag, tc.value, "missing.json"))
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: err = %v, want a usage error %q", tc.flag, tc.value, err, tc.want)
		}
	}
}
