//go:build cgo && linux

package native

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef int ncclResult_t;
typedef void *ncclComm_t;
typedef struct { char internal[128]; } ncclUniqueId;
typedef int (*ctx_set_fn)(void *);
typedef int (*stream_query_fn)(void *);

typedef struct {
	void *lib;
	ncclResult_t (*ncclGetVersion)(int *);
	ncclResult_t (*ncclGetUniqueId)(ncclUniqueId *);
	ncclResult_t (*ncclCommInitRank)(ncclComm_t *, int, ncclUniqueId, int);
	ncclResult_t (*ncclAllReduce)(const void *, void *, size_t, int, int, ncclComm_t, void *);
	ncclResult_t (*ncclBroadcast)(const void *, void *, size_t, int, int, ncclComm_t, void *);
	ncclResult_t (*ncclAllGather)(const void *, void *, size_t, int, ncclComm_t, void *);
	ncclResult_t (*ncclReduceScatter)(const void *, void *, size_t, int, int, ncclComm_t, void *);
	ncclResult_t (*ncclCommAbort)(ncclComm_t);
	ncclResult_t (*ncclCommDestroy)(ncclComm_t);
	ncclResult_t (*ncclCommGetAsyncError)(ncclComm_t, ncclResult_t *);
	const char *(*ncclGetErrorString)(ncclResult_t);
	const char *(*ncclGetLastError)(ncclComm_t); // NCCL >= 2.13, may be NULL
	stream_query_fn cuStreamQuery;                // from the CUDA driver
} nccl_api;

static const char *nccl_dlerror(void) { const char *e = dlerror(); return e ? e : "unknown dlopen error"; }

static nccl_api *nccl_load(const char *path, const char **missing) {
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	*missing = "";
	if (!lib) return NULL;
	nccl_api *a = calloc(1, sizeof(nccl_api));
	a->lib = lib;
#define S(field, name) if (!(*(void **)&a->field = dlsym(lib, name))) { *missing = name; dlclose(lib); free(a); return NULL; }
	S(ncclGetVersion, "ncclGetVersion")
	S(ncclGetUniqueId, "ncclGetUniqueId")
	S(ncclCommInitRank, "ncclCommInitRank")
	S(ncclAllReduce, "ncclAllReduce")
	S(ncclBroadcast, "ncclBroadcast")
	S(ncclAllGather, "ncclAllGather")
	S(ncclReduceScatter, "ncclReduceScatter")
	S(ncclCommAbort, "ncclCommAbort")
	S(ncclCommDestroy, "ncclCommDestroy")
	S(ncclCommGetAsyncError, "ncclCommGetAsyncError")
	S(ncclGetErrorString, "ncclGetErrorString")
#undef S
	*(void **)&a->ncclGetLastError = dlsym(lib, "ncclGetLastError");
	return a;
}

// nccl_bind_cuda finds cuStreamQuery in the CUDA driver already loaded from cudaPath.
static int nccl_bind_cuda(nccl_api *a, const char *cudaPath) {
	void *lib = dlopen(cudaPath, RTLD_NOW | RTLD_NOLOAD);
	if (!lib) return 0;
	*(void **)&a->cuStreamQuery = dlsym(lib, "cuStreamQuery");
	return a->cuStreamQuery != NULL;
}

// Each call makes the device's primary context current on this thread first:
// NCCL's CUDA runtime then uses it, so device pointers from PJRT and native agree.
static ncclResult_t c_version(nccl_api *a, int *v) { return a->ncclGetVersion(v); }
static ncclResult_t c_unique_id(nccl_api *a, void *out) { return a->ncclGetUniqueId((ncclUniqueId *)out); }
static ncclResult_t c_init(nccl_api *a, void *setctx, void *ctx, ncclComm_t *comm, int n, void *id, int rank) {
	if (((ctx_set_fn)setctx)(ctx)) return 1; // ncclUnhandledCudaError
	ncclUniqueId uid; memcpy(&uid, id, sizeof uid);
	return a->ncclCommInitRank(comm, n, uid, rank);
}
static ncclResult_t c_allreduce(nccl_api *a, void *setctx, void *ctx, unsigned long long s, unsigned long long r, size_t n, int dt, int op, ncclComm_t c) {
	if (((ctx_set_fn)setctx)(ctx)) return 1;
	return a->ncclAllReduce((const void *)s, (void *)r, n, dt, op, c, NULL);
}
static ncclResult_t c_broadcast(nccl_api *a, void *setctx, void *ctx, unsigned long long s, unsigned long long r, size_t n, int dt, int root, ncclComm_t c) {
	if (((ctx_set_fn)setctx)(ctx)) return 1;
	return a->ncclBroadcast((const void *)s, (void *)r, n, dt, root, c, NULL);
}
static ncclResult_t c_allgather(nccl_api *a, void *setctx, void *ctx, unsigned long long s, unsigned long long r, size_t n, int dt, ncclComm_t c) {
	if (((ctx_set_fn)setctx)(ctx)) return 1;
	return a->ncclAllGather((const void *)s, (void *)r, n, dt, c, NULL);
}
static ncclResult_t c_reducescatter(nccl_api *a, void *setctx, void *ctx, unsigned long long s, unsigned long long r, size_t n, int dt, int op, ncclComm_t c) {
	if (((ctx_set_fn)setctx)(ctx)) return 1;
	return a->ncclReduceScatter((const void *)s, (void *)r, n, dt, op, c, NULL);
}
// c_query returns 0 when the default stream is idle, 600 (CUDA_ERROR_NOT_READY) while work is pending.
static int c_query(nccl_api *a, void *setctx, void *ctx) {
	int r = ((ctx_set_fn)setctx)(ctx); if (r) return r;
	return a->cuStreamQuery(NULL);
}
static ncclResult_t c_async_error(nccl_api *a, ncclComm_t c, ncclResult_t *e) { return a->ncclCommGetAsyncError(c, e); }
static ncclResult_t c_abort(nccl_api *a, ncclComm_t c) { return a->ncclCommAbort(c); }
static ncclResult_t c_destroy(nccl_api *a, ncclComm_t c) { return a->ncclCommDestroy(c); }
static const char *c_err(nccl_api *a, ncclResult_t r) { return a->ncclGetErrorString(r); }
static const char *c_last(nccl_api *a, ncclComm_t c) { return a->ncclGetLastError ? a->ncclGetLastError(c) : ""; }
*/
import "C"

import (
	"context"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/saferlhf/saferlhf/train/dist"
)

// NCCL is a loaded libnccl.so.2.
type NCCL struct {
	api     *C.nccl_api
	path    string
	version int
}

// LoadNCCL loads NCCL with dlopen (see NCCLEnvVar for the search order). The
// error lists what was tried.
func LoadNCCL() (*NCCL, error) {
	var tried []string
	for _, p := range ncclCandidates() {
		cp := C.CString(p)
		var missing *C.char
		api := C.nccl_load(cp, &missing)
		C.free(unsafe.Pointer(cp))
		if api == nil {
			if m := C.GoString(missing); m != "" {
				tried = append(tried, fmt.Sprintf("%s: symbol %s missing", p, m))
			} else {
				tried = append(tried, C.GoString(C.nccl_dlerror()))
			}
			continue
		}
		n := &NCCL{api: api, path: p}
		var v C.int
		if r := C.c_version(api, &v); r != 0 {
			return nil, n.err("ncclGetVersion", r, nil)
		}
		n.version = int(v)
		return n, nil
	}
	return nil, fmt.Errorf("native: NCCL (libnccl.so.2) could not be loaded: install it (pip install nvidia-nccl-cu12 or -cu13, or the system package) or set %s; %d places tried, first error: %s",
		NCCLEnvVar, len(tried), tried[0])
}

// Version is NCCL's version code (e.g. 22703 for 2.27.3); Path the library loaded.
func (n *NCCL) Version() int { return n.version }
func (n *NCCL) Path() string { return n.path }

func (n *NCCL) err(call string, r C.ncclResult_t, comm C.ncclComm_t) error {
	msg := C.GoString(C.c_err(n.api, r))
	if comm != nil {
		if last := C.GoString(C.c_last(n.api, comm)); last != "" {
			msg += ": " + last
		}
	}
	return &NCCLError{Call: call, Code: int(r), Msg: msg}
}

// UniqueID creates the token rank 0 shares with the others.
func (n *NCCL) UniqueID() (NCCLUniqueID, error) {
	var id NCCLUniqueID
	if r := C.c_unique_id(n.api, unsafe.Pointer(&id[0])); r != 0 {
		return id, n.err("ncclGetUniqueId", r, nil)
	}
	return id, nil
}

// NCCLComm is one rank's NCCL communicator on an opened GPU. Collectives run on
// the default stream and wait for completion; one that does not complete within
// the timeout aborts the communicator (ncclCommAbort) and returns an error.
type NCCLComm struct {
	n       *NCCL
	cu      *CUDA
	comm    C.ncclComm_t
	rank    int
	size    int
	timeout time.Duration

	mu      sync.Mutex
	aborted error
}

func (c *NCCLComm) setCtx() (unsafe.Pointer, unsafe.Pointer) {
	return unsafe.Pointer(c.cu.api.cuCtxSetCurrent), unsafe.Pointer(c.cu.ctx)
}

// NewComm joins rank of a world of size through id on GPU cu. ncclCommInitRank
// blocks until every rank has joined; after timeout NewComm returns an error
// (the stuck initialisation is abandoned: the process should exit).
func (n *NCCL) NewComm(cu *CUDA, id NCCLUniqueID, size, rank int, timeout time.Duration) (*NCCLComm, error) {
	if rank < 0 || rank >= size {
		return nil, fmt.Errorf("native: NCCL rank %d outside a world of %d", rank, size)
	}
	c := &NCCLComm{n: n, cu: cu, rank: rank, size: size, timeout: timeout}
	bound := false
	for _, p := range driverCandidates() {
		cp := C.CString(p)
		bound = C.nccl_bind_cuda(n.api, cp) != 0
		C.free(unsafe.Pointer(cp))
		if bound {
			break
		}
	}
	if !bound {
		return nil, fmt.Errorf("native: NCCL: cuStreamQuery not found in the loaded CUDA driver")
	}
	set, ctx := c.setCtx()
	done := make(chan C.ncclResult_t, 1)
	idc := id
	go func() {
		var comm C.ncclComm_t
		r := C.c_init(n.api, set, ctx, &comm, C.int(size), unsafe.Pointer(&idc[0]), C.int(rank))
		c.comm = comm
		done <- r
	}()
	select {
	case r := <-done:
		if r != 0 {
			return nil, fmt.Errorf("native: rank %d of %d: %w", rank, size, n.err("ncclCommInitRank", r, nil))
		}
		return c, nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("native: rank %d of %d: ncclCommInitRank did not complete within %s (a rank did not join: dead, or a different unique id?)", rank, size, timeout)
	}
}

// InitNCCL creates the NCCL communicator of the ranks of comm: rank 0 makes the
// unique id and broadcasts it over comm (the TCP rendezvous), then every rank
// joins on GPU cu.
func InitNCCL(ctx context.Context, n *NCCL, cu *CUDA, comm dist.Communicator, timeout time.Duration) (*NCCLComm, error) {
	var id NCCLUniqueID
	if comm.Rank() == 0 {
		var err error
		if id, err = n.UniqueID(); err != nil {
			return nil, err
		}
	}
	if err := comm.Broadcast(ctx, id[:], 0); err != nil {
		return nil, fmt.Errorf("native: sharing the NCCL unique id: %w", err)
	}
	return n.NewComm(cu, id, comm.Size(), comm.Rank(), timeout)
}

// Rank and Size place this communicator.
func (c *NCCLComm) Rank() int { return c.rank }
func (c *NCCLComm) Size() int { return c.size }

// wait polls the default stream and NCCL's asynchronous error until the enqueued
// collective completes, aborting the communicator at the deadline.
func (c *NCCLComm) wait(what string) error {
	set, ctx := c.setCtx()
	deadline := time.Now().Add(c.timeout)
	for sleep := time.Microsecond; ; sleep = min(2*sleep, time.Millisecond) {
		q := C.c_query(c.n.api, set, ctx)
		if q == 0 {
			return nil
		}
		if q != 600 {
			return c.abort(fmt.Errorf("native: %s: cuStreamQuery failed with CUDA error %d", what, int(q)))
		}
		var ae C.ncclResult_t
		if r := C.c_async_error(c.n.api, c.comm, &ae); r != 0 || (ae != 0 && ae != 7) {
			if r == 0 {
				r = ae
			}
			return c.abort(fmt.Errorf("native: rank %d: %s: %w", c.rank, what, c.n.err("ncclCommGetAsyncError", r, c.comm)))
		}
		if time.Now().After(deadline) {
			return c.abort(fmt.Errorf("native: rank %d: %s did not complete within %s (a rank is dead or stuck); communicator aborted", c.rank, what, c.timeout))
		}
		time.Sleep(sleep)
	}
}

func (c *NCCLComm) abort(err error) error {
	c.aborted = err
	C.c_abort(c.n.api, c.comm)
	return err
}

func (c *NCCLComm) run(what string, call func(set, ctx unsafe.Pointer) C.ncclResult_t) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted != nil {
		return c.aborted
	}
	set, ctx := c.setCtx()
	if r := call(set, ctx); r != 0 {
		return c.abort(fmt.Errorf("native: rank %d: %w", c.rank, c.n.err(what, r, c.comm)))
	}
	return c.wait(what)
}

// AllReduce reduces count elements of send over the ranks into recv (device
// buffers; send == recv is in place).
func (c *NCCLComm) AllReduce(send, recv DevicePtr, count int, dt NCCLDataType, op NCCLRedOp) error {
	return c.run("ncclAllReduce", func(set, ctx unsafe.Pointer) C.ncclResult_t {
		return C.c_allreduce(c.n.api, set, ctx, C.ulonglong(send), C.ulonglong(recv), C.size_t(count), C.int(dt), C.int(op), c.comm)
	})
}

// Broadcast copies count elements of root's send into every rank's recv.
func (c *NCCLComm) Broadcast(send, recv DevicePtr, count int, dt NCCLDataType, root int) error {
	return c.run("ncclBroadcast", func(set, ctx unsafe.Pointer) C.ncclResult_t {
		return C.c_broadcast(c.n.api, set, ctx, C.ulonglong(send), C.ulonglong(recv), C.size_t(count), C.int(dt), C.int(root), c.comm)
	})
}

// AllGather concatenates every rank's sendCount elements, in rank order, into
// recv (Size()*sendCount elements).
func (c *NCCLComm) AllGather(send, recv DevicePtr, sendCount int, dt NCCLDataType) error {
	return c.run("ncclAllGather", func(set, ctx unsafe.Pointer) C.ncclResult_t {
		return C.c_allgather(c.n.api, set, ctx, C.ulonglong(send), C.ulonglong(recv), C.size_t(sendCount), C.int(dt), c.comm)
	})
}

// ReduceScatter reduces Size()*recvCount elements of send over the ranks and
// leaves rank r's block r in recv (ZeRO's gradient step).
func (c *NCCLComm) ReduceScatter(send, recv DevicePtr, recvCount int, dt NCCLDataType, op NCCLRedOp) error {
	return c.run("ncclReduceScatter", func(set, ctx unsafe.Pointer) C.ncclResult_t {
		return C.c_reducescatter(c.n.api, set, ctx, C.ulonglong(send), C.ulonglong(recv), C.size_t(recvCount), C.int(dt), C.int(op), c.comm)
	})
}

// Close destroys the communicator (after an abort it only releases it).
func (c *NCCLComm) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.comm == nil {
		return nil
	}
	var r C.ncclResult_t
	if c.aborted == nil {
		r = C.c_destroy(c.n.api, c.comm)
	}
	c.comm = nil
	if r != 0 {
		return c.n.err("ncclCommDestroy", r, nil)
	}
	return nil
}
