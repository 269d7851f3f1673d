package trainer

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/optim"
)

// LossFn builds, inside a GoMLX graph, the scalar loss to minimise and any named
// scalar metrics from the batch inputs (in the order passed to Stepper.Step).
// ctx is positioned at the Stepper's scope with Reuse set, so model graph
// functions find the weights that model.SetWeights placed there. ctx.IsTraining is
// true in the training graphs (Step) and false in the evaluation graph (Eval).
type LossFn func(ctx *context.Context, inputs []*graph.Node) (loss *graph.Node, metrics map[string]*graph.Node)

// Config configures a Stepper. Zero values take the defaults of spec §1.10.
type Config struct {
	// Scope is the absolute context scope whose trainable variables are updated (e.g. "/policy").
	Scope string
	// Frozen lists absolute scopes under Scope (or anywhere) whose variables are never updated.
	Frozen []string
	// Loss builds the loss graph.
	Loss LossFn
	// Beta1, Beta2, Epsilon are AdamW's; default 0.9, 0.95, 1e-8.
	Beta1, Beta2, Epsilon float64
	// WeightDecay is AdamW's decoupled weight decay (0 disables it).
	WeightDecay float64
	// NoDecay reports whether a variable (by its "scope/name" path) is exempt from weight
	// decay; default: names containing "bias" or "norm" (spec §1.10).
	NoDecay func(path string) bool
	// ClipNorm is the global gradient-norm clip; default 1.0, negative disables it.
	ClipNorm float64
	// Accumulation is the number of micro-batches whose gradients are averaged
	// before one optimizer update; default 1.
	Accumulation int
	// OptimScope is the absolute scope holding the optimizer state; default "/optim"+Scope.
	OptimScope string
	// Comm, when it has more than one rank, makes the Stepper data-parallel: every
	// rank runs the same Steps on its shard of each batch, and the accumulated
	// gradients are averaged across ranks before each update (see dp.go). Nil or a
	// world of one keeps the single-process path (one fused graph when Accumulation is 1).
	Comm dist.Communicator
	// ZeroStage 1 shards the optimiser state across the ranks of Comm (ZeRO-1, see
	// zero.go); 0 (the default) keeps all of it on every rank.
	ZeroStage int
	// Reducer averages the accumulated gradients across ranks (nil: HostReducer over
	// Comm). Setting one makes the Stepper take the data-parallel path even for a
	// single rank (NCCL with one rank, say).
	Reducer GradientReducer
	// State lists other absolute scopes holding training state that every rank must hold
	// equal (a score model's normaliser statistics): the check that ranks start in step
	// covers them with Scope and OptimScope.
	State []string
}

// Result is what one call of Stepper.Step or Stepper.Eval returns to the host.
type Result struct {
	// Loss is the micro-batch loss.
	Loss float64
	// Metrics holds the named scalar metrics of LossFn.
	Metrics map[string]float64
	// Applied is true when this micro-step ended an accumulation cycle and updated the weights.
	Applied bool
	// GradNorm is the global gradient norm before clipping (only when Applied).
	GradNorm float64
	// OptimizerStep is the number of optimizer updates made so far.
	OptimizerStep int64
}

// Stepper compiles one GoMLX graph per input shape that computes the loss, its
// gradients with respect to the trainable variables of a scope, and the AdamW
// update with global-norm clipping, and runs it for each (micro-)batch.
type Stepper struct {
	backend backends.Backend
	ctx     *context.Context
	cfg     Config

	mu          sync.Mutex
	trainExec   *context.Exec // fused loss+grad+update (Accumulation==1) or loss+grad+accumulate
	applyExec   *context.Exec // update from accumulators (Accumulation>1)
	evalExec    *context.Exec
	metricNames []string
	micro       int // micro-steps done in the current accumulation cycle
	trained     []*context.Variable
	opt         *optim.AdamW
	commTime    time.Duration // time spent in gradient all-reduces
	// ZeRO-1: the owning rank of each trained variable and whether this rank owns it.
	owners []int
	owned  []bool
	// restored is the partition of the moments of the checkpoint restored (RestorePartition),
	// what ShardedState lists until the first update partitions the variables it trains.
	restored []checkpoint.Owned
}

// NewStepper returns a Stepper for cfg on the variables of ctx. ctx must already hold
// the model weights (for example through model.SetWeights).
func NewStepper(backend backends.Backend, ctx *context.Context, cfg Config) (*Stepper, error) {
	if cfg.Loss == nil {
		return nil, fmt.Errorf("trainer: Config.Loss is nil")
	}
	cfg, opt, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Stepper{backend: backend, ctx: ctx, cfg: cfg, opt: opt}
	if cfg.Accumulation == 1 && !s.cfg.dataParallel() {
		s.trainExec, err = context.NewExec(backend, ctx, s.fusedGraph)
	} else {
		s.trainExec, err = context.NewExec(backend, ctx, s.accumulateGraph)
		if err == nil {
			s.applyExec, err = context.NewExec(backend, ctx, s.applyGraph)
		}
	}
	if err == nil {
		s.evalExec, err = context.NewExec(backend, ctx, s.evalGraph)
	}
	if err != nil {
		return nil, fmt.Errorf("trainer: %w", err)
	}
	return s, nil
}

// withDefaults validates cfg, fills in its defaults and returns it with its optimizer.
func (cfg Config) withDefaults() (Config, *optim.AdamW, error) {
	if cfg.Scope == "" || !strings.HasPrefix(cfg.Scope, context.ScopeSeparator) {
		return cfg, nil, fmt.Errorf("trainer: Config.Scope %q must be an absolute scope such as \"/policy\"", cfg.Scope)
	}
	if cfg.Beta1 == 0 {
		cfg.Beta1 = 0.9
	}
	if cfg.Beta2 == 0 {
		cfg.Beta2 = 0.95
	}
	if cfg.Epsilon == 0 {
		cfg.Epsilon = 1e-8
	}
	if cfg.ClipNorm == 0 {
		cfg.ClipNorm = 1
	}
	if cfg.Accumulation <= 0 {
		cfg.Accumulation = 1
	}
	if cfg.NoDecay == nil {
		cfg.NoDecay = optim.DefaultNoDecay
	}
	if cfg.OptimScope == "" {
		cfg.OptimScope = "/optim" + cfg.Scope
	}
	if cfg.Beta1 < 0 || cfg.Beta1 >= 1 || cfg.Beta2 < 0 || cfg.Beta2 >= 1 {
		return cfg, nil, fmt.Errorf("trainer: Adam betas (%g, %g) must lie in [0, 1)", cfg.Beta1, cfg.Beta2)
	}
	if cfg.WeightDecay < 0 {
		return cfg, nil, fmt.Errorf("trainer: weight decay %g must be >= 0", cfg.WeightDecay)
	}
	if err := CheckZeroStage(cfg.ZeroStage); err != nil {
		return cfg, nil, fmt.Errorf("trainer: %w", err)
	}
	opt, err := optim.NewAdamW(optim.AdamWConfig{Beta1: cfg.Beta1, Beta2: cfg.Beta2, Epsilon: cfg.Epsilon,
		WeightDecay: cfg.WeightDecay, NoDecay: cfg.NoDecay, ClipNorm: cfg.ClipNorm, Accumulation: cfg.Accumulation,
		StateScope: cfg.OptimScope})
	if err != nil {
		return cfg, nil, fmt.Errorf("trainer: %w", err)
	}
	return cfg, opt, nil
}

// Config returns the Stepper's configuration with defaults filled in.
func (s *Stepper) Config() Config { return s.cfg }

// Context returns the context holding the weights and optimizer state.
func (s *Stepper) Context() *context.Context { return s.ctx }

// MetricNames returns the sorted names of the LossFn metrics (known after the first step).
func (s *Stepper) MetricNames() []string { return slices.Clone(s.metricNames) }

// Step runs one micro-batch at learning rate lr: forward, backward and, at the end of
// each accumulation cycle, the clipped AdamW update. inputs are host values
// (tensors or Go slices) passed to LossFn in order.
func (s *Stepper) Step(lr float64, inputs ...any) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	args := append([]any{tensors.FromScalar(float32(lr))}, inputs...)
	if s.cfg.Accumulation == 1 && !s.cfg.dataParallel() {
		out, err := execCatch(s.trainExec, args)
		if err != nil {
			return Result{}, err
		}
		r := s.result(out[2:])
		r.Applied, r.GradNorm, r.OptimizerStep = true, scalar(out[0]), int64(scalar(out[1]))
		return r, nil
	}
	out, err := execCatch(s.trainExec, args[1:])
	if err != nil {
		return Result{}, err
	}
	r := s.result(out)
	s.micro++
	if s.micro < s.cfg.Accumulation {
		r.OptimizerStep = s.optimizerStepLocked()
		return r, nil
	}
	s.micro = 0
	if err := s.allReduceGradients(); err != nil {
		return Result{}, err
	}
	upd, err := execCatch(s.applyExec, args[:1])
	if err != nil {
		return Result{}, err
	}
	if err := s.gatherWeights(); err != nil {
		return Result{}, err
	}
	r.Applied, r.GradNorm, r.OptimizerStep = true, scalar(upd[0]), int64(scalar(upd[1]))
	return r, nil
}

// Accumulator returns (creating it at zero) the float32 gradient accumulator of the trained
// variable v, for callers that compute gradients outside the Stepper's graphs (for example
// layer by layer, model.Layerwise.Backward) and then call ApplyAccumulated.
func (s *Stepper) Accumulator(v *context.Variable) *context.Variable {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opt.Accumulator(s.ctx, v)
}

// ApplyAccumulated runs the clipped AdamW update of vars (sorted by path, as TrainableVariables)
// from their accumulators, which it zeroes: the update of gradients accumulated outside the
// Stepper. The Stepper's own accumulation cycle must be at a boundary.
func (s *Stepper) ApplyAccumulated(lr float64, vars []*context.Variable) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.micro != 0 {
		return Result{}, fmt.Errorf("trainer: ApplyAccumulated inside an accumulation cycle (%d micro-steps done)", s.micro)
	}
	if s.trained != nil && !slices.Equal(s.trained, vars) {
		return Result{}, fmt.Errorf("trainer: ApplyAccumulated on %d variables, but the Stepper trains %d others", len(vars), len(s.trained))
	}
	s.trained = slices.Clone(vars)
	if err := s.allReduceGradients(); err != nil { // data parallel: the ranks' mean gradient
		return Result{}, err
	}
	if s.applyExec == nil {
		var err error
		if s.applyExec, err = context.NewExec(s.backend, s.ctx, s.applyGraph); err != nil {
			return Result{}, fmt.Errorf("trainer: %w", err)
		}
	}
	upd, err := execCatch(s.applyExec, []any{tensors.FromScalar(float32(lr))})
	if err != nil {
		return Result{}, err
	}
	if err := s.gatherWeights(); err != nil {
		return Result{}, err
	}
	return Result{Applied: true, GradNorm: scalar(upd[0]), OptimizerStep: int64(scalar(upd[1]))}, nil
}

// Eval computes the loss and metrics of a batch without gradients or updates.
func (s *Stepper) Eval(inputs ...any) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out, err := execCatch(s.evalExec, inputs)
	if err != nil {
		return Result{}, err
	}
	r := s.result(out)
	r.OptimizerStep = s.optimizerStepLocked()
	return r, nil
}

// MicroStep returns the position inside the current accumulation cycle (0 at a boundary).
// Checkpoints taken at a boundary resume exactly; the Loop only checkpoints there.
func (s *Stepper) MicroStep() int { return s.micro }

// OptimizerStep returns the number of optimizer updates made so far (read from the context).
func (s *Stepper) OptimizerStep() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.optimizerStepLocked()
}

func (s *Stepper) optimizerStepLocked() int64 {
	return int64(s.opt.Step(s.ctx))
}

// TrainedVariables returns the variables the Stepper updates (known after the first step).
func (s *Stepper) TrainedVariables() []*context.Variable { return slices.Clone(s.trained) }

func (s *Stepper) result(out []*tensors.Tensor) Result {
	r := Result{Loss: scalar(out[0]), Metrics: make(map[string]float64, len(s.metricNames))}
	for i, name := range s.metricNames {
		r.Metrics[name] = scalar(out[1+i])
	}
	return r
}

// lossAndMetrics builds the user's loss and returns [loss, metrics...] in sorted name order.
func (s *Stepper) lossAndMetrics(ctx *context.Context, inputs []*graph.Node) []*graph.Node {
	loss, metrics := s.cfg.Loss(ctx.InAbsPath(s.cfg.Scope).Reuse(), inputs)
	if loss.Shape().Size() != 1 {
		panic(fmt.Errorf("trainer: loss must be a scalar, got shape %s", loss.Shape()))
	}
	names := make([]string, 0, len(metrics))
	for k := range metrics {
		names = append(names, k)
	}
	sort.Strings(names)
	if s.metricNames == nil {
		s.metricNames = names
	} else if !slices.Equal(s.metricNames, names) {
		panic(fmt.Errorf("trainer: LossFn metrics changed between graphs: %v vs %v", s.metricNames, names))
	}
	outs := []*graph.Node{toF32Scalar(loss)}
	for _, k := range names {
		m := metrics[k]
		if m.Shape().Size() != 1 {
			panic(fmt.Errorf("trainer: metric %q must be a scalar, got shape %s", k, m.Shape()))
		}
		outs = append(outs, toF32Scalar(graph.StopGradient(m)))
	}
	return outs
}

// loss32 is the dtype of losses, metrics and optimizer scalars.
const loss32 = dtypes.Float32

func toF32Scalar(x *graph.Node) *graph.Node {
	x = graph.Reshape(x)
	if x.DType() != loss32 {
		x = graph.ConvertDType(x, loss32)
	}
	return x
}

// trainable returns the variables used by graph g that the Stepper updates, in a stable order.
func (s *Stepper) trainable(g *graph.Graph) []*context.Variable {
	prefix := s.cfg.Scope
	vars := optim.TrainableVariables(s.ctx, g, prefix, s.cfg.Frozen...)
	if len(vars) == 0 {
		panic(fmt.Errorf("trainer: the loss uses no trainable variable under scope %q", prefix))
	}
	s.trained = vars
	return vars
}

// fusedGraph: inputs[0] = learning rate; outputs: grad norm, optimizer step, loss, metrics...
func (s *Stepper) fusedGraph(ctx *context.Context, inputs []*graph.Node) []*graph.Node {
	lr, batch := inputs[0], inputs[1:]
	g := lr.Graph()
	ctx.SetTraining(g, true)
	outs := s.lossAndMetrics(ctx, batch)
	norm, step := s.opt.Update(ctx, lr, outs[0], s.trainable(g))
	return append([]*graph.Node{norm, step}, outs...)
}

// accumulateGraph adds grad/Accumulation to per-variable accumulators.
func (s *Stepper) accumulateGraph(ctx *context.Context, batch []*graph.Node) []*graph.Node {
	ctx.SetTraining(batch[0].Graph(), true)
	outs := s.lossAndMetrics(ctx, batch)
	vars := s.trainable(outs[0].Graph())
	s.opt.Accumulate(ctx, vars, optim.Gradients(outs[0], vars))
	return outs
}

// applyGraph runs the clipped AdamW update from the accumulators and zeroes them.
func (s *Stepper) applyGraph(ctx *context.Context, lr *graph.Node) []*graph.Node {
	g := lr.Graph()
	if s.trained == nil {
		panic(fmt.Errorf("trainer: apply before any accumulation step"))
	}
	for _, v := range s.trained {
		v.ValueGraph(g) // parameters of this graph
	}
	s.partition() // ZeRO-1: only this rank's variables are updated
	norm, step := s.opt.ApplyAccumulatedOwned(ctx, lr, s.trained, s.owned)
	return []*graph.Node{norm, step}
}

func (s *Stepper) evalGraph(ctx *context.Context, batch []*graph.Node) []*graph.Node {
	return s.lossAndMetrics(ctx, batch)
}

// execCatch runs an Exec, turning GoMLX panics into errors that say "trainer:" once (this
// package's own, raised while building a graph, already do).
func execCatch(e *context.Exec, args []any) (out []*tensors.Tensor, err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok && strings.HasPrefix(e.Error(), "trainer: ") {
				err = e // raised by this package while building a graph
			} else {
				err = fmt.Errorf("trainer: %v", r)
			}
		}
	}()
	out, err = e.Exec(args...)
	if err != nil && !strings.HasPrefix(err.Error(), "trainer: ") {
		err = fmt.Errorf("trainer: %w", err)
	}
	return out, err
}

func scalar(t *tensors.Tensor) float64 {
	switch v := t.Value().(type) {
	case float32:
		return float64(v)
	case float64:
		return v
	case int32:
		return float64(v)
	case int64:
		return float64(v)
	}
	return math.NaN()
}
