package llama

import (
	"slices"
	"testing"

	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
)

// TestContextRoundTrip: FromContext reads the weights and trainable flags of a
// context scope (LoRA adapters unmerged), WriteContext and SaveState write
// weights and AdamW moments back under train/optim's names, and ReadContext
// and LoadState read them again.
func TestContextRoundTrip(t *testing.T) {
	skipNoEngine(t)
	cfg := parityCases()[0].cfg
	ctx := context.New()
	mctx := ctx.InAbsPath("/policy")
	if err := model.SetWeights(mctx, &cfg, model.RandomWeights(&cfg, 3)); err != nil {
		t.Fatal(err)
	}
	model.SetTrainable(mctx, false)
	if err := model.AddLoRA(mctx, &cfg, model.LoRAConfig{Rank: 2, Alpha: 4, Targets: []string{"q_proj"}}, 1); err != nil {
		t.Fatal(err)
	}
	m, vars, err := FromContext(mctx, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := model.LayerName(1, "self_attn.q_proj.lora_A.weight")
	if m.LoRAScale != 2 || !m.Trainable[a] || m.Trainable[model.NameEmbed] || m.Params[a] == nil {
		t.Fatalf("scale %g, trainable adapter %v, trainable embedding %v", m.LoRAScale, m.Trainable[a], m.Trainable[model.NameEmbed])
	}
	opt, err := NewAdamW(optim.AdamWConfig{StateScope: "/optim/policy"})
	if err != nil {
		t.Fatal(err)
	}
	g := m.NewGrads()
	for _, v := range g {
		for i := range v {
			v[i] = float32(i%7) - 3
		}
	}
	if _, err := opt.Apply(m, g, 1e-2); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(m.Params[a])
	if err := m.WriteContext(vars, nil); err != nil {
		t.Fatal(err)
	}
	if err := opt.SaveState(ctx, vars); err != nil {
		t.Fatal(err)
	}
	if v := ctx.GetVariableByScopeAndName("/optim/policy/policy", a+"_m2"); v == nil {
		t.Fatalf("no second moment of %s under train/optim's name", a)
	}
	m2, vars2, err := FromContext(mctx, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m2.Params[a], want) {
		t.Fatalf("adapter after the round trip differs")
	}
	clear(m2.Params[a])
	if err := m2.ReadContext(vars2); err != nil || !slices.Equal(m2.Params[a], want) {
		t.Fatalf("ReadContext: %v", err)
	}
	opt2, _ := NewAdamW(optim.AdamWConfig{StateScope: "/optim/policy"})
	if err := opt2.LoadState(ctx, vars2); err != nil {
		t.Fatal(err)
	}
	if opt2.Step != 1 || len(opt2.M) != len(opt.M) || !slices.Equal(opt2.U[a], opt.U[a]) {
		t.Fatalf("LoadState: step %d, %d moments (want 1, %d)", opt2.Step, len(opt2.M), len(opt.M))
	}
}
