package engine

import (
	"math/rand/v2"
	"os"
	"syscall"
	"testing"
	"time"
)

// cpuTime returns the process's user+system CPU time (all threads).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// gemmShapes are the matmuls of one B16×T256 training step (4096 token rows)
// of stories260K (D 64, F 172, V 512) and of stories15M (D 288, F 768, V 32000).
var gemmShapes = []struct {
	name    string
	ta, tb  bool
	m, n, k int
}{
	{"260K/qkv_fwd", false, true, 4096, 64, 64},
	{"260K/ffn_up_fwd", false, true, 4096, 172, 64},
	{"260K/ffn_down_fwd", false, true, 4096, 64, 172},
	{"260K/head_fwd", false, true, 4096, 512, 64},
	{"260K/dx_ffn", false, false, 4096, 64, 172},
	{"260K/dw_ffn", true, false, 172, 64, 4096},
	{"260K/dw_head", true, false, 512, 64, 4096},
	{"15M/qkv_fwd", false, true, 4096, 288, 288},
	{"15M/ffn_up_fwd", false, true, 4096, 768, 288},
	{"15M/ffn_down_fwd", false, true, 4096, 288, 768},
	{"15M/dx_ffn", false, false, 4096, 288, 768},
	{"15M/dw_ffn", true, false, 768, 288, 4096},
	{"15M/head_fwd", false, true, 4096, 32000, 288},
	{"15M/dw_head", true, false, 32000, 288, 4096},
	{"square1024", false, false, 1024, 1024, 1024},
}

// BenchmarkSgemm times Sgemm at the model's shapes against OpenBLAS (when
// installed: libopenblas0-pthread; $OPENBLAS_LIB overrides the path) in the
// same run, with the same thread count. Metrics: GFLOP/s (wall) and GFLOP per
// CPU-second (all threads; the comparable figure on a loaded machine).
func BenchmarkSgemm(b *testing.B) {
	skipNoEngine(b)
	blas, err := OpenBLAS(os.Getenv("OPENBLAS_LIB"), Threads())
	if err != nil {
		b.Logf("no OpenBLAS comparison: %v", err)
	} else {
		b.Logf("OpenBLAS: %s; engine: %s, %d threads", blas.Config, ISA(), Threads())
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for _, s := range gemmShapes {
		ar, ac := s.m, s.k
		if s.ta {
			ar, ac = s.k, s.m
		}
		br, bc := s.k, s.n
		if s.tb {
			br, bc = s.n, s.k
		}
		a, bb, c := randSlice(rng, ar*ac, 1), randSlice(rng, br*bc, 1), make([]float32, s.m*s.n)
		flops := 2 * float64(s.m) * float64(s.n) * float64(s.k)
		b.Run(s.name+"/engine", func(b *testing.B) {
			c0 := cpuTime()
			for i := 0; i < b.N; i++ {
				if err := Sgemm(s.ta, s.tb, s.m, s.n, s.k, 1, a, ac, bb, bc, 0, c, s.n); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			b.ReportMetric(flops*float64(b.N)/(cpuTime()-c0).Seconds()/1e9, "GFLOP/cpu-s")
		})
		if blas != nil {
			b.Run(s.name+"/openblas", func(b *testing.B) {
				c0 := cpuTime()
				for i := 0; i < b.N; i++ {
					blas.Sgemm(s.ta, s.tb, s.m, s.n, s.k, 1, a, ac, bb, bc, 0, c, s.n)
				}
				b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				b.ReportMetric(flops*float64(b.N)/(cpuTime()-c0).Seconds()/1e9, "GFLOP/cpu-s")
			})
		}
	}
}
