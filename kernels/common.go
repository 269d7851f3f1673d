package kernels

import (
	"errors"
	"fmt"
	"math"
)

// Float is the element type of every CPU kernel: float32 (the training path,
// accumulated in float64) or float64 (the verification path).
type Float interface{ ~float32 | ~float64 }

// ErrNonFinite is wrapped by every error caused by a NaN or ±Inf input or result.
var ErrNonFinite = errors.New("non-finite value")

// ErrShape is wrapped by every error caused by a tensor of the wrong length or a bad size argument.
var ErrShape = errors.New("bad shape")

// tensorRef names one input tensor for validation and for non-finite reports.
type tensorRef[F Float] struct {
	name string
	x    []F
	n    int  // expected length
	skip bool // an absent optional tensor
}

// checkShapes returns an ErrShape error naming the first tensor whose length is not its expected length.
// Tensors with a nil slice and optional set are skipped by the caller (not passed here).
func checkShapes[F Float](kernel string, ts ...tensorRef[F]) error {
	for _, t := range ts {
		if t.skip {
			continue
		}
		if len(t.x) != t.n {
			return fmt.Errorf("kernels.%s: tensor %q has %d elements, want %d: %w", kernel, t.name, len(t.x), t.n, ErrShape)
		}
	}
	return nil
}

// nonFiniteError scans the inputs in order and names the first one holding a
// NaN or ±Inf; if every input is finite the non-finite value arose in the
// computation (an overflow), which is reported as such.
func nonFiniteError[F Float](kernel string, ts ...tensorRef[F]) error {
	for _, t := range ts {
		if t.skip {
			continue
		}
		for i, v := range t.x {
			f := float64(v)
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return fmt.Errorf("kernels.%s: tensor %q element %d is %v: %w", kernel, t.name, i, f, ErrNonFinite)
			}
		}
	}
	return fmt.Errorf("kernels.%s: inputs are finite but the result overflowed: %w", kernel, ErrNonFinite)
}

// checkScalars returns an error naming the first non-finite scalar argument.
func checkScalars(kernel string, kv ...any) error {
	for i := 0; i+1 < len(kv); i += 2 {
		f := kv[i+1].(float64)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("kernels.%s: argument %s is %v: %w", kernel, kv[i].(string), f, ErrNonFinite)
		}
	}
	return nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func badSize(kernel string, format string, args ...any) error {
	return fmt.Errorf("kernels.%s: %s: %w", kernel, fmt.Sprintf(format, args...), ErrShape)
}

// logSigmoidNeg returns −log σ(x) computed as PyTorch's log_sigmoid does
// (−min(x,0) + log1p(exp(−|x|))), stable for large |x|.
func logSigmoidNeg(x float64) float64 {
	return -min(x, 0) + math.Log1p(exp(-math.Abs(x)))
}

// lastNonZero returns the last index of m holding a non-zero value, or -1.
func lastNonZero[F Float](m []F) int {
	for t := len(m) - 1; t >= 0; t-- {
		if m[t] != 0 {
			return t
		}
	}
	return -1
}

// rowsAverage sums per-row values of non-empty rows and divides by their number
// (the "mean over samples" of the reference's masked_mean, with empty rows skipped).
func rowsAverage(vals []float64, nonEmpty []bool) float64 {
	s, n := 0.0, 0
	for i, v := range vals {
		if nonEmpty[i] {
			s += v
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return s / float64(n)
}

// dotSum returns Σ x·m and Σ m in float64 with four independent accumulators
// each (a single chain of dependent additions runs at one element per add
// latency; four keep the adder pipeline full).
func dotSum[F Float](x, m []F) (s, n float64) {
	m = m[:len(x)]
	var s0, s1, s2, s3, n0, n1, n2, n3 float64
	j := 0
	for ; j+4 <= len(x); j += 4 {
		m0, m1, m2, m3 := float64(m[j]), float64(m[j+1]), float64(m[j+2]), float64(m[j+3])
		s0 += float64(x[j]) * m0
		s1 += float64(x[j+1]) * m1
		s2 += float64(x[j+2]) * m2
		s3 += float64(x[j+3]) * m3
		n0 += m0
		n1 += m1
		n2 += m2
		n3 += m3
	}
	for ; j < len(x); j++ {
		s0 += float64(x[j]) * float64(m[j])
		n0 += float64(m[j])
	}
	return (s0 + s1) + (s2 + s3), (n0 + n1) + (n2 + n3)
}

// sum returns Σ x in float64 with four accumulators.
func sum[F Float](x []F) float64 {
	var s0, s1, s2, s3 float64
	j := 0
	for ; j+4 <= len(x); j += 4 {
		s0 += float64(x[j])
		s1 += float64(x[j+1])
		s2 += float64(x[j+2])
		s3 += float64(x[j+3])
	}
	for ; j < len(x); j++ {
		s0 += float64(x[j])
	}
	return (s0 + s1) + (s2 + s3)
}
