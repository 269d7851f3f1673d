//go:build cgo && linux && !noxla

package cuda

import (
	"fmt"
	"unsafe"

	"github.com/gomlx/go-xla/pkg/pjrt"
	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/xla"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// PJRTCompiled reports whether this build reaches PJRT buffers (cgo, linux, XLA).
const PJRTCompiled = true

// DevicePointer returns the GPU address of t's buffer on an XLA CUDA backend
// (PJRT_Buffer_UnsafePointer), moving t to device 0 first if it is not there.
// The address stays valid while t is alive and its buffer is not donated to
// an execution; go-xla waits for an execution to finish before returning its
// outputs, so a kernel may read them at once. A kernel that writes into the
// buffer must be followed by Kernels.Sync before XLA reads it again.
func DevicePointer(backend backends.Backend, t *tensors.Tensor) (Ptr, error) {
	buf, err := t.Buffer(backend, 0)
	if err != nil {
		return 0, fmt.Errorf("kernels/cuda: DevicePointer of %s: %w", t.Shape(), err)
	}
	pb, ok := buf.(*pjrt.Buffer)
	if !ok {
		return 0, fmt.Errorf("kernels/cuda: DevicePointer: backend %q does not hold PJRT buffers (%T)", backend.Name(), buf)
	}
	p, err := pb.UnsafePointer()
	if err != nil {
		return 0, fmt.Errorf("kernels/cuda: DevicePointer of %s: %w", t.Shape(), err)
	}
	if p == nil {
		return 0, fmt.Errorf("kernels/cuda: DevicePointer of %s: PJRT returned a null pointer", t.Shape())
	}
	return Ptr(uintptr(p)), nil
}

// ViewTensor returns a GoMLX tensor on an XLA CUDA backend whose storage is
// the caller's device memory at p (PJRT_Client_CreateViewOfDeviceBuffer): no
// copy is made. The memory must hold the whole shape and stay allocated until
// the tensor is finalized; XLA never frees it. Graph executions may read the
// tensor (do not donate it).
func ViewTensor(backend backends.Backend, p Ptr, dtype dtypes.DType, dims ...int) (*tensors.Tensor, error) {
	if p == 0 {
		return nil, fmt.Errorf("kernels/cuda: ViewTensor: null device pointer")
	}
	// A one-element buffer leads to the backend's PJRT client (not exported by GoMLX).
	probe, err := backend.BufferFromFlatData(0, []float32{0}, shapes.Make(dtypes.Float32, 1))
	if err != nil {
		return nil, fmt.Errorf("kernels/cuda: ViewTensor: %w", err)
	}
	defer backend.BufferFinalize(probe)
	pb, ok := probe.(*pjrt.Buffer)
	if !ok {
		return nil, fmt.Errorf("kernels/cuda: ViewTensor: backend %q does not hold PJRT buffers (%T)", backend.Name(), probe)
	}
	view, err := pb.Client().CreateViewOfDeviceBuffer(unsafePointer(p), xla.DTypeToXLA(dtype), dims)
	if err != nil {
		return nil, fmt.Errorf("kernels/cuda: ViewTensor %s%v: %w", dtype, dims, err)
	}
	t, err := tensors.FromBuffer(backend, view)
	if err != nil {
		view.Destroy()
		return nil, fmt.Errorf("kernels/cuda: ViewTensor %s%v: %w", dtype, dims, err)
	}
	return t, nil
}

// unsafePointer turns a device address into the unsafe.Pointer that PJRT's C
// API takes. The Go runtime never dereferences it: it is not Go memory.
func unsafePointer(p Ptr) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(&p))
}
