//go:build cgo

package engine

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
typedef void (*setth_fn)(int);
typedef char *(*cfg_fn)(void);

static void *ob_handle;
static sgemm_fn ob_sgemm;
static setth_fn ob_setth;
static cfg_fn ob_cfg;

static int ob_open(const char *name) {
	if (ob_sgemm) return 0;
	ob_handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	if (!ob_handle) return -1;
	ob_sgemm = (sgemm_fn)dlsym(ob_handle, "cblas_sgemm");
	ob_setth = (setth_fn)dlsym(ob_handle, "openblas_set_num_threads");
	ob_cfg = (cfg_fn)dlsym(ob_handle, "openblas_get_config");
	return ob_sgemm ? 0 : -2;
}

static void ob_call(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
	// CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112
	ob_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
static void ob_threads(int n) { if (ob_setth) ob_setth(n); }
static const char *ob_config(void) { return ob_cfg ? ob_cfg() : "unknown"; }
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// BLAS is an installed CBLAS library loaded at run time with dlopen, used by
// the benchmarks as the yardstick for Sgemm (never needed to build or run).
type BLAS struct{ Config string }

// OpenBLAS loads libopenblas (libopenblas.so.0 or the given path) with
// nthreads threads.
func OpenBLAS(path string, nthreads int) (*BLAS, error) {
	if path == "" {
		path = "libopenblas.so.0"
	}
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	if rc := C.ob_open(cs); rc != 0 {
		return nil, fmt.Errorf("engine: dlopen %s failed (rc %d): %s", path, int(rc), C.GoString(C.dlerror()))
	}
	C.ob_threads(C.int(nthreads))
	return &BLAS{Config: C.GoString(C.ob_config())}, nil
}

// Sgemm calls cblas_sgemm with Sgemm's (row-major) conventions; shapes are the caller's job.
func (*BLAS) Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	C.ob_call(cb(transA), cb(transB), C.int(m), C.int(n), C.int(k), C.float(alpha), fp(a), C.int(lda), fp(b), C.int(ldb), C.float(beta), fp(c), C.int(ldc))
}
