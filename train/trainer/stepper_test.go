package trainer

import (
	"math"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/internal/backend"
)

func testBackend(t testing.TB) backends.Backend {
	t.Helper()
	b, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// linearLoss is mean((x·w + b - y)²) with metric "abs" = mean|err|.
func linearLoss(ctx *context.Context, in []*graph.Node) (*graph.Node, map[string]*graph.Node) {
	x, y := in[0], in[1]
	w := ctx.In("lin").VariableWithShape("weight", shapes.Make(dtypes.Float32, x.Shape().Dim(1), 1)).ValueGraph(x.Graph())
	b := ctx.In("lin").VariableWithShape("bias", shapes.Make(dtypes.Float32, 1)).ValueGraph(x.Graph())
	pred := graph.Add(graph.Reshape(graph.Dot(x, w), y.Shape().Dimensions...), b)
	e := graph.Sub(pred, y)
	return graph.ReduceAllMean(graph.Square(e)), map[string]*graph.Node{"abs": graph.ReduceAllMean(graph.Abs(e))}
}

func newLinearCtx(w []float32, b float32) *context.Context {
	ctx := context.New()
	ctx.InAbsPath("/m/lin").VariableWithValue("weight", tensors.FromFlatDataAndDimensions(w, len(w), 1))
	ctx.InAbsPath("/m/lin").VariableWithValue("bias", []float32{b})
	return ctx
}

// refAdamW runs the same training on the host in float64: loss grad, clipping, AdamW.
type refAdamW struct {
	w          []float64
	b          float64
	m, v       []float64
	step       int
	wd, clip   float64
	b1, b2, ep float64
}

func (r *refAdamW) step1(x [][]float32, y []float32, lr float64) (loss, norm float64) {
	n := float64(len(y))
	gw := make([]float64, len(r.w))
	var gb float64
	for i := range y {
		p := r.b
		for j := range r.w {
			p += float64(x[i][j]) * r.w[j]
		}
		e := p - float64(y[i])
		loss += e * e / n
		for j := range r.w {
			gw[j] += 2 * e * float64(x[i][j]) / n
		}
		gb += 2 * e / n
	}
	g := append(gw, gb)
	for _, v := range g {
		norm += v * v
	}
	norm = math.Sqrt(norm)
	if c := r.clip / (norm + 1e-6); c < 1 {
		for i := range g {
			g[i] *= c
		}
	}
	r.step++
	params := append(append([]float64{}, r.w...), r.b)
	for i := range params {
		r.m[i] = r.b1*r.m[i] + (1-r.b1)*g[i]
		r.v[i] = r.b2*r.v[i] + (1-r.b2)*g[i]*g[i]
		if i < len(r.w) { // bias has no decay
			params[i] -= lr * r.wd * params[i]
		}
		mh := r.m[i] / (1 - math.Pow(r.b1, float64(r.step)))
		vh := r.v[i] / (1 - math.Pow(r.b2, float64(r.step)))
		params[i] -= lr * mh / (math.Sqrt(vh) + r.ep)
	}
	copy(r.w, params)
	r.b = params[len(r.w)]
	return loss, norm
}

func TestStepperMatchesHostAdamW(t *testing.T) {
	be := testBackend(t)
	x := [][]float32{{1, 2, 3}, {0.5, -1, 2}, {-2, 0.1, 0.3}, {1, 1, 1}}
	y := []float32{1, -2, 0.5, 3}
	for _, tc := range []struct {
		name string
		acc  int
		clip float64
	}{{"fused-clip", 1, 1}, {"fused-noclip", 1, -1}, {"accum2", 2, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := newLinearCtx([]float32{0.1, -0.2, 0.3}, 0.05)
			s, err := NewStepper(be, ctx, Config{Scope: "/m", Loss: linearLoss, WeightDecay: 0.1, ClipNorm: tc.clip, Accumulation: tc.acc})
			if err != nil {
				t.Fatal(err)
			}
			ref := &refAdamW{w: []float64{0.1, -0.2, 0.3}, b: 0.05, m: make([]float64, 4), v: make([]float64, 4),
				wd: 0.1, clip: tc.clip, b1: 0.9, b2: 0.95, ep: 1e-8}
			if tc.clip < 0 {
				ref.clip = math.Inf(1)
			}
			for it := 0; it < 5; it++ {
				lr := 0.01 * float64(it+1)
				var res Result
				for k := 0; k < tc.acc; k++ {
					if res, err = s.Step(lr, x, y); err != nil {
						t.Fatal(err)
					}
					if (k == tc.acc-1) != res.Applied {
						t.Fatalf("micro %d: Applied=%v", k, res.Applied)
					}
				}
				// With accumulation of identical micro-batches the mean gradient equals the single-batch one.
				wantLoss, wantNorm := ref.step1(x, y, lr)
				if math.Abs(res.Loss-wantLoss) > 1e-5*math.Max(1, wantLoss) || math.Abs(res.GradNorm-wantNorm) > 1e-4*math.Max(1, wantNorm) {
					t.Fatalf("step %d: loss %g norm %g, want %g %g", it, res.Loss, res.GradNorm, wantLoss, wantNorm)
				}
				if res.OptimizerStep != int64(it+1) {
					t.Fatalf("optimizer step %d, want %d", res.OptimizerStep, it+1)
				}
				if _, ok := res.Metrics["abs"]; !ok {
					t.Fatalf("missing metric: %v", res.Metrics)
				}
			}
			w := tensors.MustCopyFlatData[float32](ctx.GetVariableByScopeAndName("/m/lin", "weight").MustValue())
			for j := range w {
				if math.Abs(float64(w[j])-ref.w[j]) > 1e-5 {
					t.Fatalf("weight %d = %g, want %g", j, w[j], ref.w[j])
				}
			}
			ev, err := s.Eval(x, y)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Applied || ev.OptimizerStep != 5 {
				t.Fatalf("eval result %+v", ev)
			}
		})
	}
}

func TestStepperFrozenAndErrors(t *testing.T) {
	be := testBackend(t)
	ctx := newLinearCtx([]float32{0.1, -0.2}, 0.5)
	s, err := NewStepper(be, ctx, Config{Scope: "/m", Frozen: []string{"/m/lin"}, Loss: linearLoss})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Step(0.1, [][]float32{{1, 2}}, []float32{1}); err == nil {
		t.Fatal("expected an error: every variable is frozen")
	}
	if _, err := NewStepper(be, ctx, Config{Scope: "m", Loss: linearLoss}); err == nil {
		t.Fatal("relative scope accepted")
	}
	if _, err := NewStepper(be, ctx, Config{Scope: "/m"}); err == nil {
		t.Fatal("nil loss accepted")
	}
}
