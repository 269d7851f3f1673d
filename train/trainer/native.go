package trainer

import (
	stdctx "context"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// NativeLoss computes a batch's loss and named scalar metrics on the native
// engine, from the model and the batch inputs (the host values Step gets, in
// the order a LossFn gets them). With grads non-nil (a training step) it adds
// the loss's gradients to grads through m's backward, and makes the loss's
// training-only updates (e.g. tracked statistics); with grads nil it evaluates.
type NativeLoss func(m *llama.Model, grads llama.Grads, inputs []any) (loss float64, metrics map[string]float64, err error)

// NativeConfig configures a NativeStepper: Config as for a Stepper (Loss unused), plus the model.
type NativeConfig struct {
	Config
	// Model is the architecture of the model under Scope.
	Model *model.Config
	// Loss is the loss on the native engine.
	Loss NativeLoss
	// Uses reports whether the loss reads a parameter (by HF name); nil: every one.
	// Parameters it does not read are not trained, as the graph path trains only
	// the variables its loss graph uses (e.g. the LM head of a score model's loss).
	Uses func(name string) bool
}

// NativeStepper is the Stepper on the native C engine (native/llama): the same
// micro-steps, accumulation, clipping, weight-decay rule, data-parallel gradient
// average and AdamW update as the GoMLX graph, with the live weights and AdamW
// state in host memory. SyncContext writes them into the context variables the
// Stepper would use (same names), LoadContext reads them back.
type NativeStepper struct {
	ctx   *context.Context
	cfg   Config
	loss  NativeLoss
	m     *llama.Model
	vars  llama.Vars // every parameter's variable
	train llama.Vars // the trained parameters' variables
	names []string   // the trained parameters, sorted
	opt   *llama.AdamW
	grads llama.Grads

	mu       sync.Mutex
	micro    int
	commTime time.Duration
	owners   []int // ZeRO-1: the owning rank of each of names
}

// NewNativeStepper returns a NativeStepper for cfg on the model at cfg.Scope of
// ctx (which must hold its weights, e.g. through model.SetWeights), starting
// from any AdamW state ctx already holds.
func NewNativeStepper(ctx *context.Context, cfg NativeConfig) (*NativeStepper, error) {
	if cfg.Loss == nil || cfg.Model == nil {
		return nil, fmt.Errorf("trainer: NativeConfig needs Loss and Model")
	}
	c, _, err := cfg.Config.withDefaults()
	if err != nil {
		return nil, err
	}
	m, vars, err := llama.FromContext(ctx.InAbsPath(c.Scope), cfg.Model)
	if err != nil {
		return nil, fmt.Errorf("trainer: %w", err)
	}
	s := &NativeStepper{ctx: ctx, cfg: c, loss: cfg.Loss, m: m, vars: vars, train: llama.Vars{}}
	for name, v := range vars {
		if v.Trainable && optim.InScope(v.Scope(), c.Scope) && !optim.InAnyScope(v.Scope(), c.Frozen) &&
			(cfg.Uses == nil || cfg.Uses(name)) {
			s.train[name] = v
			s.names = append(s.names, name)
		}
	}
	if len(s.names) == 0 {
		return nil, fmt.Errorf("trainer: the loss uses no trainable variable under scope %q", c.Scope)
	}
	sort.Strings(s.names)
	m.SetTrainable(func(name string) bool { return s.train[name] != nil })
	s.grads = m.NewGrads()
	noDecay := c.NoDecay
	if s.opt, err = llama.NewAdamW(optim.AdamWConfig{Beta1: c.Beta1, Beta2: c.Beta2, Epsilon: c.Epsilon,
		WeightDecay: c.WeightDecay, ClipNorm: c.ClipNorm, Accumulation: c.Accumulation, StateScope: c.OptimScope,
		NoDecay: func(name string) bool { return noDecay(vars[name].ScopeAndName()) }}); err != nil {
		return nil, fmt.Errorf("trainer: %w", err)
	}
	if c.zero1() {
		s.owners = ShardNative(s.opt, s.names, s.trainedVars(), c.Comm)
	}
	if err := s.opt.LoadState(ctx, s.train); err != nil {
		return nil, fmt.Errorf("trainer: %w", err)
	}
	return s, nil
}

// Config returns the configuration with defaults filled in.
func (s *NativeStepper) Config() Config { return s.cfg }

// Context returns the context that SyncContext writes and checkpoints store.
func (s *NativeStepper) Context() *context.Context { return s.ctx }

// Model returns the live native model.
func (s *NativeStepper) Model() *llama.Model { return s.m }

// Comm returns the communicator (dist.Self for a single process).
func (s *NativeStepper) Comm() dist.Communicator { return s.cfg.comm() }

// CollectiveTime returns the time spent in gradient all-reduces so far.
func (s *NativeStepper) CollectiveTime() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commTime
}

// Step runs one micro-batch at learning rate lr: forward and backward and, at
// the end of each accumulation cycle, the gradient average across ranks and
// the clipped AdamW update. A non-finite gradient norm skips the update and is
// reported in Result.GradNorm (the Loop's guard stops there).
func (s *NativeStepper) Step(lr float64, inputs ...any) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	loss, metrics, err := s.loss(s.m, s.grads, inputs)
	if err != nil {
		return Result{}, fmt.Errorf("trainer: %w", err)
	}
	r := Result{Loss: loss, Metrics: metrics, OptimizerStep: s.opt.Step}
	s.micro++
	if s.micro < s.cfg.Accumulation {
		return r, nil
	}
	s.micro = 0
	if err := s.allReduce(); err != nil {
		return Result{}, err
	}
	norm, err := s.opt.Apply(s.m, s.grads, lr)
	if err != nil {
		if math.IsNaN(norm) || math.IsInf(norm, 0) {
			r.Applied, r.GradNorm = true, norm
			return r, nil
		}
		return Result{}, fmt.Errorf("trainer: %w", err)
	}
	if err := s.gatherWeights(); err != nil {
		return Result{}, err
	}
	r.Applied, r.GradNorm, r.OptimizerStep = true, norm, s.opt.Step
	return r, nil
}

// gatherWeights hands every rank the owners' updated parameters (ZeRO-1; a no-op otherwise).
func (s *NativeStepper) gatherWeights() error {
	if s.owners == nil {
		return nil
	}
	start := time.Now()
	defer func() { s.commTime += time.Since(start) }()
	return GatherNative(s.cfg.Comm, s.m, s.names, s.owners)
}

// trainedVars are the trained parameters' variables, in names order.
func (s *NativeStepper) trainedVars() []*context.Variable {
	vs := make([]*context.Variable, len(s.names))
	for i, n := range s.names {
		vs[i] = s.train[n]
	}
	return vs
}

// RestorePartition implements Steps; the NativeStepper partitioned its parameters when it
// was made, and LoadContext checks the restored moments against that.
func (s *NativeStepper) RestorePartition(f *safetensors.File) (map[string]bool, error) {
	owned, err := s.cfg.restoredPartition(f)
	if err != nil || owned == nil {
		return nil, err
	}
	return foreign(owned, s.cfg.Comm.Rank()), nil
}

// ShardedState implements Steps (nil without ZeRO-1).
func (s *NativeStepper) ShardedState() []checkpoint.Owned {
	if s.owners == nil {
		return nil
	}
	return OwnedMoments(s.cfg.OptimScope, s.trainedVars(), s.owners)
}

// OptimizerStateElements counts the AdamW moment elements this rank holds.
func (s *NativeStepper) OptimizerStateElements() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opt.StateElements()
}

// Eval computes the loss and metrics of a batch without gradients or updates.
func (s *NativeStepper) Eval(inputs ...any) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	loss, metrics, err := s.loss(s.m, nil, inputs)
	if err != nil {
		return Result{}, fmt.Errorf("trainer: %w", err)
	}
	return Result{Loss: loss, Metrics: metrics, OptimizerStep: s.opt.Step}, nil
}

// SyncContext writes the trained weights, the AdamW moments and the update
// count into the context, under the names the GoMLX Stepper uses.
func (s *NativeStepper) SyncContext() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.m.WriteContext(s.vars, s.names); err != nil {
		return fmt.Errorf("trainer: %w", err)
	}
	if err := s.opt.SaveState(s.ctx, s.train); err != nil {
		return fmt.Errorf("trainer: %w", err)
	}
	return nil
}

// LoadContext reads the weights and AdamW state back from the context (after a
// checkpoint restored it) and starts a new accumulation cycle.
func (s *NativeStepper) LoadContext() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.m.ReadContext(s.vars); err != nil {
		return fmt.Errorf("trainer: %w", err)
	}
	if err := s.opt.LoadState(s.ctx, s.train); err != nil {
		return fmt.Errorf("trainer: %w", err)
	}
	if s.owners != nil { // a restored state holds this rank's share only (RestorePartition)
		if err := CheckMoments(s.ctx, s.cfg.OptimScope, s.trainedVars(), s.owners, s.cfg.Comm.Rank()); err != nil {
			return err
		}
	}
	s.grads.Zero()
	s.micro = 0
	return nil
}

// allReduce averages the accumulated gradients across ranks (a no-op for one process).
func (s *NativeStepper) allReduce() error {
	if !s.cfg.multiRank() {
		return nil
	}
	start := time.Now()
	defer func() { s.commTime += time.Since(start) }()
	grads := make([][]float32, len(s.names))
	for i, n := range s.names {
		grads[i] = s.grads[n]
	}
	if err := dist.AllReduceSlices(stdctx.Background(), s.cfg.Comm, dist.Mean, grads...); err != nil {
		return fmt.Errorf("trainer: averaging gradients across ranks: %w", err)
	}
	return nil
}
