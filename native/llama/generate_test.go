package llama

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
)

func loadStories(t testing.TB) (*model.Config, model.Weights) {
	cfg, w, err := model.LoadLlama2C(filepath.Join("..", "..", "assets", "data", "models", "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg, w
}

// TestGoldenGenerate: greedy generation with the KV cache, all golden prompts
// in one left-padded batch, equals llama2.c token for token.
func TestGoldenGenerate(t *testing.T) {
	skipNoEngine(t)
	data, err := os.ReadFile(filepath.Join("..", "..", "assets", "golden", "llama2c", "stories260k_greedy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Cases []struct {
			Name         string  `json:"name"`
			PromptIDs    []int32 `json:"prompt_ids"`
			GeneratedIDs []int32 `json:"generated_ids"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Cases) == 0 {
		t.Fatal("no golden cases")
	}
	cfg, w := loadStories(t)
	m, err := New(cfg, w, 1)
	if err != nil {
		t.Fatal(err)
	}
	var prompts [][]int32
	maxNew := 0
	for _, c := range g.Cases {
		prompts = append(prompts, c.PromptIDs)
		maxNew = max(maxNew, len(c.GeneratedIDs))
	}
	ro, err := m.Generate(prompts, model.GenerateOptions{MaxNewTokens: maxNew, EOS: -1, Pad: 0, Unk: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range g.Cases {
		got := ro.Seq[i][ro.PromptWidth : ro.PromptWidth+len(c.GeneratedIDs)]
		if !slices.Equal(got, c.GeneratedIDs) {
			t.Fatalf("%s: got %v, llama2.c %v", c.Name, got, c.GeneratedIDs)
		}
	}
}

// TestGenerateMatchesGraph: seeded sampling (temperature, top-p, repetition
// penalty, EOS, unk masking) gives the GoMLX generator's rollout.
func TestGenerateMatchesGraph(t *testing.T) {
	skipNoEngine(t)
	cfg, w := loadStories(t)
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	gen, err := model.NewGeneratorFromWeights(be, cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(cfg, w, 1)
	if err != nil {
		t.Fatal(err)
	}
	prompts := [][]int32{{1, 403, 407}, {1}, {1, 261, 378, 432, 383}}
	for _, opts := range []model.GenerateOptions{
		{MaxNewTokens: 40, Temperature: 1, TopP: 0.9, RepetitionPenalty: 1.2, Seed: 42, EOS: 2, Pad: 0, Unk: 0},
		{MaxNewTokens: 30, Temperature: 0.7, Seed: 7, EOS: 2, Pad: 0, Unk: -1},
	} {
		want, err := gen.Generate(prompts, opts)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.Generate(prompts, opts)
		if err != nil {
			t.Fatal(err)
		}
		if got.PromptWidth != want.PromptWidth || !slices.Equal(got.ResponseLen, want.ResponseLen) {
			t.Fatalf("rollout layout: prompt width %d, lengths %v; graph %d, %v", got.PromptWidth, got.ResponseLen, want.PromptWidth, want.ResponseLen)
		}
		for r := range prompts {
			if !slices.Equal(got.Seq[r], want.Seq[r]) || !slices.Equal(got.AttentionMask[r], want.AttentionMask[r]) {
				t.Fatalf("row %d: %v, graph %v", r, got.Seq[r], want.Seq[r])
			}
		}
	}
}
