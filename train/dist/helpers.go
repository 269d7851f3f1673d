package dist

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
)

// Join is what a command does first when it may run as one rank of several:
// it reads the launcher's environment (FromEnv), gives the process its own GPU
// (PinGPU, before any GPU library loads) and meets the other ranks (Connect).
// Without a launcher it returns Self.
func Join(ctx context.Context, opts Options) (Communicator, Env, error) {
	env, err := FromEnv(nil)
	if err != nil {
		return nil, env, err
	}
	if _, err := PinGPU(env); err != nil {
		return nil, env, err
	}
	comm, err := Connect(ctx, env, opts)
	if err != nil {
		return nil, env, fmt.Errorf("%s: %w", env, err)
	}
	if opts.Log != nil && env.IsDistributed() {
		fmt.Fprintf(opts.Log, "dist: %s\n", env)
	}
	return comm, env, nil
}

// OnRank0 runs fn on rank 0 only (preparing an output directory, say) and
// returns its error on every rank, so that all stop together with rank 0's
// message. fn may be nil.
func OnRank0(ctx context.Context, comm Communicator, fn func() error) error {
	var msg []byte
	if comm.Rank() == 0 && fn != nil {
		if err := fn(); err != nil {
			if comm.Size() < 2 {
				return err
			}
			msg = []byte(err.Error())
		}
	}
	if comm.Size() < 2 {
		return nil
	}
	all, err := comm.AllGather(ctx, msg)
	if err != nil {
		return fmt.Errorf("waiting for rank 0: %w", err)
	}
	if len(all[0]) > 0 {
		return fmt.Errorf("rank 0: %s", all[0])
	}
	return nil
}

// AllReduceSlices reduces several float32 slices (the gradients of a model's
// tensors, say) with one collective: they are packed into one buffer, reduced,
// and written back in place. It is the seam every data-parallel update goes
// through, whatever engine computed the gradients (GoMLX graphs, the native
// engine), so that they all average the same way.
func AllReduceSlices(ctx context.Context, comm Communicator, op Op, slices ...[]float32) error {
	if comm.Size() < 2 {
		return nil
	}
	n := 0
	for _, s := range slices {
		n += len(s)
	}
	flat := make([]float32, 0, n)
	for _, s := range slices {
		flat = append(flat, s...)
	}
	if err := comm.AllReduce(ctx, flat, op); err != nil {
		return err
	}
	for _, s := range slices {
		copy(s, flat[:len(s)])
		flat = flat[len(s):]
	}
	return nil
}

// AllGatherFloat64 returns every rank's values, indexed by rank, exactly (the
// bits travel, no float32 rounding): for statistics every rank must compute
// identically in float64, such as the episode-cost means of the λ update.
func AllGatherFloat64(ctx context.Context, comm Communicator, data []float64) ([][]float64, error) {
	if comm.Size() < 2 {
		return [][]float64{append([]float64(nil), data...)}, nil
	}
	b := make([]byte, 8*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(v))
	}
	all, err := comm.AllGather(ctx, b)
	if err != nil {
		return nil, err
	}
	out := make([][]float64, len(all))
	for r, b := range all {
		if len(b)%8 != 0 {
			return nil, fmt.Errorf("dist: rank %d sent %d bytes, not float64s", r, len(b))
		}
		out[r] = make([]float64, len(b)/8)
		for i := range out[r] {
			out[r][i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
		}
	}
	return out, nil
}
