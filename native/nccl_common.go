package native

import (
	"fmt"
	"os"
	"path/filepath"
)

// NCCLEnvVar names the environment variable that gives NCCL's shared library (an absolute path).
const NCCLEnvVar = "SAFERLHF_NCCL"

// NCCLUniqueID is the 128-byte rendezvous token of an NCCL communicator: rank 0
// creates it (NCCL.UniqueID) and every rank passes it to NCCL.NewComm.
type NCCLUniqueID [128]byte

// NCCLDataType is ncclDataType_t.
type NCCLDataType int

// NCCL element types.
const (
	NCCLInt8     NCCLDataType = 0
	NCCLUint8    NCCLDataType = 1
	NCCLInt32    NCCLDataType = 2
	NCCLUint32   NCCLDataType = 3
	NCCLInt64    NCCLDataType = 4
	NCCLUint64   NCCLDataType = 5
	NCCLFloat16  NCCLDataType = 6
	NCCLFloat32  NCCLDataType = 7
	NCCLFloat64  NCCLDataType = 8
	NCCLBfloat16 NCCLDataType = 9
)

// Size returns the bytes of one element.
func (t NCCLDataType) Size() int {
	switch t {
	case NCCLInt8, NCCLUint8:
		return 1
	case NCCLFloat16, NCCLBfloat16:
		return 2
	case NCCLInt32, NCCLUint32, NCCLFloat32:
		return 4
	}
	return 8
}

// NCCLRedOp is ncclRedOp_t.
type NCCLRedOp int

// NCCL reductions (NCCLAvg needs NCCL >= 2.10).
const (
	NCCLSum  NCCLRedOp = 0
	NCCLProd NCCLRedOp = 1
	NCCLMax  NCCLRedOp = 2
	NCCLMin  NCCLRedOp = 3
	NCCLAvg  NCCLRedOp = 4
)

// NCCLError is a failed NCCL call.
type NCCLError struct {
	Call string // e.g. "ncclAllReduce"
	Code int    // ncclResult_t
	Msg  string // ncclGetErrorString, and ncclGetLastError's detail when available
}

func (e *NCCLError) Error() string {
	return fmt.Sprintf("%s: NCCL error %d: %s", e.Call, e.Code, e.Msg)
}

// ncclCandidates lists where to look for NCCL, in order: $SAFERLHF_NCCL, the
// loader's search for libnccl.so.2, the CUDA toolkit and system folders, and the
// NVIDIA Python wheels (nvidia-nccl-cu12: nvidia/nccl/lib; nvidia-nccl-cu13:
// nvidia/cu13/lib) in the usual site-packages folders.
func ncclCandidates() []string {
	var c []string
	if p := os.Getenv(NCCLEnvVar); p != "" {
		c = append(c, p)
	}
	c = append(c, "libnccl.so.2",
		"/usr/local/cuda/lib64/libnccl.so.2",
		"/usr/lib/x86_64-linux-gnu/libnccl.so.2",
		"/usr/lib64/libnccl.so.2",
		"/usr/lib/aarch64-linux-gnu/libnccl.so.2")
	for _, root := range sitePackages() {
		c = append(c,
			filepath.Join(root, "nvidia", "nccl", "lib", "libnccl.so.2"),
			filepath.Join(root, "nvidia", "cu13", "lib", "libnccl.so.2"))
	}
	return c
}
