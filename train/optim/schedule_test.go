package optim

import (
	"math"
	"testing"
)

func TestSchedules(t *testing.T) {
	// Values of HF transformers' schedulers (lr_lambda) for warmup 2, total 10, base 1.
	cos := func(s int) float64 { return 0.5 * (1 + math.Cos(math.Pi*float64(s-2)/8)) }
	tests := []struct {
		kind string
		want []float64 // steps 0..10
	}{
		{Constant, []float64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{ConstantWithWarmup, []float64{0, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{Linear, []float64{0, 0.5, 1, 7.0 / 8, 6.0 / 8, 5.0 / 8, 4.0 / 8, 3.0 / 8, 2.0 / 8, 1.0 / 8, 0}},
		{Cosine, []float64{0, 0.5, 1, cos(3), cos(4), cos(5), 0.5, cos(7), cos(8), cos(9), 0}},
	}
	for _, tc := range tests {
		s, err := NewSchedule(tc.kind, 2e-5, 2, 10)
		if err != nil {
			t.Fatal(err)
		}
		for step, w := range tc.want {
			if got := s.LR(step); math.Abs(got-2e-5*w) > 1e-18 {
				t.Errorf("%s step %d: lr %g, want %g", tc.kind, step, got, 2e-5*w)
			}
		}
		if got := s.LR(12); got < 0 {
			t.Errorf("%s past the end: %g", tc.kind, got)
		}
	}
	if _, err := NewSchedule("polynomial", 1, 0, 1); err == nil {
		t.Error("unknown kind accepted")
	}
	if _, err := NewSchedule(Cosine, -1, 0, 1); err == nil {
		t.Error("negative lr accepted")
	}
	if got := WarmupSteps(0.03, 1000); got != 30 {
		t.Errorf("WarmupSteps = %d", got)
	}
	if got := WarmupSteps(0.03, 10); got != 0 {
		t.Errorf("WarmupSteps(0.03, 10) = %d (int truncates)", got)
	}
}
