package model

import (
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
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

// TestGeneratorMatchesFullForward: for GQA with LLaMA biases, a Qwen2-like
// tied model and MQA with linear RoPE scaling, greedy KV-cache generation on
// a left-padded batch equals argmax of a full forward over the result.
func TestGeneratorMatchesFullForward(t *testing.T) {
	be := getBackend(t)
	gqa := tinyConfig()
	qwen := tinyConfig()
	qwen.ModelType, qwen.OBias, qwen.TieWordEmbeddings, qwen.RopeTheta = "qwen2", false, true, 1e6
	mqa := tinyConfig()
	mqa.NumKVHeads, mqa.AttentionBias, mqa.OBias = 1, false, false
	mqa.RopeScaling = &RopeScaling{Type: "linear", Factor: 4}
	for _, nc := range []struct {
		name string
		cfg  *Config
	}{{"gqa", gqa}, {"mqa", mqa}, {"qwen2", qwen}} {
		name, cfg := nc.name, nc.cfg
		w := RandomWeights(cfg, 11)
		for _, tt := range w {
			for i := range tt.Data {
				tt.Data[i] *= 5
			}
		}
		ctx := context.New().In(name)
		if err := SetWeights(ctx, cfg, w); err != nil {
			t.Fatal(err)
		}
		gen, err := NewGenerator(be, cfg, ctx)
		if err != nil {
			t.Fatal(err)
		}
		prompts := [][]int32{{1, 5, 9, 3}, {1, 7}, {1, 4, 4, 8, 12, 30, 2}}
		ro, err := gen.Generate(prompts, GenerateOptions{MaxNewTokens: 12, EOS: -1, Pad: 0, Unk: -1})
		if err != nil {
			t.Fatal(err)
		}
		b, width := len(prompts), len(ro.Seq[0])
		var ids []int32
		var mask []float32
		for r := range ro.Seq {
			ids = append(ids, ro.Seq[r]...)
			// Real tokens by construction (a sampled id may equal Pad).
			for i := range ro.Seq[r] {
				real := i >= ro.PromptWidth-len(prompts[r]) && i < ro.PromptWidth+ro.ResponseLen[r]
				mask = append(mask, map[bool]float32{true: 1}[real])
			}
		}
		out, err := context.ExecOnce(be, ctx.Reuse(), func(ctx *context.Context, ids, mask *G.Node) *G.Node {
			return Logits(ctx, cfg, ids, mask)
		}, tensors.FromFlatDataAndDimensions(ids, b, width), tensors.FromFlatDataAndDimensions(mask, b, width))
		if err != nil {
			t.Fatal(err)
		}
		logits, _ := tensors.CopyFlatData[float32](out)
		v := cfg.VocabSize
		for r := 0; r < b; r++ {
			for p := ro.PromptWidth - 1; p < width-1; p++ {
				row := logits[(r*width+p)*v : (r*width+p+1)*v]
				if got := argmax(row); got != ro.Seq[r][p+1] {
					t.Fatalf("%s row %d pos %d: full forward argmax %d, generator %d", name, r, p, got, ro.Seq[r][p+1])
				}
			}
		}
	}
}
