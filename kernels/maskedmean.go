package kernels

import "math"

// MaskedMean returns the reference's masked_mean (spec §1.5): the mean over
// rows of Σ_t x·m / Σ_t m, for x and mask of shape [B,N]. A nil mask gives the
// plain mean of x. Deviation from the reference (which returns NaN): rows whose
// mask is all zero are skipped, and the result is 0 when every row is empty.
func MaskedMean[F Float](ws *Workspace, x, mask []F, B, N int) (float64, error) {
	const k = "MaskedMean"
	if B < 0 || N < 0 {
		return 0, badSize(k, "B=%d N=%d", B, N)
	}
	ts := []tensorRef[F]{{"x", x, B * N, false}, {"mask", mask, B * N, mask == nil}}
	if err := checkShapes(k, ts...); err != nil {
		return 0, err
	}
	if mask == nil {
		s := sum(x)
		if !finite(s) {
			return 0, nonFiniteError(k, ts...)
		}
		if B*N == 0 {
			return 0, nil
		}
		return s / float64(B*N), nil
	}
	ws = ws.orNew()
	t := taskFor[maskedMeanTask[F]](ws)
	*t = maskedMeanTask[F]{x: x, m: mask, N: N, out: ws.scratch(0, B), ok: ws.flagsBuf(B)}
	parallelRows(ws, B, N, t)
	r := rowsAverage(t.out, t.ok)
	if !finite(r) {
		return 0, nonFiniteError(k, ts...)
	}
	return r, nil
}

type maskedMeanTask[F Float] struct {
	x, m []F
	N    int
	out  []float64
	ok   []bool
}

func (t *maskedMeanTask[F]) rows(lo, hi int) {
	for i := lo; i < hi; i++ {
		s, n := dotSum(t.x[i*t.N:(i+1)*t.N], t.m[i*t.N:(i+1)*t.N])
		if n != 0 {
			t.out[i], t.ok[i] = s/n, true
		}
	}
}

// Whiten writes to out the masked whitening of x ([B,N]): (x − μ)/sqrt(σ² + 1e-8)
// with μ and the (biased) σ² taken over every element whose mask is non-zero; if
// shiftMean is false μ is added back. Every position of out is written. The
// reference does not whiten advantages (spec §1.4); this helper is for
// experiments. With no masked element out = x.
func Whiten[F Float](ws *Workspace, x, mask []F, B, N int, shiftMean bool, out []F) error {
	const k = "Whiten"
	if B < 0 || N < 0 {
		return badSize(k, "B=%d N=%d", B, N)
	}
	ts := []tensorRef[F]{{"x", x, B * N, false}, {"mask", mask, B * N, false}, {"out", out, B * N, false}}
	if err := checkShapes(k, ts...); err != nil {
		return err
	}
	s, n := dotSum(x, mask)
	if n == 0 {
		copy(out, x)
		return nil
	}
	mu := s / n
	v2 := 0.0
	for i, v := range x {
		d := float64(v) - mu
		v2 += d * d * float64(mask[i])
	}
	inv := 1 / math.Sqrt(v2/n+1e-8)
	if !finite(mu) || !finite(inv) {
		return nonFiniteError(k, ts[:2]...)
	}
	add := 0.0
	if !shiftMean {
		add = mu
	}
	for i, v := range x {
		out[i] = F((float64(v)-mu)*inv + add)
	}
	return nil
}
