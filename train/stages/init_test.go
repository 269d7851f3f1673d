package stages

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
)

func TestLayerFilter(t *testing.T) {
	cfg := &model.Config{NumLayers: 5}
	names := []string{model.NameEmbed, model.LayerName(0, "mlp.up_proj.weight"), model.LayerName(3, "input_layernorm.weight"),
		model.LayerName(4, "self_attn.q_proj.weight"), model.NameFinalNorm, model.NameScoreW, model.NameScoreB}
	cases := []struct {
		layers string
		want   []bool // per name above
	}{
		{"all", []bool{true, true, true, true, true, true, true}},
		{"head", []bool{false, false, false, false, false, true, true}},
		{"top-1", []bool{false, false, false, true, true, true, true}},
		{"top-2", []bool{false, false, true, true, true, true, true}},
		{"top-0", []bool{false, false, false, false, true, true, true}},
		{"no-embed", []bool{false, true, true, true, true, true, true}},
	}
	for _, c := range cases {
		f, err := layerFilter(cfg, c.layers)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range names {
			if got := f(n); got != c.want[i] {
				t.Errorf("%s: %s trainable %v, want %v", c.layers, n, got, c.want[i])
			}
		}
	}
	for _, bad := range []string{"top-6", "top-x", "embed", "top--1"} {
		if _, err := layerFilter(cfg, bad); err == nil {
			t.Errorf("--train-layers %q accepted", bad)
		}
	}
}

// TestScratchWeights: --init scratch keeps --model's architecture and sizes the vocabulary to the
// tokenizer's (the Llama-2 32K vocabulary over the stories260K trunk).
func TestScratchWeights(t *testing.T) {
	cfg, w0, err := model.LoadAny(filepath.Join(assets, "models/stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := scratchWeights(cfg, filepath.Join(assets, "models/tokenizer.model"), 1)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.VocabSize != 32000 || cfg.HiddenSize != 64 || cfg.NumLayers != 5 {
		t.Fatalf("config %+v, want the stories260K trunk with 32000 tokens", cfg)
	}
	if e := w[model.NameEmbed]; e == nil || e.Shape[0] != 32000 || e.Shape[1] != 64 {
		t.Fatalf("embedding %v", w[model.NameEmbed])
	}
	q := model.LayerName(0, "self_attn.q_proj.weight")
	if w[q].Data[0] == w0[q].Data[0] {
		t.Error("scratch weights equal the pretrained ones")
	}
	if err := w.Check(cfg, false); err != nil {
		t.Fatal(err)
	}
}

// TestSignWeight: the sign term scales with --sign-weight (0 leaves the pairwise term only).
func TestSignWeight(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	// B = 1 pair, T = 1: hi score 0.5, lo −0.25; cost signs +1 (hi unsafe), −1 (lo safe).
	softplus := func(x float64) float64 { return math.Log1p(math.Exp(x)) }
	pairTerm := softplus(-(0.5 - -0.25))
	signPart := softplus(-0.5) + softplus(-0.25)
	for _, w := range []float64{0, 1, 3} {
		exec, err := graph.NewExec(be, func(sc, e, sg *graph.Node) *graph.Node {
			return WeightedPairwiseScoreLoss(sc, e, nil, sg, 0, w).Loss
		})
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Exec(tensors.FromFlatDataAndDimensions([]float32{0.5, -0.25}, 2, 1),
			tensors.FromFlatDataAndDimensions([]float32{1, 1}, 2, 1), tensors.FromFlatDataAndDimensions([]float32{1, -1}, 2))
		if err != nil {
			t.Fatal(err)
		}
		want := pairTerm + w*signPart
		if got := float64(out[0].Value().(float32)); math.Abs(got-want) > 1e-6 {
			t.Errorf("sign weight %g: loss %g, want %g", w, got, want)
		}
	}
}
