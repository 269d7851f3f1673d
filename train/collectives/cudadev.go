package collectives

import (
	"errors"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/kernels/cuda"
	"github.com/saferlhf/saferlhf/native"
)

// cudaDevice is the GPU of an xla:cuda backend with its NCCL communicator.
type cudaDevice struct {
	be   backends.Backend
	cu   *native.CUDA
	comm *native.NCCLComm
	avg  bool
}

func (d *cudaDevice) Pointer(t *tensors.Tensor) (native.DevicePtr, error) {
	return cuda.DevicePointer(d.be, t)
}

// Written drops a host copy of t (GoMLX would otherwise read the stale one).
func (d *cudaDevice) Written(t *tensors.Tensor) {
	if !t.IsShared() {
		t.FinalizeLocal()
	}
}

func (d *cudaDevice) Alloc(bytes int) (native.DevicePtr, error) { return d.cu.Alloc(bytes) }
func (d *cudaDevice) Free(p native.DevicePtr) error             { return d.cu.Free(p) }
func (d *cudaDevice) CopyDtoD(dst, src native.DevicePtr, bytes int) error {
	return d.cu.CopyDtoD(dst, src, bytes)
}

func (d *cudaDevice) AllReduce(p native.DevicePtr, count int, dt native.NCCLDataType, op native.NCCLRedOp) error {
	return d.comm.AllReduce(p, p, count, dt, op)
}

func (d *cudaDevice) Broadcast(p native.DevicePtr, count int, dt native.NCCLDataType, root int) error {
	return d.comm.Broadcast(p, p, count, dt, root)
}

func (d *cudaDevice) Sync() error { return d.cu.Synchronize() }
func (d *cudaDevice) Size() int   { return d.comm.Size() }
func (d *cudaDevice) Avg() bool   { return d.avg }

func (d *cudaDevice) Close() error { return errors.Join(d.comm.Close(), d.cu.Close()) }
