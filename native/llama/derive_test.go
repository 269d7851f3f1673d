package llama

import (
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/train/model"
)

// TestDerive: a derived model reads the base's tensors (the same slices), owns copies of its own
// (the only trainable ones), and refuses a tensor of another shape or an unknown non-adapter name.
func TestDerive(t *testing.T) {
	skipNoEngine(t)
	cfg := parityCases()[0].cfg
	base, err := New(&cfg, model.RandomWeights(&cfg, 3), 1)
	if err != nil {
		t.Fatal(err)
	}
	q := model.LayerName(0, "self_attn.q_proj")
	qs := base.Shapes[q+".weight"]
	own := model.Weights{
		q + ".lora_A.weight": {Shape: []int{2, qs[1]}, Data: make([]float32, 2*qs[1])},
		q + ".lora_B.weight": {Shape: []int{qs[0], 2}, Data: make([]float32, 2*qs[0])},
		model.NameFinalNorm:  {Shape: base.Shapes[model.NameFinalNorm], Data: make([]float32, len(base.Params[model.NameFinalNorm]))},
	}
	d, err := base.Derive(own, 2)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range d.Params {
		_, isOwn := own[name]
		if d.Trainable[name] != isOwn {
			t.Errorf("%s: trainable %v, own %v", name, d.Trainable[name], isOwn)
		}
		shared := base.Params[name] != nil && &p[0] == &base.Params[name][0]
		if shared == isOwn {
			t.Errorf("%s: shares the base's slice = %v, own = %v", name, shared, isOwn)
		}
	}
	if d.LoRAScale != 2 || len(d.Params) != len(base.Params)+2 {
		t.Errorf("scale %g, %d tensors (base %d)", d.LoRAScale, len(d.Params), len(base.Params))
	}
	own[model.NameFinalNorm].Data[0] = 5
	if d.Params[model.NameFinalNorm][0] != 0 {
		t.Error("Derive did not copy the own tensors")
	}
	for _, c := range []struct {
		name string
		w    model.Weights
		want string
	}{
		{"shape", model.Weights{model.NameFinalNorm: {Shape: []int{3}, Data: make([]float32, 3)}}, "shape"},
		{"unknown", model.Weights{"extra.weight": {Shape: []int{3}, Data: make([]float32, 3)}}, "neither"},
		{"adapter misfit", model.Weights{q + ".lora_A.weight": {Shape: []int{2, 5}, Data: make([]float32, 10)}}, "does not fit"},
	} {
		if _, err := base.Derive(c.w, 1); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
	if !slices.Equal(base.Shapes[q+".weight"], qs) {
		t.Error("Derive changed the base")
	}
}
