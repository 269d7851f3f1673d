package model

import (
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
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
	CheckEOSStop(t, ro, ref, stop)
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

// refTopP is the plain nucleus: stable sort of the whole vocabulary.
func refTopP(z []float64, topP float64) []int {
	idx := make([]int, len(z))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return z[idx[a]] > z[idx[b]] })
	sum := 0.0
	for _, x := range z {
		sum += x
	}
	cum := 0.0
	for k, i := range idx {
		cum += z[i] / sum
		if cum >= topP {
			return idx[:k+1]
		}
	}
	return idx
}

// TestSamplerTopP checks the thresholded nucleus against the full sort on
// peaked, flat and tied distributions, and greedy ties to the lowest id.
func TestSamplerTopP(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var sc sampler
	for trial := 0; trial < 200; trial++ {
		v := 50 + rng.IntN(3000)
		logits := make([]float32, v)
		scale := []float64{0.01, 1, 5, 20}[trial%4]
		for i := range logits {
			logits[i] = float32(math.Round(rng.NormFloat64()*scale*4) / 4) // quantised: ties
		}
		topP := []float64{0.1, 0.5, 0.9, 0.99}[rng.IntN(4)]
		opts := GenerateOptions{Temperature: 0.7, TopP: topP}
		z := make([]float64, v)
		m := math.Inf(-1)
		for i, x := range logits {
			z[i] = float64(x) / 0.7
			m = math.Max(m, z[i])
		}
		for i := range z {
			z[i] = math.Exp(z[i] - m)
		}
		want := refTopP(z, topP)
		allowed := map[int32]bool{}
		for _, i := range want {
			allowed[int32(i)] = true
		}
		seed := rng.Uint64()
		r1 := rand.New(rand.NewPCG(seed, 1))
		for k := 0; k < 20; k++ {
			if got := sc.sample(logits, nil, &opts, r1.Float64()); !allowed[got] {
				t.Fatalf("trial %d: sampled %d outside the nucleus of %d tokens", trial, got, len(want))
			}
		}
	}
	if got := sc.sample([]float32{1, 3, 3, 2}, nil, &GenerateOptions{}, 0); got != 1 {
		t.Fatalf("greedy tie: got %d, want 1", got)
	}
	// Repetition penalty: the repeated id loses its lead.
	if got := sc.sample([]float32{1, 3, 2.5}, []int32{1, 1}, &GenerateOptions{RepetitionPenalty: 1.5}, 0); got != 2 {
		t.Fatalf("repetition penalty: got %d, want 2", got)
	}
}

// TestChunkedLinear: the chunked LM head equals one matmul.
func TestChunkedLinear(t *testing.T) {
	be := getBackend(t)
	rng := rand.New(rand.NewPCG(1, 1))
	for _, dims := range [][3]int{{1, 16, 32000}, {5, 8, 4000}, {3, 4, 16411}} { // the last has no good divisor
		b, d, v := dims[0], dims[1], dims[2]
		x, w := randTensor(rng, b, d), randTensor(rng, v, d)
		e, err := G.NewExec(be, func(x, w *G.Node) (*G.Node, *G.Node) {
			return chunkedLinear(x, w), linear(x, w)
		})
		if err != nil {
			t.Fatal(err)
		}
		out, err := e.Exec(x, w)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := tensors.CopyFlatData[float32](out[0])
		c, _ := tensors.CopyFlatData[float32](out[1])
		for i := range a {
			if math.Abs(float64(a[i]-c[i])) > 1e-5 {
				t.Fatalf("%v: [%d] chunked %g, plain %g", dims, i, a[i], c[i])
			}
		}
	}
}

// CheckEOSStop checks a rollout ro whose row 0 stopped at EOS = stop after one token, against ref,
// the same prompts generated without that EOS: row 0 holds just the stop token, every mask is 1
// exactly where the ids are not pad, pads follow each response, and the other rows continue past
// row 0's stop exactly as in ref. (Exported for backends_test.go, which runs it on every backend.)
func CheckEOSStop(t *testing.T, ro, ref *Rollout, stop int32) {
	t.Helper()
	if ro.ResponseLen[0] != 1 || ro.Seq[0][ro.PromptWidth] != stop {
		t.Fatalf("row 0 did not stop at EOS %d: len %d", stop, ro.ResponseLen[0])
	}
	for r := range ro.Seq {
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
		if r > 0 {
			n := min(ro.ResponseLen[r], ref.ResponseLen[r])
			if !slices.Equal(ro.Seq[r][ro.PromptWidth:ro.PromptWidth+n], ref.Seq[r][ref.PromptWidth:ref.PromptWidth+n]) {
				t.Fatalf("row %d changed when row 0 stopped early", r)
			}
		}
	}
}
