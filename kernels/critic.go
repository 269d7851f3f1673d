package kernels

import "math"

// CriticArgs are the inputs of the clipped critic loss (spec §1.6), all [B,N]
// sliced to [:, start:].
type CriticArgs[F Float] struct {
	B, N int
	// ClipValue is c_v (clip_range_value).
	ClipValue float64
	// Values are the new critic values (the loss is differentiated with respect
	// to them), OldValues the rollout's, Returns the GAE returns.
	Values, OldValues, Returns, Mask []F
}

// CriticLoss returns 0.5·masked_mean(max((V−R)², (clip(V, V_old±c_v)−R)²))
// (reference RLTrainer.critic_loss_fn) and, if grad is not nil, writes
// dLoss/dValues ([B,N]) into grad in the same pass. Masked means skip rows whose
// mask is all zero.
func CriticLoss[F Float](ws *Workspace, a CriticArgs[F], grad []F) (float64, error) {
	const k = "CriticLoss"
	B, N := a.B, a.N
	if B < 0 || N < 0 {
		return 0, badSize(k, "B=%d N=%d", B, N)
	}
	if err := checkScalars(k, "ClipValue", a.ClipValue); err != nil {
		return 0, err
	}
	ts := []tensorRef[F]{{"values", a.Values, B * N, false}, {"old_values", a.OldValues, B * N, false},
		{"returns", a.Returns, B * N, false}, {"mask", a.Mask, B * N, false}}
	if err := checkShapes(k, ts...); err != nil {
		return 0, err
	}
	if err := checkShapes(k, tensorRef[F]{"grad", grad, B * N, grad == nil}); err != nil {
		return 0, err
	}
	ws = ws.orNew()
	nonEmpty := countNonEmptyRows(a.Mask, B, N)
	t := taskFor[criticTask[F]](ws)
	*t = criticTask[F]{a: a, grad: grad, scale: 1 / math.Max(float64(nonEmpty), 1), loss: ws.scratch(0, B), ok: ws.flagsBuf(B)}
	parallelRows(ws, B, N, t)
	l := 0.5 * rowsAverage(t.loss, t.ok)
	if !finite(l) {
		return 0, nonFiniteError(k, ts...)
	}
	return l, nil
}

type criticTask[F Float] struct {
	a     CriticArgs[F]
	grad  []F
	scale float64
	loss  []float64
	ok    []bool
}

func (t *criticTask[F]) rows(lo, hi int) {
	a := t.a
	N, c := a.N, a.ClipValue
	for i := lo; i < hi; i++ {
		v, vo, r, m := a.Values[i*N:(i+1)*N], a.OldValues[i*N:(i+1)*N], a.Returns[i*N:(i+1)*N], a.Mask[i*N:(i+1)*N]
		var g []F
		if t.grad != nil {
			g = t.grad[i*N : (i+1)*N]
		}
		n := sum(m)
		var w float64
		if n != 0 {
			w = t.scale / n
			t.ok[i] = true
		}
		s, so := 0.0, 0.0
		for j := range N {
			vn, o, ret := float64(v[j]), float64(vo[j]), float64(r[j])
			so += o                      // V_old may not reach s (an unclipped V ignores it): carry its NaN/Inf
			vc := min(max(vn, o-c), o+c) // torch.clamp(values, old−c, old+c)
			d1, d2 := vn-ret, vc-ret
			l1, l2 := d1*d1, d2*d2
			mv := float64(m[j])
			s += max(l1, l2) * mv
			if g != nil {
				// d/dV of 0.5·max(l1,l2) is (V−R) where the unclipped term is active (l1 ≥ l2), else 0 (V clipped).
				g[j] = F(w * mv * d1 * nonNeg(l1-l2))
			}
		}
		s += 0 * so
		if n != 0 {
			t.loss[i] = s / n
		} else if s != s {
			t.loss[i], t.ok[i] = s, true
		}
	}
}
