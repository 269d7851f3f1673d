package model

import (
	"math"
	"math/rand/v2"
	"testing"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// withStock runs fn with GoMLX's stock DotGeneral/Slice gradients installed.
func withStock(t *testing.T, fn func()) {
	if err := EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	G.VJPRegistration[G.NodeTypeDotGeneral] = stockDotVJP
	G.VJPRegistration[G.NodeTypeSlice] = stockSliceVJP
	defer func() {
		G.VJPRegistration[G.NodeTypeDotGeneral] = dotGeneralVJP
		G.VJPRegistration[G.NodeTypeSlice] = sliceVJP
	}()
	fn()
}

func randTensor(rng *rand.Rand, dims ...int) *tensors.Tensor {
	n := 1
	for _, d := range dims {
		n *= d
	}
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return tensors.FromFlatDataAndDimensions(x, dims...)
}

// TestFastGradientsMatchStock pins the two-matmul DotGeneral gradient (and
// the Concatenate Slice gradient) to GoMLX's stock ones on the einsum
// patterns the model uses and a few awkward ones (unsorted contracting axes,
// no contraction, batch axes not leading).
func TestFastGradientsMatchStock(t *testing.T) {
	if err := EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	be := getBackend(t)
	type pattern struct {
		name       string
		ld, rd     []int
		lc, lb     []int
		rc, rb     []int
		sliceAfter bool
	}
	patterns := []pattern{
		{"linear", []int{2, 3, 4}, []int{5, 4}, []int{2}, nil, []int{1}, nil, false},
		{"matmul", []int{3, 4}, []int{4, 5}, []int{1}, nil, []int{0}, nil, false},
		{"gqa scores", []int{2, 3, 2, 2, 4}, []int{2, 5, 2, 4}, []int{4}, []int{0, 2}, []int{3}, []int{0, 2}, false},
		{"gqa values", []int{2, 2, 3, 2, 5}, []int{2, 5, 2, 4}, []int{4}, []int{0, 1}, []int{1}, []int{0, 2}, false},
		{"rotate", []int{2, 3, 2, 4}, []int{4, 4}, []int{3}, nil, []int{0}, nil, false},
		{"outer batch", []int{3, 4}, []int{3, 5}, nil, []int{0}, nil, []int{0}, false},
		{"unsorted contracting", []int{2, 3, 4}, []int{4, 5, 2}, []int{2, 0}, nil, []int{0, 2}, nil, false},
		{"batch last", []int{4, 3, 2}, []int{2, 4, 5}, []int{0}, []int{2}, []int{1}, []int{0}, true},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, p := range patterns {
		a, b := randTensor(rng, p.ld...), randTensor(rng, p.rd...)
		build := func(a, b *G.Node) []*G.Node {
			g := a.Graph()
			y := G.DotGeneral(a, p.lc, p.lb, b, p.rc, p.rb)
			if p.sliceAfter {
				y = G.Slice(y, G.AxisRange(1, 2))
			}
			w := G.Sin(G.IotaFull(g, y.Shape())) // a fixed non-uniform upstream gradient
			return G.Gradient(G.ReduceSum(G.Mul(y, w)), a, b)
		}
		run := func() []*tensors.Tensor {
			e, err := G.NewExec(be, build)
			if err != nil {
				t.Fatalf("%s: %v", p.name, err)
			}
			out, err := e.Exec(a, b)
			if err != nil {
				t.Fatalf("%s: %v", p.name, err)
			}
			return out
		}
		fast := run()
		var stock []*tensors.Tensor
		if p.sliceAfter {
			// The stock Slice gradient needs Pad (absent on the pure-Go
			// backend): swap only DotGeneral's.
			G.VJPRegistration[G.NodeTypeDotGeneral] = stockDotVJP
			stock = run()
			G.VJPRegistration[G.NodeTypeDotGeneral] = dotGeneralVJP
		} else {
			withStock(t, func() { stock = run() })
		}
		for i := range fast {
			f, _ := tensors.CopyFlatData[float32](fast[i])
			s, _ := tensors.CopyFlatData[float32](stock[i])
			if !fast[i].Shape().Equal(stock[i].Shape()) {
				t.Fatalf("%s: grad %d shape %s, stock %s", p.name, i, fast[i].Shape(), stock[i].Shape())
			}
			for j := range f {
				if math.Abs(float64(f[j]-s[j])) > matmulTol(t)/10*(1+math.Abs(float64(s[j]))) {
					t.Fatalf("%s: grad %d[%d] = %g, stock %g", p.name, i, j, f[j], s[j])
				}
			}
		}
	}
}

// tinyConfig is a small GQA config with attention biases for gradient tests.
func tinyConfig() *Config {
	return &Config{HiddenSize: 16, IntermediateSize: 24, NumLayers: 2, NumHeads: 4, NumKVHeads: 2,
		VocabSize: 32, MaxPositions: 64, RMSNormEps: 1e-5, RopeTheta: 10000, AttentionBias: true, OBias: true,
		ScoreDim: 1, BOS: 1, EOS: 2, Pad: 0}
}

// TestModelGradients checks the gradients of a loss mixing TokenLogProbs and
// Scores, on a left-padded batch: fast vs stock gradients on every weight,
// and central finite differences on a few entries.
func TestModelGradients(t *testing.T) {
	if err := EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	cfg := tinyConfig()
	w := RandomWeights(cfg, 3)
	// Larger weights than HF's init make the check sharper.
	for _, tt := range w {
		if len(tt.Shape) == 2 {
			for i := range tt.Data {
				tt.Data[i] *= 3
			}
		}
	}
	be := getBackend(t)
	ids, mask := padded([][]int32{{1, 5, 9, 3, 7, 2}, {1, 4, 4, 8}}, 7, true)
	idsT := tensors.FromFlatDataAndDimensions(ids, 2, 7)
	maskT := tensors.FromFlatDataAndDimensions(mask, 2, 7)
	names := w.Names()
	lossFn := func(ctx *context.Context, ids, mask *G.Node) *G.Node {
		g := ids.Graph()
		lp := TokenLogProbs(ctx, cfg, ids, mask)
		end, sc := EndScores(ctx, cfg, ids, mask)
		// Pad positions are masked out as trainers do (their values are
		// finite but meaningless).
		wl := G.Mul(G.Sin(G.IotaFull(g, lp.Shape())), G.Slice(mask, G.AxisRange(), G.AxisRangeToEnd(1)))
		ws := G.Mul(G.Cos(G.IotaFull(g, sc.Shape())), mask)
		return G.Add(G.Add(G.ReduceAllSum(G.Mul(lp, wl)), G.ReduceAllSum(G.Mul(sc, ws))), G.ReduceAllSum(end))
	}
	grads := func() []*tensors.Tensor {
		ctx := context.New()
		if err := SetWeights(ctx, cfg, w); err != nil {
			t.Fatal(err)
		}
		e, err := context.NewExec(be, ctx.Reuse(), func(ctx *context.Context, ids, mask *G.Node) []*G.Node {
			loss := lossFn(ctx, ids, mask)
			var vs []*G.Node
			for _, n := range names {
				vs = append(vs, ctx.GetVariableByScopeAndName(ctx.Scope(), n).ValueGraph(ids.Graph()))
			}
			return append([]*G.Node{loss}, G.Gradient(loss, vs...)...)
		})
		if err != nil {
			t.Fatal(err)
		}
		out, err := e.Exec(idsT, maskT)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	fast := grads()
	var stock []*tensors.Tensor
	withStock(t, func() { stock = grads() })
	for i := 1; i < len(fast); i++ {
		f, _ := tensors.CopyFlatData[float32](fast[i])
		s, _ := tensors.CopyFlatData[float32](stock[i])
		for j := range f {
			if math.Abs(float64(f[j]-s[j])) > matmulTol(t)*(1+math.Abs(float64(s[j]))) {
				t.Fatalf("%s[%d]: fast %g stock %g", names[i-1], j, f[j], s[j])
			}
		}
	}
	// Finite differences (float32 model: small eps, loose tolerance).
	lossAt := func(ww Weights) float64 {
		ctx := context.New()
		if err := SetWeights(ctx, cfg, ww); err != nil {
			t.Fatal(err)
		}
		out, err := context.ExecOnce(be, ctx.Reuse(), lossFn, idsT, maskT)
		if err != nil {
			t.Fatal(err)
		}
		return float64(tensors.ToScalar[float32](out))
	}
	rng := rand.New(rand.NewPCG(5, 6))
	checked := 0
	for i, n := range names {
		if i%3 != 0 {
			continue
		}
		g, _ := tensors.CopyFlatData[float32](fast[i+1])
		j := rng.IntN(len(w[n].Data))
		orig := w[n].Data[j]
		const eps = 4e-3
		w[n].Data[j] = orig + eps
		up := lossAt(w)
		w[n].Data[j] = orig - eps
		down := lossAt(w)
		w[n].Data[j] = orig
		num := (up - down) / (2 * eps)
		fdTol := 1e-2
		if matmulTol(t) > 1e-3 {
			fdTol = 0.1 // TF32 matmuls: finite differences are coarse
		}
		if math.Abs(num-float64(g[j])) > fdTol*(1+math.Abs(num)) {
			t.Errorf("%s[%d]: analytic %g, finite difference %g", n, j, g[j], num)
		}
		checked++
	}
	t.Logf("finite differences checked on %d tensors", checked)
}
