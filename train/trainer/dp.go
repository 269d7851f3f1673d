package trainer

import (
	stdctx "context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"time"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/train/dist"
)

// Data parallelism (Config.Comm with more than one rank).
//
// GoMLX compiles loss, gradients and the AdamW update into one graph, so with
// several ranks the gradients must leave the graph between the two halves: the
// Stepper then always uses its accumulation graphs (even when Accumulation is
// 1), the accumulators — the mean gradient of this rank's micro-batches — are
// averaged across ranks with one AllReduce(mean), and the update graph applies
// the average. Clipping sees the global gradient, so every rank applies the
// same update to the same weights and they stay identical bit for bit. With
// per-rank means of equal-sized shards the result is the gradient of the
// global batch's mean loss (for losses normalised per rank, e.g. per token, it
// is the mean of the ranks' losses, as in PyTorch DDP and DeepSpeed).

// multiRank reports whether c trains across more than one rank.
func (c *Config) multiRank() bool { return c.Comm != nil && c.Comm.Size() > 1 }

// dataParallel reports whether c averages gradients between its two graphs: across more than
// one rank, or through an explicit Reducer (NCCL with one rank, say).
func (c *Config) dataParallel() bool { return c.multiRank() || c.Reducer != nil }

// reducer is c's gradient reducer (HostReducer over comm() unless Reducer is set).
func (c *Config) reducer() GradientReducer {
	if c.Reducer != nil {
		return c.Reducer
	}
	return HostReducer{Comm: c.comm()}
}

// comm is c's communicator (dist.Self for a single process).
func (c *Config) comm() dist.Communicator {
	if c.Comm == nil {
		return dist.Self{}
	}
	return c.Comm
}

// Comm returns the Stepper's communicator (dist.Self for a single process).
func (s *Stepper) Comm() dist.Communicator { return s.cfg.comm() }

// CollectiveTime returns the time spent in gradient all-reduces so far.
func (s *Stepper) CollectiveTime() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commTime
}

// allReduceGradients averages the gradient accumulators of the trained
// variables across ranks through the Config's reducer (a no-op for a single
// process without one).
func (s *Stepper) allReduceGradients() error {
	if !s.cfg.dataParallel() {
		return nil
	}
	start := time.Now()
	defer func() { s.commTime += time.Since(start) }()
	accs := make([]*context.Variable, len(s.trained))
	grads := make([]*tensors.Tensor, len(s.trained))
	for i, v := range s.trained {
		scope, name := s.opt.StatePath(v, "_accum")
		if accs[i] = s.ctx.GetVariableByScopeAndName(scope, name); accs[i] == nil {
			return fmt.Errorf("trainer: no gradient accumulator for %s", v.ScopeAndName())
		}
		var err error
		if grads[i], err = accs[i].Value(); err != nil {
			return fmt.Errorf("trainer: gradient of %s: %w", v.ScopeAndName(), err)
		}
	}
	red := s.cfg.reducer()
	out, err := red.Mean(grads)
	if err == nil && len(out) != len(grads) {
		err = fmt.Errorf("%d results for %d gradients", len(out), len(grads))
	}
	if err != nil {
		return fmt.Errorf("trainer: averaging gradients across ranks (%s): %w", red.Name(), err)
	}
	for i, acc := range accs {
		if out[i] == grads[i] { // reduced in place
			continue
		}
		if err := acc.SetValue(out[i]); err != nil {
			return fmt.Errorf("trainer: gradient of %s: %w", s.trained[i].ScopeAndName(), err)
		}
	}
	return nil
}

// stateDigest hashes the bytes of every variable of ctx under the scope, the
// optimizer scope and the State scopes of cfg (names included), to check that ranks start in step;
// with ZeRO-1 the moments, which differ between ranks, are left out.
func stateDigest(ctx *context.Context, cfg Config) (uint64, error) {
	type kv struct {
		name string
		t    *tensors.Tensor
	}
	var vars []kv
	for v := range ctx.IterVariables() {
		path := v.ScopeAndName()
		if !inScope(v.Scope(), cfg.Scope) && !inScope(v.Scope(), cfg.OptimScope) &&
			!slices.ContainsFunc(cfg.State, func(s string) bool { return inScope(v.Scope(), s) }) {
			continue
		}
		if cfg.zero1() && isMoment(v, cfg.OptimScope) {
			continue // each rank holds its own share
		}
		t, err := v.Value()
		if err != nil {
			return 0, fmt.Errorf("trainer: variable %s: %w", path, err)
		}
		vars = append(vars, kv{path, t})
	}
	sort.Slice(vars, func(i, j int) bool { return vars[i].name < vars[j].name })
	h := fnv.New64a()
	for _, v := range vars {
		h.Write([]byte(v.name))
		if err := v.t.ConstBytes(func(b []byte) { h.Write(b) }); err != nil {
			return 0, fmt.Errorf("trainer: variable %s: %w", v.name, err)
		}
	}
	return h.Sum64(), nil
}

func inScope(scope, prefix string) bool {
	return scope == prefix || len(scope) > len(prefix) && scope[:len(prefix)] == prefix && scope[len(prefix)] == '/'
}

// checkInSync fails unless every rank is at the same step with the same weights
// and optimizer state (same --model, seed and checkpoint).
func (l *Loop) checkInSync(step int) error {
	comm := l.cfg.Stepper.Comm()
	if comm.Size() < 2 {
		return nil
	}
	if err := l.cfg.Stepper.SyncContext(); err != nil {
		return err
	}
	d, err := stateDigest(l.cfg.Stepper.Context(), l.cfg.Stepper.Config())
	if err != nil {
		return err
	}
	var mine [16]byte
	binary.LittleEndian.PutUint64(mine[:], uint64(step))
	binary.LittleEndian.PutUint64(mine[8:], d)
	all, err := comm.AllGather(stdctx.Background(), mine[:])
	if err != nil {
		return fmt.Errorf("trainer: checking that ranks start in step: %w", err)
	}
	for r, b := range all {
		if len(b) != 16 {
			return fmt.Errorf("trainer: rank %d sent a malformed start record", r)
		}
		st, dg := binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
		if int(st) != step {
			return fmt.Errorf("trainer: rank %d starts at step %d, rank %d at step %d (different checkpoints? every rank must see the same --out)", r, st, comm.Rank(), step)
		}
		if dg != d {
			return fmt.Errorf("trainer: rank %d's weights, optimizer or other training state differ from rank %d's at step %d (different --model, --seed or checkpoint?)", r, comm.Rank(), step)
		}
	}
	return nil
}

// reduceStep averages one step's loss and metrics over the ranks and sums its
// tokens, so rank 0 logs the global batch's values, and reports whether any
// rank was interrupted, so that all stop after the same step (a no-op for one process).
func (l *Loop) reduceStep(loss float64, metrics map[string]float64, tokens int, cancelled bool) (float64, int, bool, error) {
	comm := l.cfg.Stepper.Comm()
	if comm.Size() < 2 {
		return loss, tokens, cancelled, nil
	}
	names := make([]string, 0, len(metrics))
	for k := range metrics {
		names = append(names, k)
	}
	sort.Strings(names)
	n := float32(comm.Size())
	stop := float32(0)
	if cancelled {
		stop = 1
	}
	buf := []float32{float32(loss), float32(tokens) / n, stop}
	for _, k := range names {
		buf = append(buf, float32(metrics[k]))
	}
	if err := comm.AllReduce(stdctx.Background(), buf, dist.Mean); err != nil {
		return 0, 0, false, fmt.Errorf("trainer: reducing metrics across ranks: %w", err)
	}
	for i, k := range names {
		metrics[k] = float64(buf[3+i])
	}
	return float64(buf[0]), int(float64(buf[1])*float64(n) + 0.5), buf[2] > 0, nil
}

// primary reports whether this rank writes metrics, checkpoints, plots and the model.
func (l *Loop) primary() bool { return l.cfg.Stepper.Comm().Rank() == 0 }
