package eval

import (
	"math"
	"testing"
)

func TestBootstrapMean(t *testing.T) {
	for _, tc := range []struct {
		name   string
		x      []float64
		lo, hi float64 // bounds the interval must lie within
		width  float64 // minimum width
	}{
		{"constant", []float64{2, 2, 2, 2}, 2, 2, 0},
		{"one item", []float64{-1}, -1, -1, 0},
		{"coin", []float64{0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}, 0.2, 0.8, 0.2},
	} {
		iv := BootstrapMean(tc.x, 2000, 7)
		var mean float64
		for _, v := range tc.x {
			mean += v / float64(len(tc.x))
		}
		if math.Abs(iv.Mean-mean) > 1e-12 || iv.Lo > iv.Mean || iv.Hi < iv.Mean || iv.Lo < tc.lo || iv.Hi > tc.hi || iv.Hi-iv.Lo < tc.width {
			t.Errorf("%s: %+v (mean %g), want an interval around the mean within [%g, %g] at least %g wide", tc.name, iv, mean, tc.lo, tc.hi, tc.width)
		}
		if again := BootstrapMean(tc.x, 2000, 7); again != iv {
			t.Errorf("%s: not deterministic: %+v then %+v", tc.name, iv, again)
		}
	}
	// A coin of 20 flips: the normal approximation gives 0.5 ± 1.96·sqrt(0.25/20) = [0.28, 0.72].
	iv := BootstrapMean([]float64{0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}, 4000, 1)
	if math.Abs(iv.Lo-0.28) > 0.06 || math.Abs(iv.Hi-0.72) > 0.06 {
		t.Errorf("coin interval %+v, want about [0.28, 0.72]", iv)
	}
	if iv := BootstrapMean(nil, 10, 1); !math.IsNaN(iv.Mean) {
		t.Errorf("empty: %+v, want NaN", iv)
	}
}
