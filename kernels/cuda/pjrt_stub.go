//go:build !(cgo && linux && !noxla)

package cuda

import (
	"fmt"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/native"
)

// PJRTCompiled reports whether this build reaches PJRT buffers (cgo, linux, XLA).
const PJRTCompiled = false

// DevicePointer returns the GPU address of t's buffer on an XLA CUDA backend.
// This build has no XLA (noxla tag or no cgo): it returns an error wrapping native.ErrNoCUDA.
func DevicePointer(backend backends.Backend, t *tensors.Tensor) (Ptr, error) {
	return 0, fmt.Errorf("kernels/cuda: DevicePointer: built without XLA/cgo: %w", native.ErrNoCUDA)
}

// ViewTensor wraps device memory as a GoMLX tensor on an XLA CUDA backend.
// This build has no XLA (noxla tag or no cgo): it returns an error wrapping native.ErrNoCUDA.
func ViewTensor(backend backends.Backend, p Ptr, dtype dtypes.DType, dims ...int) (*tensors.Tensor, error) {
	return nil, fmt.Errorf("kernels/cuda: ViewTensor: built without XLA/cgo: %w", native.ErrNoCUDA)
}
