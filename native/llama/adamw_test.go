package llama

import (
	"math"
	"math/rand/v2"
	"testing"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
)

// TestAdamWMatchesGraph: three clipped, weight-decayed AdamW steps leave the
// same weights as train/optim in a GoMLX graph (within 1% of a step: Adam
// turns float32 noise in a near-zero gradient into a visible update), and
// report the same gradient norms.
func TestAdamWMatchesGraph(t *testing.T) {
	skipNoEngine(t)
	if err := model.EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	cfg := parityCases()[0].cfg
	w := model.RandomWeights(&cfg, 11)
	for _, t := range w { // larger weights: the decay term is a visible part of each update
		for i := range t.Data {
			t.Data[i] *= 4
		}
	}
	const bsz, tt, lr = 3, 9, 1e-2
	ids, mask := batch([][]int32{{1, 5, 9, 3, 7, 2}, {1, 4, 4, 8, 30, 11, 6, 2, 9}, {1, 12, 36, 2}}, tt, []bool{true, false, false})
	rng := rand.New(rand.NewPCG(1, 2))
	coef := make([]float32, bsz*(tt-1))
	for i := range coef {
		coef[i] = float32(rng.NormFloat64())
	}
	acfg := optim.AdamWConfig{WeightDecay: 0.5, ClipNorm: 0.5, Accumulation: 1, StateScope: "/optim"}

	ctx := context.New()
	if err := model.SetWeights(ctx.In("m"), &cfg, w); err != nil {
		t.Fatal(err)
	}
	opt, err := optim.NewAdamW(acfg)
	if err != nil {
		t.Fatal(err)
	}
	step, err := context.NewExec(be, ctx.Reuse(), func(ctx *context.Context, ids, mask, c *G.Node) *G.Node {
		loss := G.ReduceAllSum(G.Mul(model.TokenLogProbs(ctx.In("m"), &cfg, ids, mask), c))
		norm, _ := opt.Update(ctx, G.Const(ids.Graph(), float32(lr)), loss, optim.TrainableVariables(ctx, ids.Graph(), "/m"))
		return norm
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(&cfg, w, 1)
	if err != nil {
		t.Fatal(err)
	}
	nopt, err := NewAdamW(acfg)
	if err != nil {
		t.Fatal(err)
	}
	g := m.NewGrads()
	for s := 0; s < 3; s++ {
		out, err := step.Exec(tensors.FromFlatDataAndDimensions(ids, bsz, tt), tensors.FromFlatDataAndDimensions(mask, bsz, tt),
			tensors.FromFlatDataAndDimensions(coef, bsz, tt-1))
		if err != nil {
			t.Fatal(err)
		}
		want := float64(out[0].Value().(float32))
		tp, err := m.Forward(bsz, tt, ids, mask)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.TokenLogProbs(tp); err != nil {
			t.Fatal(err)
		}
		dh, err := m.TokenLogProbsBackward(tp, coef, g)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(tp, dh, g); err != nil {
			t.Fatal(err)
		}
		norm, err := nopt.Apply(m, g, lr)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(norm-want) > 1e-4*want {
			t.Fatalf("step %d: gradient norm %g, graph %g", s, norm, want)
		}
	}
	got, err := model.GetWeights(ctx.In("m"), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, tt := range got {
		p := m.Params[name]
		bad, worst := 0, 0.0
		for i, v := range tt.Data {
			// Adam moves each weight by about lr per step: compare to that scale.
			if d := math.Abs(float64(p[i] - v)); d > 1e-2*lr {
				bad++
				worst = math.Max(worst, d)
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of %d weights differ by more than %g (worst %g)", name, bad, len(p), 1e-2*lr, worst)
		}
	}
}
