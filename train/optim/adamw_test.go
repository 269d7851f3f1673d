package optim

import (
	"math"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/dtypes/bfloat16"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// The tiny problem: three variables p_v with loss Σ_v (½ Σ c_v⊙p_v² + Σ d_v⊙p_v),
// so that ∂loss/∂p_v = c_v⊙p_v + d_v is known exactly on the host. d_v are graph
// inputs, different for each micro-batch.
var (
	names   = []string{"weight", "bias", "weight"}
	scopes  = []string{"/model/layer", "/model/layer", "/model/input_layernorm"}
	init0   = [][]float64{{0.5, -1, 2, 0.25, -0.75, 1.5}, {0.1, -0.2, 0.3}, {1, 1, 1}}
	curv    = [][]float64{{1, 2, 0.5, 1, 3, 0.1}, {1, 1, 1}, {0.5, 2, 1}}
	decayed = []bool{true, false, false} // independent of DefaultNoDecay: layer weight only
)

func dFor(micro int) [][]float64 {
	out := make([][]float64, len(init0))
	for v := range init0 {
		out[v] = make([]float64, len(init0[v]))
		for j := range out[v] {
			out[v][j] = math.Sin(float64(1+micro*7+v*3+j)) * 3 // large: the global norm exceeds 1
		}
	}
	return out
}

// refAdamW is a float64 host AdamW (PyTorch semantics) with torch-style global-norm clipping.
type refAdamW struct {
	p, m, v                   [][]float64
	step                      int
	b1, b2, eps, wd, clipNorm float64
}

func newRef(wd, clip float64) *refAdamW {
	r := &refAdamW{b1: 0.9, b2: 0.95, eps: 1e-8, wd: wd, clipNorm: clip}
	for _, p := range init0 {
		r.p = append(r.p, append([]float64(nil), p...))
		r.m = append(r.m, make([]float64, len(p)))
		r.v = append(r.v, make([]float64, len(p)))
	}
	return r
}

func (r *refAdamW) update(lr float64, ds [][][]float64) (norm float64) {
	grads := make([][]float64, len(r.p))
	for v := range r.p {
		grads[v] = make([]float64, len(r.p[v]))
		for _, d := range ds {
			for j := range grads[v] {
				grads[v][j] += (curv[v][j]*r.p[v][j] + d[v][j]) / float64(len(ds))
			}
		}
		for _, g := range grads[v] {
			norm += g * g
		}
	}
	norm = math.Sqrt(norm)
	coef := 1.0
	if r.clipNorm > 0 {
		coef = math.Min(1, r.clipNorm/(norm+1e-6))
	}
	r.step++
	bc1 := 1 - math.Pow(r.b1, float64(r.step))
	bc2 := 1 - math.Pow(r.b2, float64(r.step))
	for v := range r.p {
		for j := range r.p[v] {
			g := grads[v][j] * coef
			if decayed[v] {
				r.p[v][j] *= 1 - lr*r.wd
			}
			r.m[v][j] = r.b1*r.m[v][j] + (1-r.b1)*g
			r.v[v][j] = r.b2*r.v[v][j] + (1-r.b2)*g*g
			r.p[v][j] -= lr / bc1 * r.m[v][j] / (math.Sqrt(r.v[v][j]/bc2) + r.eps)
		}
	}
	return norm
}

func newCtx() *context.Context {
	ctx := context.New()
	for i := range init0 {
		vals := make([]float32, len(init0[i]))
		for j, x := range init0[i] {
			vals[j] = float32(x)
		}
		ctx.InAbsPath(scopes[i]).VariableWithValue(names[i], vals)
	}
	return ctx
}

func loss(ctx *context.Context, ds []*graph.Node) *graph.Node {
	g := ds[0].Graph()
	var total *graph.Node
	for i := range init0 {
		p := ctx.GetVariableByScopeAndName(scopes[i], names[i]).ValueGraph(g)
		c := make([]float32, len(curv[i]))
		for j, x := range curv[i] {
			c[j] = float32(x)
		}
		term := graph.Add(graph.MulScalar(graph.ReduceAllSum(graph.Mul(graph.Const(g, c), graph.Square(p))), 0.5),
			graph.ReduceAllSum(graph.Mul(ds[i], p)))
		if total == nil {
			total = term
		} else {
			total = graph.Add(total, term)
		}
	}
	return total
}

func f32s(x []float64) []float32 {
	o := make([]float32, len(x))
	for i, v := range x {
		o[i] = float32(v)
	}
	return o
}

func TestAdamWMatchesReference(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		accum    int
		wd, clip float64
		sched    Schedule
		steps    int
	}{
		{"clip+decay+cosine", 1, 0.1, 1, Schedule{Kind: Cosine, Base: 0.05, Warmup: 2, Total: 6}, 6},
		{"accumulate3+noclip+linear", 3, 0.01, -1, Schedule{Kind: Linear, Base: 0.02, Warmup: 1, Total: 5}, 4},
		{"accumulate2+clip+constant", 2, 0.5, 1, Schedule{Kind: Constant, Base: 0.03}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opt, err := NewAdamW(AdamWConfig{WeightDecay: tc.wd, ClipNorm: tc.clip, Accumulation: tc.accum, StateScope: "/optim/test"})
			if err != nil {
				t.Fatal(err)
			}
			ctx := newCtx()
			ref := newRef(tc.wd, tc.clip)
			var vars []*context.Variable
			fused, err := context.NewExec(be, ctx, func(ctx *context.Context, lr, d0, d1, d2 *graph.Node) []*graph.Node {
				l := loss(ctx, []*graph.Node{d0, d1, d2})
				vars = TrainableVariables(ctx, lr.Graph(), "/model")
				norm, step := opt.Update(ctx, lr, l, vars)
				return []*graph.Node{norm, step}
			})
			if err != nil {
				t.Fatal(err)
			}
			acc, err := context.NewExec(be, ctx, func(ctx *context.Context, d0, d1, d2 *graph.Node) *graph.Node {
				l := loss(ctx, []*graph.Node{d0, d1, d2})
				vars = TrainableVariables(ctx, l.Graph(), "/model")
				opt.Accumulate(ctx, vars, Gradients(l, vars))
				return l
			})
			if err != nil {
				t.Fatal(err)
			}
			apply, err := context.NewExec(be, ctx, func(ctx *context.Context, lr *graph.Node) []*graph.Node {
				norm, step := opt.ApplyAccumulated(ctx, lr, vars)
				return []*graph.Node{norm, step}
			})
			if err != nil {
				t.Fatal(err)
			}
			micro := 0
			for s := 0; s < tc.steps; s++ {
				lr := tc.sched.LR(s)
				var ds [][][]float64
				for k := 0; k < tc.accum; k++ {
					ds = append(ds, dFor(micro))
					micro++
				}
				wantNorm := ref.update(lr, ds)
				var out []*tensors.Tensor
				if tc.accum == 1 {
					d := ds[0]
					out, err = fused.Exec(float32(lr), f32s(d[0]), f32s(d[1]), f32s(d[2]))
				} else {
					for _, d := range ds {
						if _, err = acc.Exec(f32s(d[0]), f32s(d[1]), f32s(d[2])); err != nil {
							t.Fatal(err)
						}
					}
					out, err = apply.Exec(float32(lr))
				}
				if err != nil {
					t.Fatal(err)
				}
				gotNorm := float64(out[0].Value().(float32))
				if math.Abs(gotNorm-wantNorm) > 1e-5*wantNorm {
					t.Errorf("step %d: grad norm %g, want %g", s, gotNorm, wantNorm)
				}
				if st := out[1].Value().(float32); int(st) != s+1 || opt.Step(ctx) != s+1 {
					t.Errorf("step %d: optimizer step %v / %d", s, st, opt.Step(ctx))
				}
				if tc.clip > 0 && s == 0 && wantNorm <= tc.clip {
					t.Fatalf("test problem does not exercise clipping (norm %g)", wantNorm)
				}
				for i := range init0 {
					got := ctx.GetVariableByScopeAndName(scopes[i], names[i]).MustValue().Value().([]float32)
					for j := range got {
						if d := math.Abs(float64(got[j]) - ref.p[i][j]); d > 2e-6*(1+math.Abs(ref.p[i][j])) {
							t.Errorf("step %d: %s/%s[%d] = %.8g, reference %.8g", s, scopes[i], names[i], j, got[j], ref.p[i][j])
						}
					}
				}
			}
			if tc.accum > 1 {
				// Accumulators are zeroed after each update.
				for _, v := range vars {
					sc, n := opt.StatePath(v, "_accum")
					for _, x := range ctx.GetVariableByScopeAndName(sc, n).MustValue().Value().([]float32) {
						if x != 0 {
							t.Fatalf("accumulator %s/%s not zeroed", sc, n)
						}
					}
				}
			}
		})
	}
}

// TestDefaultNoDecay: the reference exempts names containing "bias" or "layernorm.weight"
// (lower-cased), so LLaMA's final norm is decayed.
func TestDefaultNoDecay(t *testing.T) {
	for path, want := range map[string]bool{
		"/actor/model.layers.0.input_layernorm.weight":           true,
		"/actor/model.layers.3.post_attention_layernorm.weight":  true,
		"/actor/model.layers.0.self_attn.q_proj.bias":            true,
		"/actor/model.norm.weight":                               false,
		"/actor/model.embed_tokens.weight":                       false,
		"/reward/score_head.weight":                              false,
		"/policy/model/layers/0/self_attn/q_proj/weight":         false,
		"/policy/model/layers/0/input_layernorm/weight":          true,
		"/policy/model/norm/weight":                              false,
		"/reward/score_head/bias":                                true,
		"/policy/model/layers/0/post_attention_layernorm/weight": true,
		"/policy/lm_head/weight":                                 false,
		"/x/LayerNorm.weight":                                    true,
	} {
		if got := DefaultNoDecay(path); got != want {
			t.Errorf("DefaultNoDecay(%q) = %v", path, got)
		}
	}
}

func TestNewAdamWErrors(t *testing.T) {
	for _, cfg := range []AdamWConfig{{Beta1: 1}, {Beta2: -0.1}, {WeightDecay: -1}, {Accumulation: -2}, {StateScope: "optim"}} {
		if _, err := NewAdamW(cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
	o, err := NewAdamW(AdamWConfig{})
	if err != nil {
		t.Fatal(err)
	}
	c := o.Config()
	if c.Beta1 != 0.9 || c.Beta2 != 0.95 || c.Epsilon != 1e-8 || c.ClipNorm != 1 || c.Accumulation != 1 || c.StateScope != "/optim" {
		t.Errorf("defaults %+v", c)
	}
}

// TestBF16Variable checks that a bfloat16 parameter is updated in float32 and
// rounded back, with float32 moments.
func TestBF16Variable(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	opt, _ := NewAdamW(AdamWConfig{})
	ctx := context.New()
	p0 := []float32{1, -2, 0.5}
	ctx.InAbsPath("/m").VariableWithValue("w", []bfloat16.BFloat16{bfloat16.FromFloat32(p0[0]), bfloat16.FromFloat32(p0[1]), bfloat16.FromFloat32(p0[2])})
	step, err := context.NewExec(be, ctx, func(ctx *context.Context, lr *graph.Node) []*graph.Node {
		v := ctx.GetVariableByScopeAndName("/m", "w")
		loss := graph.ReduceAllSum(graph.ConvertDType(v.ValueGraph(lr.Graph()), dtypes.Float32)) // grad = 1
		norm, s := opt.Update(ctx, lr, loss, []*context.Variable{v})
		return []*graph.Node{norm, s, graph.ConvertDType(v.ValueGraph(lr.Graph()), dtypes.Float32)}
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := step.Exec(float32(0.25))
	if err != nil {
		t.Fatal(err)
	}
	// grad = 1 everywhere, norm √3 > 1: clipped to 1/√3; the first Adam step moves each weight by lr (sign of m).
	got := out[2].Value().([]float32)
	for i, p := range p0 {
		if math.Abs(float64(got[i]-(p-0.25))) > 1e-2 {
			t.Errorf("w[%d] = %g, want ≈ %g", i, got[i], p-0.25)
		}
	}
	if m := ctx.GetVariableByScopeAndName("/optim/m", "w_m1"); m == nil || m.Shape().DType != dtypes.Float32 {
		t.Errorf("moment variable %v", m)
	}
}

// TestBF16VariableRoundsToNearestEven: a bf16 weight is written back as the round-to-nearest-even
// of the float32 update, on the pure-Go backend too (whose ConvertDType truncates: a systematic
// drift toward zero of every updated weight). The same update on a float32 variable gives the
// value each bf16 weight must round from; 0.5−0.4, −2−0.4 and 1−0.4 round up, truncate down.
func TestBF16VariableRoundsToNearestEven(t *testing.T) {
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	p0 := []float32{0.5, -2, 1} // exact in bf16
	run := func(dt dtypes.DType) []float32 {
		opt, _ := NewAdamW(AdamWConfig{})
		ctx := context.New()
		if dt == dtypes.BFloat16 {
			ctx.InAbsPath("/m").VariableWithValue("w", []bfloat16.BFloat16{bfloat16.FromFloat32(p0[0]), bfloat16.FromFloat32(p0[1]), bfloat16.FromFloat32(p0[2])})
		} else {
			ctx.InAbsPath("/m").VariableWithValue("w", p0)
		}
		step, err := context.NewExec(be, ctx, func(ctx *context.Context, lr *graph.Node) *graph.Node {
			v := ctx.GetVariableByScopeAndName("/m", "w")
			loss := graph.ReduceAllSum(graph.ConvertDType(v.ValueGraph(lr.Graph()), dtypes.Float32))
			opt.Update(ctx, lr, loss, []*context.Variable{v})
			return graph.ConvertDType(v.ValueGraph(lr.Graph()), dtypes.Float32)
		})
		if err != nil {
			t.Fatal(err)
		}
		out, err := step.Exec(float32(0.4))
		if err != nil {
			t.Fatal(err)
		}
		return out[0].Value().([]float32)
	}
	master, got := run(dtypes.Float32), run(dtypes.BFloat16)
	for i := range p0 {
		want := safetensors.Float32ToBF16(master[i])
		if g := uint16(math.Float32bits(got[i]) >> 16); g != want {
			t.Errorf("w[%d] = %#04x, want %#04x (bf16 of the float32 update %g; truncation %#04x)", i, g, want, master[i], math.Float32bits(master[i])>>16)
		}
	}
}
