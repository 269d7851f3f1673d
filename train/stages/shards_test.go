package stages

import (
	stdctx "context"
	"github.com/saferlhf/saferlhf/data/prefs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/shards"
)

func TestShardDirectoriesAsData(t *testing.T) {
	tok := tok512(t)
	dir := t.TempDir()
	if _, err := shards.PackDemo(stdctx.Background(), assets, dir, tok, 48, false, nil); err != nil {
		t.Fatal(err)
	}
	c := tinyConfig(t, CM)
	c.Data = []string{filepath.Join(dir, "safety-preference")}
	c.EvalData = []string{filepath.Join(dir, "safety-preference-eval")}
	c.MaxLength, c.BatchSize, c.Steps, c.EvalMax, c.LossType = 48, 8, 2, 16, "token-wise"
	r, err := Run(stdctx.Background(), CM, c)
	if err != nil {
		t.Fatal(err)
	}
	if r.Train < 2000 || r.HeldOut != 16 || r.Steps != 2 {
		t.Fatalf("result %+v", r)
	}
	pairs, _, ok, err := prefs.FromShards(c.EvalData, tok.Info(), 48, true)
	if err != nil || !ok || len(pairs) < 200 {
		t.Fatalf("ShardPairs: %d pairs, ok %v, err %v", len(pairs), ok, err)
	}
	// A reward model cannot train on SFT shards, and shards and raw files do not mix.
	c.Data, c.EvalData = []string{filepath.Join(dir, "sft")}, nil
	if _, err := Run(stdctx.Background(), RM, c); err == nil || !strings.Contains(err.Error(), "needs preference examples") {
		t.Fatalf("want a kind error, got %v", err)
	}
	c.Data = []string{filepath.Join(dir, "preference"), filepath.Join(assets, "hh-rlhf/harmless-base-test.jsonl.gz")}
	if _, err := Run(stdctx.Background(), RM, c); err == nil || !strings.Contains(err.Error(), "mix") {
		t.Fatalf("want a mix error, got %v", err)
	}
}

// A shard directory packed with another tokenizer is refused before training or
// evaluation, naming the directory and both tokenizers.
func TestShardTokenizerMismatch(t *testing.T) {
	tok := tok512(t)
	dir := t.TempDir()
	if _, err := shards.Pack(stdctx.Background(), shards.PackOptions{Kind: datasets.KindSafetyPreference, Tokenizer: tok,
		Inputs: []string{"pku-saferlhf:" + filepath.Join(assets, "pku-saferlhf/align-anything-preference-sample.json")},
		Out:    filepath.Join(dir, "cm"), Build: datasets.BuildOptions{MaxLength: 64}}); err != nil {
		t.Fatal(err)
	}
	other := tok.Info()
	other.SHA256, other.Path = strings.Repeat("0", 64), "other.model"
	_, _, _, err := prefs.FromShards([]string{filepath.Join(dir, "cm")}, other, 64, true)
	if err == nil || !strings.Contains(err.Error(), "packed with tokenizer") || !strings.Contains(err.Error(), "other.model") {
		t.Fatalf("err = %v", err)
	}
	if _, _, _, err := prefs.FromShards([]string{filepath.Join(dir, "cm")}, tok.Info(), 64, true); err != nil {
		t.Fatal(err)
	}
}
