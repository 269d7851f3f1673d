//go:build !(cgo && linux)

package native

import (
	"fmt"
	"unsafe"
)

// Compiled reports whether this build can drive a GPU (cgo on linux).
const Compiled = false

// CUDA is an opened GPU. In this build (no cgo) it cannot be opened: Open returns ErrNoCUDA.
type CUDA struct{}

// Module is a compiled and loaded CUDA module.
type Module struct {
	Arch string
	PTX  bool
}

// Function is a kernel of a loaded module.
type Function struct{ Name string }

// Event is a CUDA event on the default stream, for timing.
type Event struct{}

// Open returns ErrNoCUDA in this build.
func Open() (*CUDA, error) { return OpenDevice(0) }

// OpenDevice returns ErrNoCUDA in this build.
func OpenDevice(ordinal int) (*CUDA, error) {
	return nil, fmt.Errorf("native: open GPU %d: %w", ordinal, ErrNoCUDA)
}

// Info describes the opened device.
func (c *CUDA) Info() DeviceInfo { return DeviceInfo{} }

// Close releases the device.
func (c *CUDA) Close() error { return ErrNoCUDA }

// NVRTCVersion returns ErrNoCUDA in this build.
func (c *CUDA) NVRTCVersion() (major, minor int, path string, err error) { return 0, 0, "", ErrNoCUDA }

// Compile returns ErrNoCUDA in this build.
func (c *CUDA) Compile(src, name, arch string, opts ...string) (*Module, error) {
	return nil, ErrNoCUDA
}

// Function returns ErrNoCUDA in this build.
func (m *Module) Function(name string) (*Function, error) { return nil, ErrNoCUDA }

// SetMaxDynamicShared returns ErrNoCUDA in this build.
func (f *Function) SetMaxDynamicShared(bytes int) error { return ErrNoCUDA }

// Launch returns ErrNoCUDA in this build.
func (c *CUDA) Launch(f *Function, grid, block Dim3, shmem int, args ...any) error { return ErrNoCUDA }

// Synchronize returns ErrNoCUDA in this build.
func (c *CUDA) Synchronize() error { return ErrNoCUDA }

// Alloc returns ErrNoCUDA in this build.
func (c *CUDA) Alloc(bytes int) (DevicePtr, error) { return 0, ErrNoCUDA }

// Free returns ErrNoCUDA in this build.
func (c *CUDA) Free(p DevicePtr) error { return ErrNoCUDA }

// CopyHtoD returns ErrNoCUDA in this build.
func (c *CUDA) CopyHtoD(dst DevicePtr, src unsafe.Pointer, bytes int) error { return ErrNoCUDA }

// CopyDtoH returns ErrNoCUDA in this build.
func (c *CUDA) CopyDtoH(dst unsafe.Pointer, src DevicePtr, bytes int) error { return ErrNoCUDA }

// CopyDtoD returns ErrNoCUDA in this build.
func (c *CUDA) CopyDtoD(dst, src DevicePtr, bytes int) error { return ErrNoCUDA }

// Memset8 returns ErrNoCUDA in this build.
func (c *CUDA) Memset8(p DevicePtr, v byte, bytes int) error { return ErrNoCUDA }

// Memset32 returns ErrNoCUDA in this build.
func (c *CUDA) Memset32(p DevicePtr, v uint32, n int) error { return ErrNoCUDA }

// IsDevicePtr reports false in this build.
func (c *CUDA) IsDevicePtr(p DevicePtr) bool { return false }

// NewEvent returns ErrNoCUDA in this build.
func (c *CUDA) NewEvent() (*Event, error) { return nil, ErrNoCUDA }

// Record returns ErrNoCUDA in this build.
func (e *Event) Record() error { return ErrNoCUDA }

// Synchronize returns ErrNoCUDA in this build.
func (e *Event) Synchronize() error { return ErrNoCUDA }

// ElapsedMs returns ErrNoCUDA in this build.
func (e *Event) ElapsedMs(start *Event) (float64, error) { return 0, ErrNoCUDA }

// Destroy returns ErrNoCUDA in this build.
func (e *Event) Destroy() error { return ErrNoCUDA }
