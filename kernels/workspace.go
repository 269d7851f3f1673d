package kernels

import (
	"reflect"
	"runtime"
	"sync"
)

// minParallelWork is the number of row elements below which a kernel runs on
// the calling goroutine only: dispatch costs ~1µs per worker, a row element ~1ns.
const minParallelWork = 1 << 15

// Workspace holds the reusable scratch memory and worker goroutines of the CPU
// kernels, so that in steady state a kernel call allocates nothing. A nil
// *Workspace is valid: the kernel then runs single-threaded and allocates its
// scratch. A Workspace is not safe for concurrent use; use one per goroutine.
type Workspace struct {
	workers int
	pool    *pool
	tasks   map[reflect.Type]any
	f64     [4][]float64
	flags   []bool
	wg      sync.WaitGroup
}

// NewWorkspace returns a Workspace whose kernels split rows over the given
// number of goroutines (workers <= 0 means runtime.GOMAXPROCS(0), i.e. the
// cores this process may use). Close releases
// the goroutines; an unreachable Workspace releases them on its own.
func NewWorkspace(workers int) *Workspace {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	ws := &Workspace{workers: workers, tasks: map[reflect.Type]any{}}
	if workers > 1 {
		ws.pool = newPool(workers - 1)
		runtime.AddCleanup(ws, func(p *pool) { p.close() }, ws.pool)
	}
	return ws
}

// Workers returns the number of goroutines the Workspace splits rows over.
func (ws *Workspace) Workers() int {
	if ws == nil {
		return 1
	}
	return ws.workers
}

// Close stops the worker goroutines. The Workspace stays usable, single-threaded.
func (ws *Workspace) Close() {
	if ws != nil && ws.pool != nil {
		ws.pool.close()
		ws.pool = nil
		ws.workers = 1
	}
}

// orNew returns ws, or a fresh single-threaded Workspace if ws is nil.
func (ws *Workspace) orNew() *Workspace {
	if ws != nil {
		return ws
	}
	return &Workspace{workers: 1, tasks: map[reflect.Type]any{}}
}

// scratch returns the k-th float64 scratch buffer with length n (zeroed).
func (ws *Workspace) scratch(k, n int) []float64 {
	if cap(ws.f64[k]) < n {
		ws.f64[k] = make([]float64, n)
	}
	s := ws.f64[k][:n]
	clear(s)
	return s
}

// flagsBuf returns a bool scratch buffer with length n (all false).
func (ws *Workspace) flagsBuf(n int) []bool {
	if cap(ws.flags) < n {
		ws.flags = make([]bool, n)
	}
	s := ws.flags[:n]
	clear(s)
	return s
}

// taskFor returns the Workspace's reusable task value of type T.
func taskFor[T any](ws *Workspace) *T {
	k := reflect.TypeFor[T]()
	if v, ok := ws.tasks[k]; ok {
		return v.(*T)
	}
	t := new(T)
	ws.tasks[k] = t
	return t
}

// rowTask computes rows [lo, hi) of a kernel.
type rowTask interface{ rows(lo, hi int) }

type job struct {
	t      rowTask
	lo, hi int
	wg     *sync.WaitGroup
}

type pool struct {
	jobs chan job
	once sync.Once
}

func newPool(n int) *pool {
	p := &pool{jobs: make(chan job, n)}
	for range n {
		go func() {
			for j := range p.jobs {
				j.t.rows(j.lo, j.hi)
				j.wg.Done()
			}
		}()
	}
	return p
}

func (p *pool) close() { p.once.Do(func() { close(p.jobs) }) }

// parallelRows runs t over rows [0, B), split over the Workspace's workers when
// B·width is large enough; the calling goroutine takes the first chunk.
func parallelRows(ws *Workspace, B, width int, t rowTask) {
	w := ws.Workers()
	if ws == nil || ws.pool == nil || w <= 1 || B < 2 || B*width < minParallelWork {
		t.rows(0, B)
		return
	}
	if w > B {
		w = B
	}
	if most := B * width / (minParallelWork / 2); w > most {
		w = most
	}
	chunk := (B + w - 1) / w
	for lo := chunk; lo < B; lo += chunk {
		ws.wg.Add(1)
		ws.pool.jobs <- job{t: t, lo: lo, hi: min(lo+chunk, B), wg: &ws.wg}
	}
	t.rows(0, min(chunk, B))
	ws.wg.Wait()
}
