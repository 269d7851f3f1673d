package trainer

import (
	stdctx "context"
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/train/dist"
)

// GradientReducer averages gradients across the ranks of a data-parallel run:
// the seam between the Stepper (its accumulators, whatever computed them: its
// own graphs or model.Layerwise.Backward) and the transport. HostReducer copies
// them through the host and a dist.Communicator; train/devreduce all-reduces the
// device buffers with NCCL.
type GradientReducer interface {
	// Mean replaces every tensor of grads by its element-wise mean over the ranks
	// (the same bits on every rank) and returns the tensors holding the result:
	// grads[i] itself when it was reduced in place, or a new tensor the caller
	// then owns. Every rank calls it with the same shapes in the same order.
	Mean(grads []*tensors.Tensor) ([]*tensors.Tensor, error)
	// Name says which transport it is ("tcp", "nccl"), for logs.
	Name() string
}

// OwnedBroadcaster is a GradientReducer that also carries ZeRO-1's weight
// gather on its transport: BroadcastOwned replaces every tensor ts[i], on the
// ranks other than owners[i], by the owner's, in place. Without it the Stepper
// gathers through the host (dist.AllGatherOwned).
type OwnedBroadcaster interface {
	BroadcastOwned(ts []*tensors.Tensor, owners []int) error
}

// HostReducer averages float32 gradients through the host: each tensor is
// copied out, all of them are reduced with one dist.AllReduceSlices over Comm,
// and new tensors are returned. It is the Stepper's reducer unless
// Config.Reducer names another.
type HostReducer struct{ Comm dist.Communicator }

// Name returns "tcp".
func (HostReducer) Name() string { return "tcp" }

// Mean implements GradientReducer.
func (h HostReducer) Mean(grads []*tensors.Tensor) ([]*tensors.Tensor, error) {
	flat := make([][]float32, len(grads))
	for i, t := range grads {
		if t.DType() != dtypes.Float32 {
			return nil, fmt.Errorf("gradient %d (%s): the host reducer averages float32 only", i, t.Shape())
		}
		var err error
		if flat[i], err = tensors.CopyFlatData[float32](t); err != nil {
			return nil, fmt.Errorf("gradient %d (%s): %w", i, t.Shape(), err)
		}
	}
	if err := dist.AllReduceSlices(stdctx.Background(), h.Comm, dist.Mean, flat...); err != nil {
		return nil, err
	}
	out := make([]*tensors.Tensor, len(grads))
	for i, t := range grads {
		out[i] = tensors.FromFlatDataAndDimensions(flat[i], t.Shape().Dimensions...)
	}
	return out, nil
}
