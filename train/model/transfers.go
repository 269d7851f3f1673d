package model

import (
	"sync/atomic"

	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Transfers counts the bytes moved between host and device where host data becomes a program
// input (IDsUp for token ids, Up for everything else) and a program output is read back
// (Down). Model weights, loaded once, are not counted. A nil *Transfers counts nothing.
type Transfers struct {
	IDsUp, Up, Down atomic.Int64
}

// Total is every counted byte, both directions.
func (x *Transfers) Total() int64 { return x.IDsUp.Load() + x.Up.Load() + x.Down.Load() }

// upload returns host data as a program input of dims, counting its bytes (as token ids when ids).
func upload[T float32 | int32](x *Transfers, ids bool, data []T, dims ...int) *tensors.Tensor {
	if x != nil {
		if ids {
			x.IDsUp.Add(int64(4 * len(data)))
		} else {
			x.Up.Add(int64(4 * len(data)))
		}
	}
	return tensors.FromFlatDataAndDimensions(data, dims...)
}

// uploadScalar returns v as a scalar program input, counting its bytes.
func uploadScalar[T float32 | int32](x *Transfers, v T) *tensors.Tensor {
	if x != nil {
		x.Up.Add(4)
	}
	return tensors.FromScalar(v)
}

// download copies a program output to the host, counting its bytes.
func download[T float32 | int32](x *Transfers, t *tensors.Tensor) ([]T, error) {
	out, err := tensors.CopyFlatData[T](t)
	if err == nil && x != nil {
		x.Down.Add(int64(4 * len(out)))
	}
	return out, err
}
