//go:build cgo && linux

package native

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream, *CUevent;
typedef unsigned long long CUdeviceptr;
typedef int nvrtcResult;
typedef void *nvrtcProgram;

// Function pointers resolved with dlsym. Each is called through a tiny
// trampoline below, since Go cannot call a C function pointer directly.
typedef struct {
	void *lib;
	CUresult (*cuInit)(unsigned);
	CUresult (*cuDriverGetVersion)(int *);
	CUresult (*cuDeviceGetCount)(int *);
	CUresult (*cuDeviceGet)(CUdevice *, int);
	CUresult (*cuDeviceGetName)(char *, int, CUdevice);
	CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice);
	CUresult (*cuDeviceTotalMem)(size_t *, CUdevice);
	CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
	CUresult (*cuDevicePrimaryCtxRelease)(CUdevice);
	CUresult (*cuCtxSetCurrent)(CUcontext);
	CUresult (*cuCtxSynchronize)(void);
	CUresult (*cuModuleLoadData)(CUmodule *, const void *);
	CUresult (*cuModuleUnload)(CUmodule);
	CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
	CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
	CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **, void **);
	CUresult (*cuMemAlloc)(CUdeviceptr *, size_t);
	CUresult (*cuMemFree)(CUdeviceptr);
	CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void *, size_t);
	CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t);
	CUresult (*cuMemcpyDtoD)(CUdeviceptr, CUdeviceptr, size_t);
	CUresult (*cuMemsetD8)(CUdeviceptr, unsigned char, size_t);
	CUresult (*cuMemsetD32)(CUdeviceptr, unsigned int, size_t);
	CUresult (*cuEventCreate)(CUevent *, unsigned);
	CUresult (*cuEventDestroy)(CUevent);
	CUresult (*cuEventRecord)(CUevent, CUstream);
	CUresult (*cuEventSynchronize)(CUevent);
	CUresult (*cuEventElapsedTime)(float *, CUevent, CUevent);
	CUresult (*cuGetErrorString)(CUresult, const char **);
	CUresult (*cuGetErrorName)(CUresult, const char **);
	CUresult (*cuPointerGetAttribute)(void *, int, CUdeviceptr);
} cuda_api;

typedef struct {
	void *lib;
	nvrtcResult (*nvrtcVersion)(int *, int *);
	nvrtcResult (*nvrtcCreateProgram)(nvrtcProgram *, const char *, const char *, int, const char *const *, const char *const *);
	nvrtcResult (*nvrtcCompileProgram)(nvrtcProgram, int, const char *const *);
	nvrtcResult (*nvrtcGetProgramLogSize)(nvrtcProgram, size_t *);
	nvrtcResult (*nvrtcGetProgramLog)(nvrtcProgram, char *);
	nvrtcResult (*nvrtcGetCUBINSize)(nvrtcProgram, size_t *);
	nvrtcResult (*nvrtcGetCUBIN)(nvrtcProgram, char *);
	nvrtcResult (*nvrtcGetPTXSize)(nvrtcProgram, size_t *);
	nvrtcResult (*nvrtcGetPTX)(nvrtcProgram, char *);
	nvrtcResult (*nvrtcDestroyProgram)(nvrtcProgram *);
	const char *(*nvrtcGetErrorString)(nvrtcResult);
} nvrtc_api;

static void *sym(void *lib, const char *a, const char *b) {
	void *p = dlsym(lib, a);
	if (!p && b) p = dlsym(lib, b);
	return p;
}

// cuda_load returns NULL and sets *missing to the first unresolved symbol (or
// "" when dlopen itself failed, the reason then in dlerror).
static cuda_api *cuda_load(const char *path, const char **missing) {
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	*missing = "";
	if (!lib) return NULL;
	cuda_api *a = calloc(1, sizeof(cuda_api));
	a->lib = lib;
#define S(field, name, alt) if (!(*(void **)&a->field = sym(lib, name, alt))) { *missing = name; dlclose(lib); free(a); return NULL; }
	S(cuInit, "cuInit", NULL)
	S(cuDriverGetVersion, "cuDriverGetVersion", NULL)
	S(cuDeviceGetCount, "cuDeviceGetCount", NULL)
	S(cuDeviceGet, "cuDeviceGet", NULL)
	S(cuDeviceGetName, "cuDeviceGetName", NULL)
	S(cuDeviceGetAttribute, "cuDeviceGetAttribute", NULL)
	S(cuDeviceTotalMem, "cuDeviceTotalMem_v2", "cuDeviceTotalMem")
	S(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", NULL)
	S(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease")
	S(cuCtxSetCurrent, "cuCtxSetCurrent", NULL)
	S(cuCtxSynchronize, "cuCtxSynchronize", NULL)
	S(cuModuleLoadData, "cuModuleLoadData", NULL)
	S(cuModuleUnload, "cuModuleUnload", NULL)
	S(cuModuleGetFunction, "cuModuleGetFunction", NULL)
	S(cuFuncSetAttribute, "cuFuncSetAttribute", NULL)
	S(cuLaunchKernel, "cuLaunchKernel", NULL)
	S(cuMemAlloc, "cuMemAlloc_v2", NULL)
	S(cuMemFree, "cuMemFree_v2", NULL)
	S(cuMemcpyHtoD, "cuMemcpyHtoD_v2", NULL)
	S(cuMemcpyDtoH, "cuMemcpyDtoH_v2", NULL)
	S(cuMemcpyDtoD, "cuMemcpyDtoD_v2", NULL)
	S(cuMemsetD8, "cuMemsetD8_v2", NULL)
	S(cuMemsetD32, "cuMemsetD32_v2", NULL)
	S(cuEventCreate, "cuEventCreate", NULL)
	S(cuEventDestroy, "cuEventDestroy_v2", "cuEventDestroy")
	S(cuEventRecord, "cuEventRecord", NULL)
	S(cuEventSynchronize, "cuEventSynchronize", NULL)
	S(cuEventElapsedTime, "cuEventElapsedTime_v2", "cuEventElapsedTime")
	S(cuGetErrorString, "cuGetErrorString", NULL)
	S(cuGetErrorName, "cuGetErrorName", NULL)
	S(cuPointerGetAttribute, "cuPointerGetAttribute", NULL)
#undef S
	return a;
}

static nvrtc_api *nvrtc_load(const char *path, const char **missing) {
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	*missing = "";
	if (!lib) return NULL;
	nvrtc_api *a = calloc(1, sizeof(nvrtc_api));
	a->lib = lib;
#define S(field, name) if (!(*(void **)&a->field = dlsym(lib, name))) { *missing = name; dlclose(lib); free(a); return NULL; }
	S(nvrtcVersion, "nvrtcVersion")
	S(nvrtcCreateProgram, "nvrtcCreateProgram")
	S(nvrtcCompileProgram, "nvrtcCompileProgram")
	S(nvrtcGetProgramLogSize, "nvrtcGetProgramLogSize")
	S(nvrtcGetProgramLog, "nvrtcGetProgramLog")
	S(nvrtcGetCUBINSize, "nvrtcGetCUBINSize")
	S(nvrtcGetCUBIN, "nvrtcGetCUBIN")
	S(nvrtcGetPTXSize, "nvrtcGetPTXSize")
	S(nvrtcGetPTX, "nvrtcGetPTX")
	S(nvrtcDestroyProgram, "nvrtcDestroyProgram")
	S(nvrtcGetErrorString, "nvrtcGetErrorString")
#undef S
	return a;
}

// preload loads a library globally so that a later dlopen by soname finds it.
static int preload(const char *path) { return dlopen(path, RTLD_NOW | RTLD_GLOBAL) != NULL; }

static const char *last_dlerror(void) { const char *e = dlerror(); return e ? e : ""; }

static void cuda_unload(cuda_api *a) { if (a) { dlclose(a->lib); free(a); } }
static void nvrtc_unload(nvrtc_api *a) { if (a) { dlclose(a->lib); free(a); } }

// Trampolines. Those that touch a context make it current first: goroutines
// move between OS threads, and a CUDA context is current per thread.
static CUresult t_init(cuda_api *a) { return a->cuInit(0); }
static CUresult t_driver_version(cuda_api *a, int *v) { return a->cuDriverGetVersion(v); }
static CUresult t_device_count(cuda_api *a, int *n) { return a->cuDeviceGetCount(n); }
static CUresult t_device_get(cuda_api *a, CUdevice *d, int ord) { return a->cuDeviceGet(d, ord); }
static CUresult t_device_name(cuda_api *a, char *buf, int n, CUdevice d) { return a->cuDeviceGetName(buf, n, d); }
static CUresult t_device_attr(cuda_api *a, int *v, int attr, CUdevice d) { return a->cuDeviceGetAttribute(v, attr, d); }
static CUresult t_device_mem(cuda_api *a, size_t *v, CUdevice d) { return a->cuDeviceTotalMem(v, d); }
static CUresult t_ctx_retain(cuda_api *a, CUcontext *c, CUdevice d) { return a->cuDevicePrimaryCtxRetain(c, d); }
static CUresult t_ctx_release(cuda_api *a, CUdevice d) { return a->cuDevicePrimaryCtxRelease(d); }
static CUresult t_sync(cuda_api *a, CUcontext c) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuCtxSynchronize();
}
static CUresult t_module_load(cuda_api *a, CUcontext c, CUmodule *m, const void *image) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuModuleLoadData(m, image);
}
static CUresult t_module_unload(cuda_api *a, CUcontext c, CUmodule m) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuModuleUnload(m);
}
static CUresult t_module_function(cuda_api *a, CUcontext c, CUfunction *f, CUmodule m, const char *name) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuModuleGetFunction(f, m, name);
}
static CUresult t_func_attr(cuda_api *a, CUcontext c, CUfunction f, int attr, int v) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuFuncSetAttribute(f, attr, v);
}
#define MAX_ARGS 64
static CUresult t_launch(cuda_api *a, CUcontext c, CUfunction f, unsigned gx, unsigned gy, unsigned gz,
		unsigned bx, unsigned by, unsigned bz, unsigned shmem, uint64_t *vals, int n) {
	void *params[MAX_ARGS];
	if (n > MAX_ARGS) return 1; // CUDA_ERROR_INVALID_VALUE
	for (int i = 0; i < n; i++) params[i] = &vals[i];
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, NULL, n ? params : NULL, NULL);
}
static CUresult t_alloc(cuda_api *a, CUcontext c, CUdeviceptr *p, size_t n) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuMemAlloc(p, n);
}
static CUresult t_free(cuda_api *a, CUcontext c, CUdeviceptr p) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuMemFree(p);
}
static CUresult t_htod(cuda_api *a, CUcontext c, CUdeviceptr dst, const void *src, size_t n) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuMemcpyHtoD(dst, src, n);
}
static CUresult t_dtoh(cuda_api *a, CUcontext c, void *dst, CUdeviceptr src, size_t n) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuMemcpyDtoH(dst, src, n);
}
static CUresult t_dtod(cuda_api *a, CUcontext c, CUdeviceptr dst, CUdeviceptr src, size_t n) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuMemcpyDtoD(dst, src, n);
}
static CUresult t_memset8(cuda_api *a, CUcontext c, CUdeviceptr p, unsigned char v, size_t n) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuMemsetD8(p, v, n);
}
static CUresult t_memset32(cuda_api *a, CUcontext c, CUdeviceptr p, unsigned v, size_t n) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuMemsetD32(p, v, n);
}
static CUresult t_event_create(cuda_api *a, CUcontext c, CUevent *e) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuEventCreate(e, 0);
}
static CUresult t_event_destroy(cuda_api *a, CUcontext c, CUevent e) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuEventDestroy(e);
}
static CUresult t_event_record(cuda_api *a, CUcontext c, CUevent e) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuEventRecord(e, NULL);
}
static CUresult t_event_sync(cuda_api *a, CUcontext c, CUevent e) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuEventSynchronize(e);
}
static CUresult t_event_elapsed(cuda_api *a, CUcontext c, float *ms, CUevent s, CUevent e) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuEventElapsedTime(ms, s, e);
}
// CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2; CU_MEMORYTYPE_DEVICE = 2.
static CUresult t_ptr_memtype(cuda_api *a, CUcontext c, unsigned *t, CUdeviceptr p) {
	CUresult r = a->cuCtxSetCurrent(c); if (r) return r;
	return a->cuPointerGetAttribute(t, 2, p);
}
static const char *t_err_string(cuda_api *a, CUresult r) {
	const char *s = NULL;
	if (a->cuGetErrorString(r, &s) || !s) return "unknown CUDA error";
	return s;
}
static const char *t_err_name(cuda_api *a, CUresult r) {
	const char *s = NULL;
	if (a->cuGetErrorName(r, &s) || !s) return "CUDA_ERROR_UNKNOWN";
	return s;
}

static nvrtcResult n_version(nvrtc_api *a, int *maj, int *min) { return a->nvrtcVersion(maj, min); }
static nvrtcResult n_create(nvrtc_api *a, nvrtcProgram *p, const char *src, const char *name) {
	return a->nvrtcCreateProgram(p, src, name, 0, NULL, NULL);
}
static nvrtcResult n_compile(nvrtc_api *a, nvrtcProgram p, int n, char **opts) {
	return a->nvrtcCompileProgram(p, n, (const char *const *)opts);
}
static nvrtcResult n_log_size(nvrtc_api *a, nvrtcProgram p, size_t *n) { return a->nvrtcGetProgramLogSize(p, n); }
static nvrtcResult n_log(nvrtc_api *a, nvrtcProgram p, char *buf) { return a->nvrtcGetProgramLog(p, buf); }
static nvrtcResult n_cubin_size(nvrtc_api *a, nvrtcProgram p, size_t *n) { return a->nvrtcGetCUBINSize(p, n); }
static nvrtcResult n_cubin(nvrtc_api *a, nvrtcProgram p, char *buf) { return a->nvrtcGetCUBIN(p, buf); }
static nvrtcResult n_ptx_size(nvrtc_api *a, nvrtcProgram p, size_t *n) { return a->nvrtcGetPTXSize(p, n); }
static nvrtcResult n_ptx(nvrtc_api *a, nvrtcProgram p, char *buf) { return a->nvrtcGetPTX(p, buf); }
static nvrtcResult n_destroy(nvrtc_api *a, nvrtcProgram *p) { return a->nvrtcDestroyProgram(p); }
static const char *n_err(nvrtc_api *a, nvrtcResult r) { return a->nvrtcGetErrorString(r); }
*/
import "C"

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// Compiled reports whether this build can drive a GPU (cgo on linux).
const Compiled = true

// CUDA is an opened GPU: the driver library, the device's primary context
// (shared with XLA's CUDA PJRT plugin, so device pointers pass both ways),
// NVRTC (loaded at the first Compile) and a cache of compiled modules. Its
// methods are safe for concurrent use; all work goes to the legacy default stream.
type CUDA struct {
	api     *C.cuda_api
	dev     C.CUdevice
	ctx     C.CUcontext
	info    DeviceInfo
	libPath string

	mu        sync.Mutex
	nvrtc     *C.nvrtc_api
	nvrtcPath string
	modules   map[[32]byte]*Module
	closed    bool
}

// Module is a compiled and loaded CUDA module.
type Module struct {
	cu  *CUDA
	mod C.CUmodule
	// Arch is the architecture it was compiled for ("sm_90"), PTX reports whether the driver JIT-compiled PTX.
	Arch string
	PTX  bool

	mu    sync.Mutex
	funcs map[string]*Function
}

// Function is a kernel of a loaded module.
type Function struct {
	Name string
	fn   C.CUfunction
	mod  *Module
}

// Event is a CUDA event on the default stream, for timing.
type Event struct {
	cu *CUDA
	ev C.CUevent
}

// CUDA device attributes (CUdevice_attribute).
const (
	attrMaxSharedPerBlockOptin = 97
	attrSMCount                = 16
	attrCCMajor                = 75
	attrCCMinor                = 76
	attrL2Size                 = 38
	attrMemClock               = 36
	attrMemBusWidth            = 37
)

func (c *CUDA) check(call string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	return &Error{Call: call, Code: int(r), Name: C.GoString(C.t_err_name(c.api, r)), Msg: C.GoString(C.t_err_string(c.api, r))}
}

// Open loads the CUDA driver and opens GPU 0. See OpenDevice.
func Open() (*CUDA, error) { return OpenDevice(0) }

// OpenDevice loads the CUDA driver (see CUDAEnvVar for the search order),
// initialises it and retains the primary context of GPU ordinal. The error
// says which library or device was missing. Call Close when done.
func OpenDevice(ordinal int) (*CUDA, error) {
	var api *C.cuda_api
	var tried []string
	for _, p := range driverCandidates() {
		cp := C.CString(p)
		var missing *C.char
		api = C.cuda_load(cp, &missing)
		C.free(unsafe.Pointer(cp))
		if api != nil {
			break
		}
		if m := C.GoString(missing); m != "" {
			tried = append(tried, fmt.Sprintf("%s: symbol %s missing", p, m))
		} else {
			tried = append(tried, C.GoString(C.last_dlerror()))
		}
	}
	if api == nil {
		return nil, fmt.Errorf("native: no CUDA driver (libcuda.so.1) could be loaded, is there an NVIDIA GPU? (%d places tried, set %s to choose one) first error: %s",
			len(tried), CUDAEnvVar, tried[0])
	}
	c := &CUDA{api: api, modules: map[[32]byte]*Module{}}
	fail := func(err error) (*CUDA, error) {
		C.cuda_unload(api)
		return nil, fmt.Errorf("native: open GPU %d: %w", ordinal, err)
	}
	if err := c.check("cuInit", C.t_init(api)); err != nil {
		return fail(err)
	}
	var n, ver C.int
	if err := c.check("cuDeviceGetCount", C.t_device_count(api, &n)); err != nil {
		return fail(err)
	}
	if ordinal < 0 || ordinal >= int(n) {
		return fail(fmt.Errorf("device ordinal %d out of range: %d GPU(s) visible", ordinal, n))
	}
	if err := c.check("cuDriverGetVersion", C.t_driver_version(api, &ver)); err != nil {
		return fail(err)
	}
	if err := c.check("cuDeviceGet", C.t_device_get(api, &c.dev, C.int(ordinal))); err != nil {
		return fail(err)
	}
	var name [256]C.char
	if err := c.check("cuDeviceGetName", C.t_device_name(api, &name[0], 256, c.dev)); err != nil {
		return fail(err)
	}
	attr := func(a int) (int, error) {
		var v C.int
		err := c.check("cuDeviceGetAttribute", C.t_device_attr(api, &v, C.int(a), c.dev))
		return int(v), err
	}
	var mem C.size_t
	if err := c.check("cuDeviceTotalMem_v2", C.t_device_mem(api, &mem, c.dev)); err != nil {
		return fail(err)
	}
	c.info = DeviceInfo{Ordinal: ordinal, Name: C.GoString(&name[0]), TotalMem: int64(mem), DriverVersion: int(ver)}
	for _, a := range []struct {
		attr int
		dst  *int
	}{{attrCCMajor, &c.info.Major}, {attrCCMinor, &c.info.Minor}, {attrSMCount, &c.info.SMs},
		{attrMaxSharedPerBlockOptin, &c.info.MaxSharedMem}, {attrL2Size, &c.info.L2Bytes},
		{attrMemClock, &c.info.MemClockKHz}, {attrMemBusWidth, &c.info.MemBusBits}} {
		v, err := attr(a.attr)
		if err != nil {
			return fail(err)
		}
		*a.dst = v
	}
	if err := c.check("cuDevicePrimaryCtxRetain", C.t_ctx_retain(api, &c.ctx, c.dev)); err != nil {
		return fail(err)
	}
	return c, nil
}

// Info describes the opened device.
func (c *CUDA) Info() DeviceInfo { return c.info }

// Close unloads the modules compiled through c and releases the primary
// context (XLA, if it uses the same device, keeps its own reference).
func (c *CUDA) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, m := range c.modules {
		errs = append(errs, c.check("cuModuleUnload", C.t_module_unload(c.api, c.ctx, m.mod)))
	}
	c.modules = nil
	errs = append(errs, c.check("cuDevicePrimaryCtxRelease_v2", C.t_ctx_release(c.api, c.dev)))
	if c.nvrtc != nil {
		C.nvrtc_unload(c.nvrtc)
		c.nvrtc = nil
	}
	// The driver library stays loaded: unloading libcuda while XLA may use it is unsafe.
	return errors.Join(errs...)
}

// loadNVRTC finds and loads NVRTC (see nvrtcCandidates). Called with c.mu held.
func (c *CUDA) loadNVRTC() error {
	if c.nvrtc != nil {
		return nil
	}
	var tried []string
	for _, p := range nvrtcCandidates() {
		for _, b := range builtinsNextTo(p) {
			cb := C.CString(b)
			C.preload(cb)
			C.free(unsafe.Pointer(cb))
		}
		cp := C.CString(p)
		var missing *C.char
		api := C.nvrtc_load(cp, &missing)
		C.free(unsafe.Pointer(cp))
		if api != nil {
			c.nvrtc, c.nvrtcPath = api, p
			return nil
		}
		if m := C.GoString(missing); m != "" {
			tried = append(tried, fmt.Sprintf("%s: symbol %s missing", p, m))
		}
	}
	return fmt.Errorf("native: NVRTC not found (set %s to the absolute path of libnvrtc.so.13 or .12, e.g. from the nvidia-cuda-nvrtc Python wheel); %d places tried %s",
		NVRTCEnvVar, len(nvrtcCandidates()), strings.Join(tried, "; "))
}

// NVRTCVersion loads NVRTC if needed and returns its version and library path.
func (c *CUDA) NVRTCVersion() (major, minor int, path string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.loadNVRTC(); err != nil {
		return 0, 0, "", err
	}
	var ma, mi C.int
	if r := C.n_version(c.nvrtc, &ma, &mi); r != 0 {
		return 0, 0, "", c.nvrtcErr("nvrtcVersion", r, "")
	}
	return int(ma), int(mi), c.nvrtcPath, nil
}

func (c *CUDA) nvrtcErr(call string, r C.nvrtcResult, log string) error {
	return &Error{Call: call, Code: int(r), Name: "NVRTC_ERROR", Msg: C.GoString(C.n_err(c.nvrtc, r)), Log: log}
}

// Compile compiles CUDA C++ source (name is used in messages) with NVRTC for
// arch ("sm_90"; "" means the device's own) and loads it. Kernels meant to be
// looked up by name must be declared extern "C". Results are cached by the
// hash of source, arch and options, so calling Compile again is cheap.
func (c *CUDA) Compile(src, name, arch string, opts ...string) (*Module, error) {
	if arch == "" {
		arch = c.info.Arch()
	}
	key := sha256.Sum256([]byte(src + "\x00" + arch + "\x00" + strings.Join(opts, "\x00")))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("native: Compile on a closed CUDA")
	}
	if m, ok := c.modules[key]; ok {
		return m, nil
	}
	if err := c.loadNVRTC(); err != nil {
		return nil, err
	}
	image, isPTX, err := c.nvrtcCompile(src, name, arch, opts)
	if err != nil {
		return nil, fmt.Errorf("native: compile %s for %s: %w", name, arch, err)
	}
	cimg := C.CBytes(image)
	defer C.free(cimg)
	m := &Module{cu: c, Arch: arch, PTX: isPTX, funcs: map[string]*Function{}}
	if err := c.check("cuModuleLoadData", C.t_module_load(c.api, c.ctx, &m.mod, cimg)); err != nil {
		return nil, fmt.Errorf("native: load %s (%s): %w", name, arch, err)
	}
	c.modules[key] = m
	return m, nil
}

// nvrtcCompile returns a CUBIN for arch, or PTX (for the driver to JIT) when
// arch is a virtual architecture "compute_XX".
func (c *CUDA) nvrtcCompile(src, name, arch string, opts []string) ([]byte, bool, error) {
	csrc, cname := C.CString(src), C.CString(name)
	defer C.free(unsafe.Pointer(csrc))
	defer C.free(unsafe.Pointer(cname))
	var prog C.nvrtcProgram
	if r := C.n_create(c.nvrtc, &prog, csrc, cname); r != 0 {
		return nil, false, c.nvrtcErr("nvrtcCreateProgram", r, "")
	}
	defer C.n_destroy(c.nvrtc, &prog)
	all := append([]string{"--gpu-architecture=" + arch, "--std=c++17", "-default-device"}, opts...)
	copts := C.malloc(C.size_t(len(all)) * C.size_t(unsafe.Sizeof(uintptr(0))))
	defer C.free(copts)
	optv := unsafe.Slice((**C.char)(copts), len(all))
	for i, o := range all {
		optv[i] = C.CString(o)
		defer C.free(unsafe.Pointer(optv[i]))
	}
	r := C.n_compile(c.nvrtc, prog, C.int(len(all)), (**C.char)(copts))
	var logN C.size_t
	log := ""
	if C.n_log_size(c.nvrtc, prog, &logN) == 0 && logN > 1 {
		buf := make([]byte, int(logN))
		if C.n_log(c.nvrtc, prog, (*C.char)(unsafe.Pointer(&buf[0]))) == 0 {
			log = strings.TrimRight(string(buf), "\x00\n ")
		}
	}
	if r != 0 {
		return nil, false, c.nvrtcErr("nvrtcCompileProgram", r, log)
	}
	isPTX := strings.HasPrefix(arch, "compute_")
	var n C.size_t
	if isPTX {
		if r := C.n_ptx_size(c.nvrtc, prog, &n); r != 0 {
			return nil, true, c.nvrtcErr("nvrtcGetPTXSize", r, "")
		}
		out := make([]byte, int(n))
		if r := C.n_ptx(c.nvrtc, prog, (*C.char)(unsafe.Pointer(&out[0]))); r != 0 {
			return nil, true, c.nvrtcErr("nvrtcGetPTX", r, "")
		}
		return out, true, nil
	}
	if r := C.n_cubin_size(c.nvrtc, prog, &n); r != 0 {
		return nil, false, c.nvrtcErr("nvrtcGetCUBINSize", r, "")
	}
	out := make([]byte, int(n))
	if r := C.n_cubin(c.nvrtc, prog, (*C.char)(unsafe.Pointer(&out[0]))); r != 0 {
		return nil, false, c.nvrtcErr("nvrtcGetCUBIN", r, "")
	}
	return out, false, nil
}

// Function returns the kernel called name (declared extern "C" in the source).
func (m *Module) Function(name string) (*Function, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f, ok := m.funcs[name]; ok {
		return f, nil
	}
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	f := &Function{Name: name, mod: m}
	if err := m.cu.check("cuModuleGetFunction", C.t_module_function(m.cu.api, m.cu.ctx, &f.fn, m.mod, cname)); err != nil {
		return nil, fmt.Errorf("native: kernel %q: %w", name, err)
	}
	m.funcs[name] = f
	return f, nil
}

// SetMaxDynamicShared lets f use up to bytes of dynamic shared memory per block
// (needed above 48 KiB).
func (f *Function) SetMaxDynamicShared(bytes int) error {
	const attrMaxDynamicShared = 8 // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
	c := f.mod.cu
	return c.check("cuFuncSetAttribute", C.t_func_attr(c.api, c.ctx, f.fn, attrMaxDynamicShared, C.int(bytes)))
}

// Launch queues f on the default stream with the given grid, block, dynamic
// shared memory and arguments (DevicePtr, int, int32, int64, uint32, uint64,
// float32, float64, bool, in the kernel's parameter order; a Go int fills an
// int or long long parameter alike). It returns launch errors only; errors of
// the kernel itself show at the next Synchronize or copy.
func (c *CUDA) Launch(f *Function, grid, block Dim3, shmem int, args ...any) error {
	vals := make([]uint64, len(args)+1) // +1 keeps &vals[0] valid with no arguments
	for i, a := range args {
		v, err := packArg(a)
		if err != nil {
			return fmt.Errorf("native: launch %s: argument %d: %w", f.Name, i, err)
		}
		vals[i] = v
	}
	gx, gy, gz := grid.norm()
	bx, by, bz := block.norm()
	r := C.t_launch(c.api, c.ctx, f.fn, C.uint(gx), C.uint(gy), C.uint(gz), C.uint(bx), C.uint(by), C.uint(bz),
		C.uint(shmem), (*C.uint64_t)(unsafe.Pointer(&vals[0])), C.int(len(args)))
	runtime.KeepAlive(vals)
	if err := c.check("cuLaunchKernel", r); err != nil {
		return fmt.Errorf("native: launch %s grid %v block %v: %w", f.Name, grid, block, err)
	}
	return nil
}

// Synchronize waits for all work queued on the device's context, XLA's included.
func (c *CUDA) Synchronize() error {
	return c.check("cuCtxSynchronize", C.t_sync(c.api, c.ctx))
}

// Alloc allocates bytes of device memory (uninitialised).
func (c *CUDA) Alloc(bytes int) (DevicePtr, error) {
	if bytes <= 0 {
		return 0, fmt.Errorf("native: Alloc(%d): size must be positive", bytes)
	}
	var p C.CUdeviceptr
	if err := c.check("cuMemAlloc_v2", C.t_alloc(c.api, c.ctx, &p, C.size_t(bytes))); err != nil {
		return 0, fmt.Errorf("native: Alloc(%d bytes): %w", bytes, err)
	}
	return DevicePtr(p), nil
}

// Free releases memory from Alloc. Free(0) does nothing.
func (c *CUDA) Free(p DevicePtr) error {
	if p == 0 {
		return nil
	}
	return c.check("cuMemFree_v2", C.t_free(c.api, c.ctx, C.CUdeviceptr(p)))
}

// CopyHtoD copies bytes from host memory at src (not holding Go pointers) to dst.
func (c *CUDA) CopyHtoD(dst DevicePtr, src unsafe.Pointer, bytes int) error {
	if bytes == 0 {
		return nil
	}
	return c.check("cuMemcpyHtoD_v2", C.t_htod(c.api, c.ctx, C.CUdeviceptr(dst), src, C.size_t(bytes)))
}

// CopyDtoH copies bytes from device memory src to host memory at dst; it waits for queued work first.
func (c *CUDA) CopyDtoH(dst unsafe.Pointer, src DevicePtr, bytes int) error {
	if bytes == 0 {
		return nil
	}
	return c.check("cuMemcpyDtoH_v2", C.t_dtoh(c.api, c.ctx, dst, C.CUdeviceptr(src), C.size_t(bytes)))
}

// CopyDtoD queues a device-to-device copy of bytes.
func (c *CUDA) CopyDtoD(dst, src DevicePtr, bytes int) error {
	if bytes == 0 {
		return nil
	}
	return c.check("cuMemcpyDtoD_v2", C.t_dtod(c.api, c.ctx, C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(bytes)))
}

// Memset8 queues setting bytes bytes at p to v.
func (c *CUDA) Memset8(p DevicePtr, v byte, bytes int) error {
	if bytes == 0 {
		return nil
	}
	return c.check("cuMemsetD8_v2", C.t_memset8(c.api, c.ctx, C.CUdeviceptr(p), C.uchar(v), C.size_t(bytes)))
}

// Memset32 queues setting n 32-bit words at p to v (e.g. math.Float32bits(NaN) to poison outputs).
func (c *CUDA) Memset32(p DevicePtr, v uint32, n int) error {
	if n == 0 {
		return nil
	}
	return c.check("cuMemsetD32_v2", C.t_memset32(c.api, c.ctx, C.CUdeviceptr(p), C.uint(v), C.size_t(n)))
}

// IsDevicePtr reports whether p is device memory that the driver knows, e.g.
// a pointer taken from a PJRT buffer.
func (c *CUDA) IsDevicePtr(p DevicePtr) bool {
	var t C.uint
	return C.t_ptr_memtype(c.api, c.ctx, &t, C.CUdeviceptr(p)) == 0 && t == 2
}

// NewEvent creates an event for timing work on the default stream.
func (c *CUDA) NewEvent() (*Event, error) {
	e := &Event{cu: c}
	if err := c.check("cuEventCreate", C.t_event_create(c.api, c.ctx, &e.ev)); err != nil {
		return nil, err
	}
	return e, nil
}

// Record queues the event on the default stream.
func (e *Event) Record() error {
	return e.cu.check("cuEventRecord", C.t_event_record(e.cu.api, e.cu.ctx, e.ev))
}

// Synchronize waits until the event has happened.
func (e *Event) Synchronize() error {
	return e.cu.check("cuEventSynchronize", C.t_event_sync(e.cu.api, e.cu.ctx, e.ev))
}

// ElapsedMs returns the milliseconds between start and e (both recorded and completed).
func (e *Event) ElapsedMs(start *Event) (float64, error) {
	var ms C.float
	if err := e.cu.check("cuEventElapsedTime", C.t_event_elapsed(e.cu.api, e.cu.ctx, &ms, start.ev, e.ev)); err != nil {
		return 0, err
	}
	return float64(ms), nil
}

// Destroy frees the event.
func (e *Event) Destroy() error {
	return e.cu.check("cuEventDestroy_v2", C.t_event_destroy(e.cu.api, e.cu.ctx, e.ev))
}
