package model

import (
	"math"
	"testing"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/optim"
)

// TestLoRASharedBase: actor = LoRA over a frozen base shared with the
// reference; a fresh adapter changes nothing, AdamW steps move only the
// adapters, GetWeights merges them exactly, the generator follows, and a
// critic over the same base detaches its own score head.
func TestLoRASharedBase(t *testing.T) {
	if err := EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	be := getBackend(t)
	cfg := tinyConfig()
	w := RandomWeights(cfg, 21)
	root := context.New()
	base, actor, ref, critic := root.In("sft"), root.In("actor"), root.In("reference"), root.In("critic")
	if err := SetWeights(base, cfg, w); err != nil {
		t.Fatal(err)
	}
	SetTrainable(base, false)
	ShareBase(actor, base)
	ShareBase(ref, base)
	ShareBase(critic, base)
	if err := AddLoRA(actor, cfg, LoRAConfig{Rank: 4, Alpha: 8, Targets: []string{"q_proj", "v_proj", "down_proj"}}, 1); err != nil {
		t.Fatal(err)
	}
	if err := Detach(critic, NameScoreW, NameScoreB); err != nil {
		t.Fatal(err)
	}
	ids, mask := padded([][]int32{{1, 5, 9, 3, 7, 2}, {1, 4, 4, 8}}, 7, true)
	idsT, maskT := tensors.FromFlatDataAndDimensions(ids, 2, 7), tensors.FromFlatDataAndDimensions(mask, 2, 7)
	logp := func(scope *context.Context) []float32 {
		out, err := context.ExecOnce(be, scope.Reuse(), func(ctx *context.Context, ids, mask *G.Node) *G.Node {
			return TokenLogProbs(ctx, cfg, ids, mask)
		}, idsT, maskT)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := tensors.CopyFlatData[float32](out)
		return v
	}
	maxDiff := func(a, b []float32) float64 {
		d := 0.0
		for i := range a {
			d = math.Max(d, math.Abs(float64(a[i]-b[i])))
		}
		return d
	}
	if d := maxDiff(logp(actor), logp(ref)); d != 0 {
		t.Fatalf("fresh adapter changed log-probs by %g", d)
	}
	// Two AdamW steps on the actor's SFT loss (and the critic's scores).
	opt, err := optim.NewAdamW(optim.AdamWConfig{StateScope: "/optim/actor"})
	if err != nil {
		t.Fatal(err)
	}
	var trained []string
	step, err := context.NewExec(be, root.Reuse(), func(ctx *context.Context, ids, mask *G.Node) *G.Node {
		loss := G.Neg(G.ReduceAllSum(TokenLogProbs(ctx.In("actor"), cfg, ids, mask)))
		loss = G.Add(loss, G.ReduceAllSum(Scores(ctx.In("critic"), cfg, ids, mask)))
		vars := optim.TrainableVariables(ctx, ids.Graph(), "/")
		trained = trained[:0]
		for _, v := range vars {
			trained = append(trained, v.ScopeAndName())
		}
		_, s := opt.Update(ctx, G.Const(ids.Graph(), float32(1e-2)), loss, vars)
		return s
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := step.Exec(idsT, maskT); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range trained {
		scope, _ := context.SplitScope(n)
		if scope != "/actor" && scope != "/critic" {
			t.Fatalf("trained a base variable %s", n)
		}
	}
	if len(trained) != 2*3*cfg.NumLayers+2 {
		t.Fatalf("trained %d variables: %v", len(trained), trained)
	}
	after := logp(actor)
	if d := maxDiff(after, logp(ref)); d == 0 {
		t.Fatal("training the adapters did not change the actor")
	}
	wb, _ := GetWeights(base, cfg)
	for n, tt := range w {
		if maxDiff(tt.Data, wb[n].Data) != 0 {
			t.Fatalf("base weight %s changed", n)
		}
	}
	// Merged weights reproduce the adapted model.
	merged, err := GetWeights(actor, cfg)
	if err != nil {
		t.Fatal(err)
	}
	fresh := context.New().In("merged")
	if err := SetWeights(fresh, cfg, merged); err != nil {
		t.Fatal(err)
	}
	if d := maxDiff(after, logp(fresh)); d > matmulTol(t)/10 {
		t.Fatalf("merged weights differ from the adapted model by %g", d)
	}
	// The generator reads the adapted actor.
	gen, err := NewGenerator(be, cfg, actor)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gen.Generate([][]int32{{1, 5}}, GenerateOptions{MaxNewTokens: 4, EOS: -1}); err != nil {
		t.Fatal(err)
	}
}
