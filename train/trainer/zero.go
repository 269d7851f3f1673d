package trainer

import (
	stdctx "context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// ZeRO-1 (Config.ZeroStage 1 with more than one rank): optimiser-state
// sharding as PyTorch's ZeroRedundancyOptimizer. The trained variables are
// partitioned among the ranks (dist.Owners: largest first, ties by name). The
// gradients are still all-reduced, so every rank computes the same global norm
// and clip as without sharding; each rank then runs AdamW, and keeps the two
// moments, only for the variables it owns, and one AllGather hands every rank
// the owners' updated weights (bit for bit). Checkpoints hold the full state,
// as a single process writes it: rank 0 streams the moments other ranks own
// from them while it writes (checkpoint.SaveSharded), so they resume at any
// world size and stage; a resuming rank loads only the moments it owns
// (RestorePartition), tensor by tensor from the memory-mapped file.

// ZeroStages are the supported values of Config.ZeroStage.
const ZeroStages = "0 (replicated optimiser state) or 1 (optimiser state sharded across ranks)"

// ZeroStageFlag is the flag and config key of every data-parallel command that sets
// Config.ZeroStage; ZeroStageHelp is its usage text, the same in every command.
const (
	ZeroStageFlag = "zero-stage"
	ZeroStageHelp = "optimiser-state sharding across the ranks of a data-parallel run: 0 (every rank holds all AdamW moments) or 1 (ZeRO-1: each rank holds and updates its share; same trajectory and checkpoints)"
)

// CheckZeroStage refuses a ZeRO stage other than ZeroStages, naming the flag.
func CheckZeroStage(stage int) error {
	if stage != 0 && stage != 1 {
		return fmt.Errorf("--%s %d: want %s", ZeroStageFlag, stage, ZeroStages)
	}
	return nil
}

// zero1 reports whether c shards the optimiser state across ranks.
func (c *Config) zero1() bool { return c.ZeroStage == 1 && c.multiRank() }

// momentPaths are the full context paths of the AdamW moments of v (train/optim's StatePath).
func momentPaths(optimScope string, v *context.Variable) [2]string {
	base := optimScope + v.Scope() + context.ScopeSeparator + v.Name()
	return [2]string{base + "_m1", base + "_m2"}
}

// isMoment reports whether v is an AdamW moment under optimScope.
func isMoment(v *context.Variable, optimScope string) bool {
	return inScope(v.Scope(), optimScope) && (strings.HasSuffix(v.Name(), "_m1") || strings.HasSuffix(v.Name(), "_m2"))
}

// OwnedMoments lists the AdamW moments (under optimScope) of vars with their owners.
func OwnedMoments(optimScope string, vars []*context.Variable, owners []int) []checkpoint.Owned {
	out := make([]checkpoint.Owned, 0, 2*len(vars))
	for i, v := range vars {
		for _, p := range momentPaths(optimScope, v) {
			out = append(out, checkpoint.Owned{Name: p, Shape: append([]int(nil), v.Shape().Dimensions...), Owner: owners[i]})
		}
	}
	return out
}

// PartitionVariables is ZeRO-1's partition of trained variables among ranks:
// dist.Owners over their paths (Variable.ScopeAndName) and sizes. Every engine
// (Stepper, NativeStepper, the native PPO nets) partitions by it, so the
// moments a checkpoint holds tell a resuming rank which are its own before any
// step (RestorePartition).
func PartitionVariables(vars []*context.Variable, ranks int) []int {
	names := make([]string, len(vars))
	sizes := make([]int64, len(vars))
	for i, v := range vars {
		names[i], sizes[i] = v.ScopeAndName(), int64(v.Shape().Size())
	}
	return dist.Owners(names, sizes, ranks)
}

// ShardNative is ZeRO-1 on the native engine (the NativeStepper and PPO's native updates): it
// partitions the trained parameters names (vars their variables, in the same order) among the
// ranks of comm by PartitionVariables, makes opt update, keep and load moments of this rank's
// share only (llama.AdamW.Owns), and returns the owners.
func ShardNative(opt *llama.AdamW, names []string, vars []*context.Variable, comm dist.Communicator) []int {
	owners := PartitionVariables(vars, comm.Size())
	mine := make(map[string]bool, len(names))
	for i, n := range names {
		mine[n] = owners[i] == comm.Rank()
	}
	opt.Owns = func(name string) bool { return mine[name] }
	return owners
}

// GatherNative hands every rank the owners' updated parameters names of m after a ZeRO-1
// update (ShardNative's owners).
func GatherNative(comm dist.Communicator, m *llama.Model, names []string, owners []int) error {
	params := make([][]float32, len(names))
	for i, n := range names {
		params[i] = m.Params[n]
	}
	if err := dist.AllGatherOwnedFloat32(stdctx.Background(), comm, owners, params); err != nil {
		return fmt.Errorf("trainer: gathering the owners' weights: %w", err)
	}
	return nil
}

// restoredPartition is ZeRO-1's partition as a checkpoint's training state f
// holds it: the AdamW moments of c's trained variables with their owners (nil
// without ZeRO-1). The partition is PartitionVariables' over the variables
// whose moments f holds, which are the trained ones (the moments of all of
// them, in the one checkpoint format); CheckMoments verifies that against the
// engine's own partition once it is known.
func (c Config) restoredPartition(f *safetensors.File) ([]checkpoint.Owned, error) {
	if !c.zero1() || f == nil {
		return nil, nil
	}
	prefix := c.OptimScope + c.Scope + context.ScopeSeparator
	var names []string
	var sizes []int64
	var shapes [][]int
	for _, n := range f.Names() {
		if !strings.HasPrefix(n, prefix) || !strings.HasSuffix(n, "_m1") {
			continue
		}
		_, shape, err := f.Info(n)
		if err != nil {
			return nil, fmt.Errorf("trainer: %w", err)
		}
		size := int64(1)
		for _, d := range shape {
			size *= int64(d)
		}
		names = append(names, strings.TrimSuffix(strings.TrimPrefix(n, c.OptimScope), "_m1"))
		sizes = append(sizes, size)
		shapes = append(shapes, shape)
	}
	owners := dist.Owners(names, sizes, c.Comm.Size())
	out := make([]checkpoint.Owned, 0, 2*len(names))
	for i, n := range names {
		for _, suffix := range []string{"_m1", "_m2"} {
			out = append(out, checkpoint.Owned{Name: c.OptimScope + n + suffix, Shape: slices.Clone(shapes[i]), Owner: owners[i]})
		}
	}
	return out, nil
}

// foreign lists the moments of owned that other ranks than rank own.
func foreign(owned []checkpoint.Owned, rank int) map[string]bool {
	out := map[string]bool{}
	for _, o := range owned {
		if o.Owner != rank {
			out[o.Name] = true
		}
	}
	return out
}

// RestorePartition implements Steps: with ZeRO-1 it returns the moments of the
// checkpoint's training state f that other ranks own, and keeps the partition,
// so that ShardedState lists every moment (and a checkpoint written before the
// first update, which computes the partition from the graph, holds them all).
func (s *Stepper) RestorePartition(f *safetensors.File) (map[string]bool, error) {
	owned, err := s.cfg.restoredPartition(f)
	if err != nil || owned == nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restored = owned
	return foreign(owned, s.cfg.Comm.Rank()), nil
}

// CheckMoments verifies that ctx holds the AdamW moments (under optimScope) of
// the variables of vars this rank owns and none of the others': all of them
// (a restored or running state) or none (before the first update).
func CheckMoments(ctx *context.Context, optimScope string, vars []*context.Variable, owners []int, rank int) error {
	var have, want int
	var missing string
	for i, v := range vars {
		for _, p := range momentPaths(optimScope, v) {
			scope, name := p[:strings.LastIndex(p, context.ScopeSeparator)], p[strings.LastIndex(p, context.ScopeSeparator)+1:]
			held := ctx.GetVariableByScopeAndName(scope, name) != nil
			if owners[i] != rank {
				if held {
					return fmt.Errorf("trainer: ZeRO-1: rank %d holds %s, owned by rank %d", rank, p, owners[i])
				}
				continue
			}
			want++
			if held {
				have++
			} else if missing == "" {
				missing = p
			}
		}
	}
	if have != 0 && have != want {
		return fmt.Errorf("trainer: ZeRO-1: rank %d lacks %s (holds %d of its %d moments: a checkpoint partitioned otherwise?)", rank, missing, have, want)
	}
	return nil
}

// OptimizerStateElements counts the AdamW moment elements ctx holds under optimScope.
func OptimizerStateElements(ctx *context.Context, optimScope string) int64 {
	var n int64
	for v := range ctx.IterVariables() {
		if isMoment(v, optimScope) {
			n += int64(v.Shape().Size())
		}
	}
	return n
}

// partition computes the owners of the trained variables (once they are known)
// and checks the moments ctx holds against them (CheckMoments).
func (s *Stepper) partition() {
	if s.owners != nil || !s.cfg.zero1() {
		return
	}
	s.owners = PartitionVariables(s.trained, s.cfg.Comm.Size())
	s.owned = make([]bool, len(s.owners))
	for i, o := range s.owners {
		s.owned[i] = o == s.cfg.Comm.Rank()
	}
	if err := CheckMoments(s.ctx, s.cfg.OptimScope, s.trained, s.owners, s.cfg.Comm.Rank()); err != nil {
		panic(err)
	}
}

// gatherWeights hands every rank the owners' updated weights (ZeRO-1; a no-op otherwise).
func (s *Stepper) gatherWeights() error {
	if !s.cfg.zero1() {
		return nil
	}
	start := time.Now()
	defer func() { s.commTime += time.Since(start) }()
	s.partition()
	if b, ok := s.cfg.Reducer.(OwnedBroadcaster); ok {
		ts := make([]*tensors.Tensor, len(s.trained))
		for i, v := range s.trained {
			var err error
			if ts[i], err = v.Value(); err != nil {
				return fmt.Errorf("trainer: %s: %w", v.ScopeAndName(), err)
			}
		}
		if err := b.BroadcastOwned(ts, s.owners); err != nil {
			return fmt.Errorf("trainer: gathering the owners' weights: %w", err)
		}
		return nil
	}
	// Through the host: each owned weight is read once into the message sent (a view of
	// the buffer on the pure-Go backend) and each received one written once into a new
	// device buffer (deviceTensor), with no host copy kept on the variable.
	sizes := make([]int, len(s.trained))
	for i, v := range s.trained {
		sizes[i] = int(v.Shape().Memory())
	}
	err := dist.AllGatherOwnedFunc(stdctx.Background(), s.cfg.Comm, s.owners, sizes,
		func(i int, dst []byte) error {
			v := s.trained[i]
			t, err := v.Value()
			if err == nil {
				local := t.IsLocal()
				err = t.ConstBytes(func(b []byte) { copy(dst, b) })
				if !local && t.IsOnAnyDevice() {
					t.FinalizeLocal() // a copy the read made (not on the pure-Go backend, which shares)
				}
			}
			if err != nil {
				return fmt.Errorf("trainer: %s: %w", v.ScopeAndName(), err)
			}
			return nil
		},
		func(i int, src []byte) error {
			v := s.trained[i]
			t, err := deviceTensor(s.backend, v.Shape(), src)
			if err == nil {
				err = v.SetValue(t)
			}
			if err != nil {
				return fmt.Errorf("trainer: %s: %w", v.ScopeAndName(), err)
			}
			return nil
		})
	if err != nil {
		return fmt.Errorf("trainer: gathering the owners' weights: %w", err)
	}
	return nil
}

// deviceTensor returns a tensor of shape on the backend's device 0 holding src: written once
// into a buffer shared with the backend where it has them (the pure-Go backend), else
// copied to the device with no host copy kept.
func deviceTensor(b backends.Backend, shape shapes.Shape, src []byte) (*tensors.Tensor, error) {
	if b.HasSharedBuffers() {
		buf, flat, err := b.NewSharedBuffer(0, shape)
		if err != nil {
			return nil, err
		}
		fv := reflect.ValueOf(flat)
		if fv.Len() > 0 {
			copy(unsafe.Slice((*byte)(fv.Index(0).Addr().UnsafePointer()), int(shape.Memory())), src)
		}
		return tensors.FromBuffer(b, buf)
	}
	t := tensors.FromShape(shape)
	if err := t.MutableBytes(func(dst []byte) { copy(dst, src) }); err != nil {
		return nil, err
	}
	if err := t.MaterializeOnDevice(b, false, 0); err != nil {
		return nil, err
	}
	t.FinalizeLocal()
	return t, nil
}

// ShardedState implements Steps: the moments of the trained variables and their owners
// (nil without ZeRO-1). Before the first update, which partitions the variables the graph
// trains, it is the partition a restored checkpoint held (RestorePartition), or nil when
// nothing was restored and no rank holds any moment.
func (s *Stepper) ShardedState() []checkpoint.Owned {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owners == nil {
		return slices.Clone(s.restored)
	}
	return OwnedMoments(s.cfg.OptimScope, s.trained, s.owners)
}

// OptimizerStateElements counts the AdamW moment elements this rank holds.
func (s *Stepper) OptimizerStateElements() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return OptimizerStateElements(s.ctx, s.cfg.OptimScope)
}
