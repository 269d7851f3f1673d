package model

import (
	"slices"
	"testing"
)

// TestGoldenGenerate runs every golden case through the KV-cache generator
// in one left-padded batch: greedy ids must match llama2.c token for token.
func TestGoldenGenerate(t *testing.T) {
	cfg, w := loadStories(t)
	gen, err := NewGeneratorFromWeights(getBackend(t), cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	cases := loadGolden(t)
	var prompts [][]int32
	maxNew := 0
	for _, c := range cases {
		prompts = append(prompts, c.PromptIDs)
		maxNew = max(maxNew, len(c.GeneratedIDs))
	}
	ro, err := gen.Generate(prompts, GenerateOptions{MaxNewTokens: maxNew, EOS: -1, Pad: 0, Unk: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		got := ro.Seq[i][ro.PromptWidth : ro.PromptWidth+len(c.GeneratedIDs)]
		if !slices.Equal(got, c.GeneratedIDs) {
			for j := range got {
				if got[j] != c.GeneratedIDs[j] {
					t.Fatalf("%s: token %d: got %d, llama2.c %d", c.Name, j, got[j], c.GeneratedIDs[j])
				}
			}
		}
		if !slices.Equal(ro.Seq[i][ro.PromptWidth-len(c.PromptIDs):ro.PromptWidth], c.PromptIDs) {
			t.Fatalf("%s: prompt not left-padded in Seq", c.Name)
		}
	}
}

// TestGenerateSamplingAndEOS checks seeded sampling is reproducible, that a
// row stops at EOS with right pads after it and the spec §1.2 mask, and
// that SetWeights on the generator changes its output (no stale compile).
func TestGenerateSamplingAndEOS(t *testing.T) {
	cfg, w := loadStories(t)
	gen, err := NewGeneratorFromWeights(getBackend(t), cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	prompts := [][]int32{{1, 403, 407}, {1}, {1, 261, 378, 432, 383}}
	opts := GenerateOptions{MaxNewTokens: 40, Temperature: 1, TopP: 0.9, RepetitionPenalty: 1.2, Seed: 42, EOS: 2, Pad: 0, Unk: 0}
	a, err := gen.Generate(prompts, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := gen.Generate(prompts, opts)
	if err != nil {
		t.Fatal(err)
	}
	for r := range prompts {
		if !slices.Equal(a.Seq[r], b.Seq[r]) {
			t.Fatalf("row %d: same seed, different samples", r)
		}
	}
	opts.Seed = 43
	c, _ := gen.Generate(prompts, opts)
	if slices.Equal(a.Seq[0], c.Seq[0]) && slices.Equal(a.Seq[1], c.Seq[1]) {
		t.Error("different seeds gave identical rollouts")
	}
	// A live weight update: negating the final norm weight negates the
	// logits, so greedy decoding must change.
	w2 := Weights{}
	for k, v := range w {
		w2[k] = v
	}
	nw := &Tensor{Shape: w[NameFinalNorm].Shape, Data: slices.Clone(w[NameFinalNorm].Data)}
	for i := range nw.Data {
		nw.Data[i] = -nw.Data[i]
	}
	w2[NameFinalNorm] = nw
	if err := gen.SetWeights(w2); err != nil {
		t.Fatal(err)
	}
	greedy := GenerateOptions{MaxNewTokens: 30, EOS: 2, Pad: 0, Unk: 0}
	base, err := gen.Generate(prompts, greedy)
	if err != nil {
		t.Fatal(err)
	}
	if err := gen.SetWeights(w); err != nil {
		t.Fatal(err)
	}
	ref, _ := gen.Generate(prompts, greedy)
	stop := ref.Seq[0][ref.PromptWidth]
	greedy.EOS = stop // the first sampled token of row 0 becomes EOS
	ro, err := gen.Generate(prompts, greedy)
	if err != nil {
		t.Fatal(err)
	}
	if ro.ResponseLen[0] != 1 || ro.Seq[0][ro.PromptWidth] != stop {
		t.Fatalf("row 0 did not stop at EOS %d: len %d", stop, ro.ResponseLen[0])
	}
	for r := range prompts {
		row, m := ro.Seq[r], ro.AttentionMask[r]
		for i := range row {
			want := int32(0)
			if row[i] != 0 {
				want = 1
			}
			if m[i] != want {
				t.Fatalf("row %d col %d: mask %d for id %d", r, i, m[i], row[i])
			}
			if i >= ro.PromptWidth+ro.ResponseLen[r] && row[i] != 0 {
				t.Fatalf("row %d col %d: %d after the response, want pad", r, i, row[i])
			}
		}
		// Rows other than 0 continue past row 0's stop exactly as before.
		if r > 0 {
			n := min(ro.ResponseLen[r], ref.ResponseLen[r])
			if !slices.Equal(ro.Seq[r][ro.PromptWidth:ro.PromptWidth+n], ref.Seq[r][ref.PromptWidth:ref.PromptWidth+n]) {
				t.Fatalf("row %d changed when row 0 stopped early", r)
			}
		}
	}
	if len(ro.Seq[0]) != ro.PromptWidth+max(ro.ResponseLen[1], ro.ResponseLen[2]) {
		t.Fatalf("rollout width %d", len(ro.Seq[0]))
	}
	// The modified weights must have changed something (the update is live).
	if slices.Equal(base.Seq[0], ref.Seq[0]) && slices.Equal(base.Seq[1], ref.Seq[1]) && slices.Equal(base.Seq[2], ref.Seq[2]) {
		t.Error("SetWeights on the generator had no effect")
	}
}
