// Package native is the thin cgo layer between saferlhf and the NVIDIA GPU: it
// loads the CUDA driver (libcuda.so.1) and NVRTC at run time with dlopen,
// compiles CUDA C++ source for the device at hand, moves memory and launches
// kernels. No C type leaks out of it: device memory is a DevicePtr, kernels are
// *Function values, and every failure is an error carrying CUDA's own message.
//
// GPU code is a run-time option, never a build requirement: built without cgo
// (the project's default, CGO_ENABLED=0 -tags noxla) every entry point returns
// ErrNoCUDA, and on a machine without a GPU Open returns an error that says why.
package native

import (
	"errors"
	"fmt"
	"math"
	"unsafe"
)

// ErrNoCUDA is returned (wrapped) by every function of a build without cgo, where CUDA cannot be loaded.
var ErrNoCUDA = errors.New("native: CUDA support not compiled in (built with CGO_ENABLED=0); rebuild with CGO_ENABLED=1 on linux")

// DevicePtr is an address in GPU memory (a CUdeviceptr). It is an integer so
// that Go's garbage collector never looks at it.
type DevicePtr uintptr

// Add returns p offset by n bytes.
func (p DevicePtr) Add(n int) DevicePtr { return p + DevicePtr(n) }

// Dim3 is a CUDA grid or block shape; zero components count as 1.
type Dim3 struct{ X, Y, Z int }

// D1 returns the one-dimensional shape {x, 1, 1}.
func D1(x int) Dim3 { return Dim3{X: x, Y: 1, Z: 1} }

func (d Dim3) norm() (x, y, z uint32) {
	one := func(v int) uint32 {
		if v <= 0 {
			return 1
		}
		return uint32(v)
	}
	return one(d.X), one(d.Y), one(d.Z)
}

// Error is a failed CUDA driver or NVRTC call.
type Error struct {
	Call string // the C function, e.g. "cuMemAlloc_v2"
	Code int    // CUresult or nvrtcResult
	Name string // e.g. "CUDA_ERROR_OUT_OF_MEMORY"
	Msg  string // CUDA's description
	Log  string // NVRTC's compiler log, if any
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s (%d): %s", e.Call, e.Name, e.Code, e.Msg)
	if e.Log != "" {
		s += "\n" + e.Log
	}
	return s
}

// DeviceInfo describes the GPU an opened *CUDA drives.
type DeviceInfo struct {
	Ordinal       int
	Name          string
	Major, Minor  int // compute capability
	SMs           int // multiprocessor count
	TotalMem      int64
	DriverVersion int // e.g. 13000 for CUDA 13.0
	MaxSharedMem  int // shared memory per block (opt-in maximum)
	L2Bytes       int
	MemClockKHz   int
	MemBusBits    int
}

// Arch returns the NVRTC architecture name of the device, e.g. "sm_90".
func (d DeviceInfo) Arch() string { return fmt.Sprintf("sm_%d%d", d.Major, d.Minor) }

// String returns a one-line description of the device.
func (d DeviceInfo) String() string {
	return fmt.Sprintf("GPU %d: %s (%s, %d SMs, %.1f GiB, driver CUDA %d.%d)", d.Ordinal, d.Name, d.Arch(),
		d.SMs, float64(d.TotalMem)/(1<<30), d.DriverVersion/1000, d.DriverVersion%1000/10)
}

// packArg turns one kernel argument into the 8-byte slot cuLaunchKernel reads
// it from. Integers are sign- or zero-extended so that a slot read as a 32-bit
// or 64-bit parameter holds the same value (little-endian).
func packArg(a any) (uint64, error) {
	switch v := a.(type) {
	case DevicePtr:
		return uint64(v), nil
	case int:
		return uint64(int64(v)), nil
	case int32:
		return uint64(int64(v)), nil
	case int64:
		return uint64(v), nil
	case uint32:
		return uint64(v), nil
	case uint64:
		return v, nil
	case float32:
		return uint64(math.Float32bits(v)), nil
	case float64:
		return math.Float64bits(v), nil
	case bool:
		if v {
			return 1, nil
		}
		return 0, nil
	default:
		return 0, fmt.Errorf("native: unsupported kernel argument type %T (want DevicePtr, int, int32, int64, uint32, uint64, float32, float64 or bool)", a)
	}
}

// Elem lists the element types that move between host slices and device memory.
type Elem interface {
	~float32 | ~float64 | ~int32 | ~int64 | ~uint32 | ~uint64 | ~int8 | ~uint8 | ~int16 | ~uint16
}

func sizeOf[T Elem]() int {
	var z T
	return int(unsafe.Sizeof(z))
}

// CopyToDevice copies the host slice src to device memory at dst.
func CopyToDevice[T Elem](c *CUDA, dst DevicePtr, src []T) error {
	if len(src) == 0 {
		return nil
	}
	return c.CopyHtoD(dst, unsafe.Pointer(&src[0]), len(src)*sizeOf[T]())
}

// CopyFromDevice fills the host slice dst from device memory at src.
func CopyFromDevice[T Elem](c *CUDA, dst []T, src DevicePtr) error {
	if len(dst) == 0 {
		return nil
	}
	return c.CopyDtoH(unsafe.Pointer(&dst[0]), src, len(dst)*sizeOf[T]())
}

// Upload allocates device memory for src and copies it there; Free the result.
func Upload[T Elem](c *CUDA, src []T) (DevicePtr, error) {
	n := max(len(src), 1) * sizeOf[T]()
	p, err := c.Alloc(n)
	if err != nil {
		return 0, err
	}
	if err := CopyToDevice(c, p, src); err != nil {
		c.Free(p)
		return 0, err
	}
	return p, nil
}

// Download returns a host copy of n elements at src.
func Download[T Elem](c *CUDA, src DevicePtr, n int) ([]T, error) {
	out := make([]T, n)
	return out, CopyFromDevice(c, out, src)
}
