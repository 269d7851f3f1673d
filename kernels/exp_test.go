package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestExpMatchesMath(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	xs := []float64{0, -0.0, 1e-300, -1e-300, 1, -1, 0.5, math.Ln2, 707.9, -707.9, 708, -708, 709.7, -745, 800, -800,
		math.Inf(1), math.Inf(-1), math.NaN()}
	for range 200000 {
		xs = append(xs, (rng.Float64()*2-1)*rng.ExpFloat64()*50)
	}
	worst := 0.0
	for _, x := range xs {
		got, want := exp(x), math.Exp(x)
		if math.IsNaN(want) {
			if !math.IsNaN(got) {
				t.Fatalf("exp(%v) = %v, want NaN", x, got)
			}
			continue
		}
		if want == 0 || math.IsInf(want, 0) {
			if got != want {
				t.Fatalf("exp(%v) = %v, want %v", x, got, want)
			}
			continue
		}
		worst = math.Max(worst, math.Abs(got-want)/want)
	}
	if worst > 1e-15 {
		t.Errorf("max relative difference from math.Exp %.3g, want ≤ 1e-15", worst)
	}
	t.Logf("max relative difference from math.Exp: %.3g", worst)
}

func BenchmarkExp(b *testing.B) {
	x := make([]float64, 1<<16)
	for i := range x {
		x[i] = float64(i%200)/100 - 1
	}
	b.Run("math.Exp", func(b *testing.B) {
		s := 0.0
		for b.Loop() {
			for _, v := range x {
				s += math.Exp(v)
			}
		}
		_ = s
	})
	b.Run("kernels.exp", func(b *testing.B) {
		s := 0.0
		for b.Loop() {
			for _, v := range x {
				s += exp(v)
			}
		}
		_ = s
	})
}
