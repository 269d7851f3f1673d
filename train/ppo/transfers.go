package ppo

import (
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/saferlhf/saferlhf/train/model"
)

// Transfers counts the bytes this package moves between host and device: the host data it turns
// into program inputs (IDsUp for token ids, Up for everything else) and the program outputs it
// reads back (Down). Model weights, loaded once, are not counted; nor is what runs inside
// trainer.Stepper (the learning rate, the steps' scalar metrics). model.Generator counts its
// own (GraphNets.genXfer). A nil *Transfers counts nothing.
type Transfers = model.Transfers

// upload returns host data as a tensor of dims for a program input, counting its bytes.
func upload[T float32 | int32](x *Transfers, data []T, dims ...int) *tensors.Tensor {
	if x != nil {
		n := int64(4 * len(data))
		if _, ids := any(data).([]int32); ids {
			x.IDsUp.Add(n)
		} else {
			x.Up.Add(n)
		}
	}
	return tensors.FromFlatDataAndDimensions(data, dims...)
}

// uploadScalar is upload of one float32.
func uploadScalar(x *Transfers, v float64) *tensors.Tensor {
	if x != nil {
		x.Up.Add(4)
	}
	return tensors.FromScalar(float32(v))
}

// download copies a program output to the host, counting its bytes.
func download[T float32 | int32](x *Transfers, t *tensors.Tensor) ([]T, error) {
	out, err := tensors.CopyFlatData[T](t)
	if err == nil && x != nil {
		x.Down.Add(int64(4 * len(out)))
	}
	return out, err
}
