package ppo

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/shards"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// ppo-lag/ppo read prompts from token-shard directories (any kind: their prompt part) as from raw
// files, and refuse a directory packed with another tokenizer; the data spec grammar is the
// stages' [format:[proportion:]]path.
func TestPromptsFromShards(t *testing.T) {
	assets := filepath.Join("..", "..", "assets", "data")
	tok, err := tokenizer.Load(filepath.Join(assets, "models", "tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(assets, "eval", "safe-rlhf-gpt4-problems.json")
	dir := filepath.Join(t.TempDir(), "prompts")
	if _, err := shards.Pack(context.Background(), shards.PackOptions{Kind: datasets.KindPrompts, Inputs: []string{"prompts:" + raw},
		Tokenizer: tok, Out: dir}); err != nil {
		t.Fatal(err)
	}
	want, _, _, err := loadPrompts(tok, []string{"prompts:1:" + raw}, nil, 0, 512)
	if err != nil {
		t.Fatal(err)
	}
	got, _, _, err := loadPrompts(tok, []string{dir}, nil, 0, 512)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || !slices.Equal(got[0], want[0]) {
		t.Errorf("shards: %d prompts, raw %d", len(got), len(want))
	}
	half, _, _, err := loadPrompts(tok, []string{"prompts:0.5:" + raw}, nil, 0, 512)
	if err != nil || len(half) != (len(want)+1)/2 && len(half) != len(want)/2 {
		t.Errorf("proportion 0.5: %d of %d prompts, %v", len(half), len(want), err)
	}
	other, err := tokenizer.Load(filepath.Join(assets, "models", "tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := loadPrompts(other, []string{dir}, nil, 0, 512); err == nil || !strings.Contains(err.Error(), "packed with tokenizer") {
		t.Errorf("other tokenizer: %v", err)
	}
}
