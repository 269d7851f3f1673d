package shards

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// TestReadPrompts: the prompts of a raw file equal those of the same file packed into shards, id
// for id (multi-turn ones with the EOS after earlier assistant turns); repeated prompts, in raw
// files or shards, are read once; the limit holds; a shard directory packed with another tokenizer
// is refused.
func TestReadPrompts(t *testing.T) {
	tok := tokenizer.MustLoad(asset(t, "data/models/tok512.bin"))
	raw := "hh-rlhf-harmless:40/-1:" + asset(t, "data/hh-rlhf/harmless-base-test.jsonl.gz")
	dir := filepath.Join(t.TempDir(), "prompts")
	if _, err := Pack(context.Background(), PackOptions{Kind: datasets.KindPrompts, Inputs: []string{raw}, Tokenizer: tok, Out: dir}); err != nil {
		t.Fatal(err)
	}
	fromRaw, err := ReadPrompts([]string{raw}, tok, 42, 0)
	if err != nil {
		t.Fatal(err)
	}
	fromShards, err := ReadPrompts([]string{dir}, tok, 42, 0)
	if err != nil {
		t.Fatal(err)
	}
	multi := 0
	for i, p := range fromRaw {
		if i >= len(fromShards) || !slices.Equal(p.IDs, fromShards[i].IDs) {
			t.Fatalf("prompt %d: raw %v, shards %v", i, p.IDs, fromShards[min(i, len(fromShards)-1)].IDs)
		}
		if slices.Contains(p.IDs, tok.EOS()) {
			multi++
		}
	}
	if len(fromRaw) != len(fromShards) || len(fromRaw) < 30 || multi == 0 {
		t.Fatalf("%d raw prompts, %d from shards, %d multi-turn", len(fromRaw), len(fromShards), multi)
	}
	both, err := ReadPrompts([]string{raw, dir, dir}, tok, 42, 0)
	if err != nil || len(both) != len(fromRaw) {
		t.Fatalf("the same prompts three times: %d prompts, want %d (err %v)", len(both), len(fromRaw), err)
	}
	if some, err := ReadPrompts([]string{dir}, tok, 42, 5); err != nil || len(some) != 5 || some[4].Text == "" {
		t.Fatalf("limit 5: %d prompts, err %v", len(some), err)
	}
	other := tokenizer.MustLoad(asset(t, "data/models/tokenizer.model"))
	if _, err := ReadPrompts([]string{dir}, other, 42, 0); err == nil {
		t.Fatal("shards packed with another tokenizer were read")
	}
}
