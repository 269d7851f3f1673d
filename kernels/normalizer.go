package kernels

import (
	"fmt"
	"math"
)

// NormalizerType names the statistics a Normalizer tracks (reference models/normalizer.py).
type NormalizerType string

// NormalizeFunction names how a Normalizer maps a score.
type NormalizeFunction string

const (
	// RunningMeanStd merges batch statistics with the parallel-variance formula.
	RunningMeanStd NormalizerType = "RunningMeanStd"
	// ExponentialMovingAverage tracks μ and σ² as EMAs with the given momentum.
	ExponentialMovingAverage NormalizerType = "ExponentialMovingAverage"
	// IdentityNormalizer ("" or "None") only counts samples; μ = 0, σ² = 1.
	IdentityNormalizer NormalizerType = ""

	// Affine is (x − μ)/(σ + ε) (reward scores).
	Affine NormalizeFunction = "affine"
	// Scale is x/(σ + ε) (cost scores).
	Scale NormalizeFunction = "scale"
	// Translate is x − μ.
	Translate NormalizeFunction = "translate"
	// Identity is x (critic scores).
	Identity NormalizeFunction = "identity"
)

// Normalizer holds running score statistics (spec §3). Its fields are its whole
// state and marshal to JSON for checkpoints.
type Normalizer struct {
	Type     NormalizerType    `json:"type"`
	Function NormalizeFunction `json:"function"`
	Momentum float64           `json:"momentum"`
	Epsilon  float64           `json:"epsilon"`
	Mean     float64           `json:"mean"`
	Var      float64           `json:"var"`
	Count    int64             `json:"count"`
}

// NewNormalizer returns a Normalizer with μ = 0, σ² = 1, count 0 and ε = 1e-8;
// momentum is read by ExponentialMovingAverage only (the reference default is 0.9).
func NewNormalizer(typ NormalizerType, fn NormalizeFunction, momentum float64) (*Normalizer, error) {
	if typ == "None" {
		typ = IdentityNormalizer
	}
	switch typ {
	case RunningMeanStd, ExponentialMovingAverage, IdentityNormalizer:
	default:
		return nil, fmt.Errorf("kernels.NewNormalizer: type %q: want RunningMeanStd, ExponentialMovingAverage or None", typ)
	}
	switch fn {
	case Affine, Scale, Translate, Identity:
	default:
		return nil, fmt.Errorf("kernels.NewNormalizer: function %q: want affine, scale, translate or identity", fn)
	}
	if typ == ExponentialMovingAverage && (!finite(momentum) || momentum < 0 || momentum > 1) {
		return nil, fmt.Errorf("kernels.NewNormalizer: momentum %v not in [0,1]", momentum)
	}
	return &Normalizer{Type: typ, Function: fn, Momentum: momentum, Epsilon: 1e-8, Var: 1}, nil
}

// UpdateNormalizer feeds one batch of scores to n (reference Normalizer.update):
// batch mean and *unbiased* batch variance (0 for a single value, where the
// reference gives NaN), merged by the parallel-variance formula or by EMA.
func UpdateNormalizer[F Float](n *Normalizer, batch []F) error {
	m := len(batch)
	if m == 0 {
		return nil
	}
	bm := sum(batch) / float64(m)
	bv := 0.0
	if m > 1 {
		for _, v := range batch {
			d := float64(v) - bm
			bv += d * d
		}
		bv /= float64(m - 1)
	}
	if !finite(bm) || !finite(bv) {
		return fmt.Errorf("kernels.UpdateNormalizer: batch: %w", nonFiniteError("UpdateNormalizer", tensorRef[F]{"batch", batch, m, false}))
	}
	switch n.Type {
	case RunningMeanStd:
		cnt, bc := float64(n.Count), float64(m)
		delta := bm - n.Mean
		tot := cnt + bc
		n.Mean += delta * bc / tot
		n.Var = (n.Var*cnt + bv*bc + delta*delta*(cnt*bc/tot)) / tot
	case ExponentialMovingAverage:
		p := n.Momentum
		n.Mean = p*n.Mean + (1.0-p)*bm
		n.Var = p*n.Var + (1.0-p)*bv
	}
	n.Count += int64(m)
	return nil
}

// Update is UpdateNormalizer for float64 scores.
func (n *Normalizer) Update(batch []float64) error { return UpdateNormalizer(n, batch) }

// NormalizeInto writes n's normalize function of x into out (same length; may alias x).
func NormalizeInto[F Float](n *Normalizer, x, out []F) error {
	if len(out) != len(x) {
		return badSize("NormalizeInto", "out has %d elements, want %d", len(out), len(x))
	}
	mu, sd := n.Mean, math.Sqrt(n.Var)
	for i, v := range x {
		f := float64(v)
		switch n.Function {
		case Affine:
			f = (f - mu) / (sd + n.Epsilon)
		case Scale:
			f = f / (sd + n.Epsilon)
		case Translate:
			f = f - mu
		}
		out[i] = F(f)
	}
	return nil
}

// Normalize returns n's normalize function of one score.
func (n *Normalizer) Normalize(x float64) float64 {
	var o [1]float64
	_ = NormalizeInto(n, []float64{x}, o[:])
	return o[0]
}
