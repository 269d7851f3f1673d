// Package optim holds the optimizer of every saferlhf trainer: AdamW applied
// inside a GoMLX graph on context variables, with the reference's settings
// (spec §1.10: betas (0.9, 0.95), eps 1e-8, decoupled weight decay skipped for
// biases and layer norms, DeepSpeed global-norm gradient clipping at 1.0), gradient
// accumulation in context variables, and the HF get_scheduler learning-rate
// schedules evaluated on the host.
//
// All optimizer state (step counter, first and second moments, gradient
// accumulators) lives in non-trainable context variables under StateScope, so a
// checkpoint of every context variable resumes bit for bit.
package optim

import (
	"fmt"
	"sort"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/bf16"
)

// Defaults of spec §1.10 (configs/constants.py ADAM_BETAS; torch default eps;
// DeepSpeed gradient_clipping 1.0).
const (
	DefaultBeta1    = 0.9
	DefaultBeta2    = 0.95
	DefaultEpsilon  = 1e-8
	DefaultClipNorm = 1.0
)

// AdamWConfig configures AdamW. Zero values take the defaults above.
type AdamWConfig struct {
	// Beta1, Beta2 and Epsilon are Adam's; defaults 0.9, 0.95, 1e-8.
	Beta1, Beta2, Epsilon float64
	// WeightDecay is the decoupled weight decay (PyTorch AdamW: p ← p − lr·wd·p); 0 disables it.
	WeightDecay float64
	// NoDecay reports whether a variable, by its "scope/name" path, is exempt from
	// weight decay; nil means DefaultNoDecay.
	NoDecay func(path string) bool
	// ClipNorm is the global gradient-norm clip; 0 means DefaultClipNorm, negative disables clipping.
	ClipNorm float64
	// Accumulation is the number of micro-batches per optimizer update (see Accumulate); default 1.
	Accumulation int
	// StateScope is the absolute scope of the optimizer state; default "/optim".
	// Give each optimizer of one context its own (e.g. "/optim/actor", "/optim/reward_critic").
	StateScope string
}

// AdamW builds the AdamW update into graphs. It holds configuration only: the
// state is in the context, so one AdamW can be used from several graphs.
type AdamW struct {
	cfg AdamWConfig
}

// DefaultNoDecay is the reference's get_optimizer_grouped_parameters (spec §1.10): parameters
// whose lower-cased name contains "bias" or "layernorm.weight" are exempt from weight decay
// (scope separators "/" read as ".").
// For LLaMA that exempts the per-layer input_layernorm/post_attention_layernorm weights but
// decays the final norm ("model.norm.weight"), as the reference does.
func DefaultNoDecay(path string) bool {
	p := strings.ReplaceAll(strings.ToLower(path), "/", ".")
	return strings.Contains(p, "bias") || strings.Contains(p, "layernorm.weight")
}

// NewAdamW validates cfg, fills in defaults and returns the optimizer.
func NewAdamW(cfg AdamWConfig) (*AdamW, error) {
	if cfg.Beta1 == 0 {
		cfg.Beta1 = DefaultBeta1
	}
	if cfg.Beta2 == 0 {
		cfg.Beta2 = DefaultBeta2
	}
	if cfg.Epsilon == 0 {
		cfg.Epsilon = DefaultEpsilon
	}
	if cfg.ClipNorm == 0 {
		cfg.ClipNorm = DefaultClipNorm
	}
	if cfg.Accumulation == 0 {
		cfg.Accumulation = 1
	}
	if cfg.NoDecay == nil {
		cfg.NoDecay = DefaultNoDecay
	}
	if cfg.StateScope == "" {
		cfg.StateScope = "/optim"
	}
	switch {
	case cfg.Beta1 < 0 || cfg.Beta1 >= 1 || cfg.Beta2 < 0 || cfg.Beta2 >= 1:
		return nil, fmt.Errorf("optim: Adam betas (%g, %g) must lie in [0, 1)", cfg.Beta1, cfg.Beta2)
	case cfg.Epsilon < 0:
		return nil, fmt.Errorf("optim: epsilon %g must be >= 0", cfg.Epsilon)
	case cfg.WeightDecay < 0:
		return nil, fmt.Errorf("optim: weight decay %g must be >= 0", cfg.WeightDecay)
	case cfg.Accumulation < 1:
		return nil, fmt.Errorf("optim: accumulation %d must be >= 1", cfg.Accumulation)
	case !strings.HasPrefix(cfg.StateScope, context.ScopeSeparator):
		return nil, fmt.Errorf("optim: state scope %q must be absolute (start with %q)", cfg.StateScope, context.ScopeSeparator)
	}
	return &AdamW{cfg: cfg}, nil
}

// Config returns the configuration with defaults filled in.
func (o *AdamW) Config() AdamWConfig { return o.cfg }

// TrainableVariables returns the trainable variables of ctx used by graph g whose
// scope is under scope (all if scope is "" or "/") and not under any of frozen,
// sorted by path so that the order is stable across runs.
func TrainableVariables(ctx *context.Context, g *graph.Graph, scope string, frozen ...string) []*context.Variable {
	var vars []*context.Variable
	for v := range ctx.IterVariables() {
		if v.Trainable && v.InUseByGraph(g) && InScope(v.Scope(), scope) && !InAnyScope(v.Scope(), frozen) {
			vars = append(vars, v)
		}
	}
	sort.Slice(vars, func(i, j int) bool { return vars[i].ScopeAndName() < vars[j].ScopeAndName() })
	return vars
}

// InScope reports whether scope equals prefix or lies below it ("" and "/" contain everything).
func InScope(scope, prefix string) bool {
	prefix = strings.TrimSuffix(prefix, context.ScopeSeparator)
	return prefix == "" || scope == prefix || strings.HasPrefix(scope, prefix+context.ScopeSeparator)
}

// InAnyScope reports whether scope is InScope of any of prefixes.
func InAnyScope(scope string, prefixes []string) bool {
	for _, p := range prefixes {
		if InScope(scope, p) {
			return true
		}
	}
	return false
}

// Update computes the gradients of loss with respect to vars and applies the
// clipped AdamW update with learning rate lr (a scalar node, fed per step from a
// Schedule). It returns the global gradient norm before clipping and the new
// optimizer step (float32 scalars). Use it when Accumulation is 1.
func (o *AdamW) Update(ctx *context.Context, lr, loss *graph.Node, vars []*context.Variable) (gradNorm, step *graph.Node) {
	return o.Apply(ctx, lr, vars, Gradients(loss, vars))
}

// Gradients returns d loss / d v for each variable, in the variables' dtypes.
func Gradients(loss *graph.Node, vars []*context.Variable) []*graph.Node {
	g := loss.Graph()
	nodes := make([]*graph.Node, len(vars))
	for i, v := range vars {
		nodes[i] = v.ValueGraph(g)
	}
	if loss.Shape().Size() != 1 {
		panic(fmt.Errorf("optim: loss must be a scalar, got shape %s", loss.Shape()))
	}
	return graph.Gradient(graph.Reshape(loss), nodes...)
}

// Accumulate adds grads/Accumulation to per-variable accumulators (DeepSpeed
// divides each micro-batch loss by gradient_accumulation_steps and sums the
// gradients). Call ApplyAccumulated in a separate graph every Accumulation
// micro-steps.
func (o *AdamW) Accumulate(ctx *context.Context, vars []*context.Variable, grads []*graph.Node) {
	inv := 1 / float64(o.cfg.Accumulation)
	for i, v := range vars {
		acc := o.stateVar(ctx, v, "_accum")
		g := grads[i].Graph()
		acc.SetValueGraph(graph.Add(acc.ValueGraph(g), graph.MulScalar(toF32(grads[i]), inv)))
	}
}

// ApplyAccumulated applies the update from the accumulated gradients of vars
// (which must have been accumulated at least once in this context) and zeroes
// the accumulators. It returns the pre-clip gradient norm and the new step.
func (o *AdamW) ApplyAccumulated(ctx *context.Context, lr *graph.Node, vars []*context.Variable) (gradNorm, step *graph.Node) {
	return o.ApplyAccumulatedOwned(ctx, lr, vars, nil)
}

// ApplyAccumulatedOwned is ApplyAccumulated updating only the variables i with
// owned[i] (all when owned is nil): see ApplyOwned.
func (o *AdamW) ApplyAccumulatedOwned(ctx *context.Context, lr *graph.Node, vars []*context.Variable, owned []bool) (gradNorm, step *graph.Node) {
	g := lr.Graph()
	grads := make([]*graph.Node, len(vars))
	for i, v := range vars {
		acc := o.stateVar(ctx, v, "_accum")
		grads[i] = acc.ValueGraph(g)
		acc.SetValueGraph(graph.ZerosLike(grads[i]))
	}
	return o.ApplyOwned(ctx, lr, vars, grads, owned)
}

// Apply clips grads by their global norm and applies one AdamW step to vars.
//
// Clipping follows torch.nn.utils.clip_grad_norm_ / DeepSpeed: with
// n = sqrt(Σ‖g‖²), every gradient is scaled by min(1, clip/(n+1e-6)).
// The update is PyTorch's AdamW: p ← p − lr·wd·p (unless NoDecay(p)), then
// m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², p ← p − lr/(1−β1ᵗ) · m / (sqrt(v/(1−β2ᵗ)) + eps).
// Moments are float32 whatever the variable dtype; a bf16 variable is updated in
// float32 and rounded back. Returns the pre-clip norm and the new step as float32 scalars.
func (o *AdamW) Apply(ctx *context.Context, lr *graph.Node, vars []*context.Variable, grads []*graph.Node) (gradNorm, step *graph.Node) {
	return o.ApplyOwned(ctx, lr, vars, grads, nil)
}

// ApplyOwned is Apply for one rank of a ZeRO-1 run: the global norm and the
// clip come from every gradient, but only the variables i with owned[i] (all
// when owned is nil) are updated and have moments (created, read or written);
// the others are left as they are, for their owners to update.
func (o *AdamW) ApplyOwned(ctx *context.Context, lr *graph.Node, vars []*context.Variable, grads []*graph.Node, owned []bool) (gradNorm, step *graph.Node) {
	if owned != nil && len(owned) != len(vars) {
		panic(fmt.Errorf("optim: %d variables but %d ownership flags", len(vars), len(owned)))
	}
	if len(vars) != len(grads) {
		panic(fmt.Errorf("optim: %d variables but %d gradients", len(vars), len(grads)))
	}
	if len(vars) == 0 {
		panic(fmt.Errorf("optim: no variables to update"))
	}
	g := lr.Graph()
	lr = toF32(graph.Reshape(lr))
	f32 := make([]*graph.Node, len(grads))
	var sumSq *graph.Node
	for i, gr := range grads {
		if gr == nil {
			panic(fmt.Errorf("optim: no gradient for %s (not used by the loss?)", vars[i].ScopeAndName()))
		}
		f32[i] = toF32(gr)
		sq := graph.ReduceAllSum(graph.Square(f32[i]))
		if sumSq == nil {
			sumSq = sq
		} else {
			sumSq = graph.Add(sumSq, sq)
		}
	}
	gradNorm = graph.Sqrt(sumSq)
	coef := graph.ScalarOne(g, dtypes.Float32)
	if o.cfg.ClipNorm > 0 {
		coef = graph.Min(coef, graph.Div(graph.Scalar(g, dtypes.Float32, o.cfg.ClipNorm), graph.AddScalar(gradNorm, 1e-6)))
	}

	stepVar := o.StepVariable(ctx)
	step = graph.AddScalar(stepVar.ValueGraph(g), 1)
	stepVar.SetValueGraph(step)
	// Bias corrections in float64 on scalars (cheap, and as exact as the reference's Python floats).
	step64 := graph.ConvertDType(step, dtypes.Float64)
	bc1 := graph.OneMinus(graph.Pow(graph.Scalar(g, dtypes.Float64, o.cfg.Beta1), step64))
	bc2 := graph.OneMinus(graph.Pow(graph.Scalar(g, dtypes.Float64, o.cfg.Beta2), step64))
	stepSize := graph.Mul(lr, toF32(graph.Inverse(bc1)))
	invBC2 := toF32(graph.Inverse(bc2))
	decay := graph.MulScalar(lr, o.cfg.WeightDecay)

	b1, b2 := o.cfg.Beta1, o.cfg.Beta2
	for i, v := range vars {
		if owned != nil && !owned[i] {
			continue
		}
		gr := graph.Mul(f32[i], coef)
		m := o.stateVar(ctx, v, "_m1")
		u := o.stateVar(ctx, v, "_m2")
		mNew := graph.Add(graph.MulScalar(m.ValueGraph(g), b1), graph.MulScalar(gr, 1-b1))
		uNew := graph.Add(graph.MulScalar(u.ValueGraph(g), b2), graph.MulScalar(graph.Square(gr), 1-b2))
		m.SetValueGraph(mNew)
		u.SetValueGraph(uNew)
		pOrig := v.ValueGraph(g)
		p := toF32(pOrig)
		if o.cfg.WeightDecay > 0 && !o.cfg.NoDecay(v.ScopeAndName()) {
			p = graph.Sub(p, graph.Mul(p, decay))
		}
		// Same-shape element-wise ops and scalar broadcasts only (fast on the pure-Go backend).
		denom := graph.AddScalar(graph.Sqrt(graph.Mul(uNew, invBC2)), o.cfg.Epsilon)
		p = graph.Sub(p, graph.Mul(graph.Div(mNew, denom), stepSize))
		if pOrig.DType() != dtypes.Float32 {
			p = bf16.ConvertDType(p, pOrig.DType()) // a bf16 weight rounds to nearest even on every backend
		}
		v.SetValueGraph(p)
	}
	return gradNorm, step
}

// StepVariable returns (creating at 0) the float32 scalar counting optimizer updates.
func (o *AdamW) StepVariable(ctx *context.Context) *context.Variable {
	v := ctx.Checked(false).InAbsPath(o.cfg.StateScope).VariableWithValue("step", float32(0))
	v.SetTrainable(false)
	return v
}

// Step reads the number of optimizer updates made so far from ctx (0 before the first).
func (o *AdamW) Step(ctx *context.Context) int {
	v := ctx.GetVariableByScopeAndName(o.cfg.StateScope, "step")
	if v == nil || !v.HasValue() {
		return 0
	}
	t := v.MustValue()
	if s, ok := t.Value().(float32); ok {
		return int(s)
	}
	return 0
}

// StatePath returns the scope and name of the optimizer-state variable of v with
// the given suffix ("_m1", "_m2" or "_accum").
func (o *AdamW) StatePath(v *context.Variable, suffix string) (scope, name string) {
	return o.cfg.StateScope + v.Scope(), v.Name() + suffix
}

// Accumulator returns (creating it at zero) the float32 gradient accumulator of v that
// Accumulate fills and ApplyAccumulated reads.
func (o *AdamW) Accumulator(ctx *context.Context, v *context.Variable) *context.Variable {
	return o.stateVar(ctx, v, "_accum")
}

func (o *AdamW) stateVar(ctx *context.Context, v *context.Variable, suffix string) *context.Variable {
	scope, name := o.StatePath(v, suffix)
	sv := ctx.GetVariableByScopeAndName(scope, name)
	if sv == nil {
		sv = ctx.Checked(false).InAbsPath(scope).VariableWithValue(name, tensors.FromShape(shapes.Make(dtypes.Float32, v.Shape().Dimensions...)))
	}
	sv.SetTrainable(false)
	return sv
}

func toF32(x *graph.Node) *graph.Node {
	if x.DType() == dtypes.Float32 {
		return x
	}
	return graph.ConvertDType(x, dtypes.Float32)
}
