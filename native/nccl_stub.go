//go:build !(cgo && linux)

package native

import (
	"context"
	"fmt"
	"time"

	"github.com/saferlhf/saferlhf/train/dist"
)

// NCCL is a loaded libnccl.so.2. In this build (no cgo) it cannot be loaded.
type NCCL struct{}

// NCCLComm is one rank's NCCL communicator.
type NCCLComm struct{}

// LoadNCCL returns ErrNoCUDA in this build.
func LoadNCCL() (*NCCL, error) { return nil, fmt.Errorf("native: NCCL: %w", ErrNoCUDA) }

// Version returns 0 in this build.
func (n *NCCL) Version() int { return 0 }

// Path returns "" in this build.
func (n *NCCL) Path() string { return "" }

// UniqueID returns ErrNoCUDA in this build.
func (n *NCCL) UniqueID() (NCCLUniqueID, error) { return NCCLUniqueID{}, ErrNoCUDA }

// NewComm returns ErrNoCUDA in this build.
func (n *NCCL) NewComm(cu *CUDA, id NCCLUniqueID, size, rank int, timeout time.Duration) (*NCCLComm, error) {
	return nil, ErrNoCUDA
}

// InitNCCL returns ErrNoCUDA in this build.
func InitNCCL(ctx context.Context, n *NCCL, cu *CUDA, comm dist.Communicator, timeout time.Duration) (*NCCLComm, error) {
	return nil, fmt.Errorf("native: NCCL: %w", ErrNoCUDA)
}

// Rank returns 0 in this build.
func (c *NCCLComm) Rank() int { return 0 }

// Size returns 0 in this build.
func (c *NCCLComm) Size() int { return 0 }

// AllReduce returns ErrNoCUDA in this build.
func (c *NCCLComm) AllReduce(send, recv DevicePtr, count int, dt NCCLDataType, op NCCLRedOp) error {
	return ErrNoCUDA
}

// Broadcast returns ErrNoCUDA in this build.
func (c *NCCLComm) Broadcast(send, recv DevicePtr, count int, dt NCCLDataType, root int) error {
	return ErrNoCUDA
}

// AllGather returns ErrNoCUDA in this build.
func (c *NCCLComm) AllGather(send, recv DevicePtr, sendCount int, dt NCCLDataType) error {
	return ErrNoCUDA
}

// ReduceScatter returns ErrNoCUDA in this build.
func (c *NCCLComm) ReduceScatter(send, recv DevicePtr, recvCount int, dt NCCLDataType, op NCCLRedOp) error {
	return ErrNoCUDA
}

// Close returns nil in this build.
func (c *NCCLComm) Close() error { return nil }
