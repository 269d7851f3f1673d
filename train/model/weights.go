package model

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// Tensor is a host float32 tensor, row-major.
type Tensor struct {
	Shape []int
	Data  []float32
}

// NewTensor returns a zero tensor of the given shape.
func NewTensor(shape ...int) *Tensor {
	return &Tensor{Shape: slices.Clone(shape), Data: make([]float32, sizeOf(shape))}
}

// Size returns the number of elements the shape holds.
func (t *Tensor) Size() int { return sizeOf(t.Shape) }

// sizeOf returns the number of elements of a tensor of this shape.
func sizeOf(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// Weights maps HF tensor names ("model.embed_tokens.weight",
// "model.layers.0.self_attn.q_proj.weight", "lm_head.weight",
// "score_head.weight", ...) to host tensors. Linear weights are [out, in] as in
// PyTorch.
type Weights map[string]*Tensor

// Names returns the names in w, sorted.
func (w Weights) Names() []string {
	return sortedKeys(w)
}

// Weight names of the HF LLaMA layout.
const (
	NameEmbed     = "model.embed_tokens.weight"
	NameFinalNorm = "model.norm.weight"
	NameLMHead    = "lm_head.weight"
	NameScoreW    = "score_head.weight"
	NameScoreB    = "score_head.bias"
)

// LayerName returns the HF name of a per-layer tensor, e.g.
// LayerName(3, "self_attn.q_proj.weight").
func LayerName(layer int, suffix string) string {
	return fmt.Sprintf("model.layers.%d.%s", layer, suffix)
}

// ExpectedShapes returns every tensor the config needs, with its shape: the
// base transformer, lm_head.weight unless tied, and the score head when
// ScoreDim > 0. withLMHead=false leaves the LM head out (score models).
func ExpectedShapes(cfg *Config, withLMHead bool) map[string][]int {
	d, dh, f := cfg.HiddenSize, cfg.Dh(), cfg.IntermediateSize
	qd, kvd := cfg.NumHeads*dh, cfg.NumKVHeads*dh
	m := map[string][]int{
		NameEmbed:     {cfg.VocabSize, d},
		NameFinalNorm: {d},
	}
	for l := 0; l < cfg.NumLayers; l++ {
		m[LayerName(l, "input_layernorm.weight")] = []int{d}
		m[LayerName(l, "post_attention_layernorm.weight")] = []int{d}
		m[LayerName(l, "self_attn.q_proj.weight")] = []int{qd, d}
		m[LayerName(l, "self_attn.k_proj.weight")] = []int{kvd, d}
		m[LayerName(l, "self_attn.v_proj.weight")] = []int{kvd, d}
		m[LayerName(l, "self_attn.o_proj.weight")] = []int{d, qd}
		if cfg.AttentionBias {
			m[LayerName(l, "self_attn.q_proj.bias")] = []int{qd}
			m[LayerName(l, "self_attn.k_proj.bias")] = []int{kvd}
			m[LayerName(l, "self_attn.v_proj.bias")] = []int{kvd}
		}
		if cfg.OBias {
			m[LayerName(l, "self_attn.o_proj.bias")] = []int{d}
		}
		m[LayerName(l, "mlp.gate_proj.weight")] = []int{f, d}
		m[LayerName(l, "mlp.up_proj.weight")] = []int{f, d}
		m[LayerName(l, "mlp.down_proj.weight")] = []int{d, f}
	}
	if withLMHead && !cfg.TieWordEmbeddings {
		m[NameLMHead] = []int{cfg.VocabSize, d}
	}
	if cfg.ScoreDim > 0 {
		m[NameScoreW] = []int{cfg.ScoreDim, d}
		m[NameScoreB] = []int{cfg.ScoreDim}
	}
	return m
}

// Check verifies that w holds every tensor cfg needs with the right shape
// (the LM head only when present or required by withLMHead).
func (w Weights) Check(cfg *Config, withLMHead bool) error {
	exp := ExpectedShapes(cfg, withLMHead)
	for _, name := range sortedKeys(exp) {
		t, ok := w[name]
		if !ok {
			return fmt.Errorf("weights: tensor %q missing", name)
		}
		if !slices.Equal(t.Shape, exp[name]) {
			return fmt.Errorf("weights: tensor %q has shape %v, config wants %v", name, t.Shape, exp[name])
		}
		if len(t.Data) != t.Size() {
			return fmt.Errorf("weights: tensor %q has %d values for shape %v", name, len(t.Data), t.Shape)
		}
	}
	if t, ok := w[NameLMHead]; ok && !cfg.TieWordEmbeddings {
		if !slices.Equal(t.Shape, []int{cfg.VocabSize, cfg.HiddenSize}) {
			return fmt.Errorf("weights: tensor %q has shape %v, config wants %v", NameLMHead, t.Shape, []int{cfg.VocabSize, cfg.HiddenSize})
		}
	}
	return nil
}

// ScoreHeadInitStd is HF's initializer_range: PreTrainedModel._init_weights draws
// a new Linear's weight from normal(0, 0.02) (and zeroes its bias).
const ScoreHeadInitStd = 0.02

// InitScoreHead adds a fresh score head (Linear(hidden, ScoreDim), weight
// normal(0, 0.02) and bias zero, as HF's _init_weights initialises the
// Safe-RLHF score head missing from an SFT checkpoint) to w, and sets
// cfg.ScoreDim to scoreDim. Existing score-head tensors are replaced.
func InitScoreHead(cfg *Config, w Weights, scoreDim int, seed uint64) {
	cfg.ScoreDim = scoreDim
	d := cfg.HiddenSize
	rng := rand.New(rand.NewPCG(seed, 0x5c0e))
	wt := NewTensor(scoreDim, d)
	for i := range wt.Data {
		wt.Data[i] = float32(rng.NormFloat64() * ScoreHeadInitStd)
	}
	w[NameScoreW] = wt
	w[NameScoreB] = NewTensor(scoreDim)
}

// RandomWeights returns weights for cfg drawn as HF initialises LLaMA
// (normal, std 0.02; norms at 1; biases 0), for tests and benchmarks.
func RandomWeights(cfg *Config, seed uint64) Weights {
	rng := rand.New(rand.NewPCG(seed, 0x11a3a))
	w := Weights{}
	exp := ExpectedShapes(cfg, true)
	for _, name := range sortedKeys(exp) { // sorted: deterministic draws
		shape := exp[name]
		t := NewTensor(shape...)
		switch {
		case len(shape) == 1 && (name == NameFinalNorm || hasSuffix(name, "layernorm.weight")):
			for i := range t.Data {
				t.Data[i] = 1
			}
		case len(shape) == 1:
		default:
			for i := range t.Data {
				t.Data[i] = float32(rng.NormFloat64() * 0.02)
			}
		}
		w[name] = t
	}
	return w
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }
