package kernels

import "math"

// ActorArgs are the inputs of the actor losses (spec §1.5, §2), all [B,N], already
// sliced to the response region [:, start:].
type ActorArgs[F Float] struct {
	B, N int
	// ClipRatio is ε (clip_range_ratio).
	ClipRatio float64
	// Lambda is the Lagrange multiplier λ = exp(log λ) (PPO-Lag only).
	Lambda float64
	// LogProbs are the new log-probs (the loss is differentiated with respect to them), OldLogProbs the rollout's.
	LogProbs, OldLogProbs []F
	// RewardAdv are A^r (PPO: the advantages), CostAdv are A^c (PPO-Lag only).
	RewardAdv, CostAdv []F
	Mask               []F
}

// ActorResult holds the scalars of an actor-loss pass.
type ActorResult struct {
	// Loss is −masked_mean(min(Â·ρ, Â·clip(ρ, 1−ε, 1+ε))).
	Loss float64
	// ClipFrac is the masked mean of 1[|ρ−1| > ε].
	ClipFrac float64
	// ApproxKL is the masked mean of (ρ−1) − log ρ (the "k3" estimator of KL(π_old‖π)).
	ApproxKL float64
}

// ActorLossPPOLag computes the PPO-Lagrangian actor loss (reference
// PPOLagTrainer.actor_loss_fn) with Â = (A^r − λA^c)/(1+λ), and, if grad is not
// nil, writes dLoss/dLogProbs ([B,N]) into grad, all in one pass. Masked
// means skip rows whose mask is all zero (their gradient is 0).
func ActorLossPPOLag[F Float](ws *Workspace, a ActorArgs[F], grad []F) (ActorResult, error) {
	if err := checkScalars("ActorLossPPOLag", "Lambda", a.Lambda); err != nil {
		return ActorResult{}, err
	}
	if a.Lambda < 0 {
		return ActorResult{}, badSize("ActorLossPPOLag", "Lambda=%v < 0", a.Lambda)
	}
	return actorLoss(ws, "ActorLossPPOLag", a, true, grad)
}

// ActorLossPPO computes the plain PPO clipped-surrogate loss (reference
// PPOTrainer.actor_loss_fn) on A = a.RewardAdv, with its gradient as ActorLossPPOLag.
func ActorLossPPO[F Float](ws *Workspace, a ActorArgs[F], grad []F) (ActorResult, error) {
	return actorLoss(ws, "ActorLossPPO", a, false, grad)
}

func actorLoss[F Float](ws *Workspace, k string, a ActorArgs[F], lag bool, grad []F) (ActorResult, error) {
	B, N := a.B, a.N
	if B < 0 || N < 0 {
		return ActorResult{}, badSize(k, "B=%d N=%d", B, N)
	}
	if err := checkScalars(k, "ClipRatio", a.ClipRatio); err != nil {
		return ActorResult{}, err
	}
	ts := []tensorRef[F]{{"log_probs", a.LogProbs, B * N, false}, {"old_log_probs", a.OldLogProbs, B * N, false},
		{"reward_advantages", a.RewardAdv, B * N, false}, {"cost_advantages", a.CostAdv, B * N, !lag},
		{"mask", a.Mask, B * N, false}}
	if err := checkShapes(k, ts...); err != nil {
		return ActorResult{}, err
	}
	if err := checkShapes(k, tensorRef[F]{"grad", grad, B * N, grad == nil}); err != nil {
		return ActorResult{}, err
	}
	ws = ws.orNew()
	nonEmpty := countNonEmptyRows(a.Mask, B, N)
	t := taskFor[actorTask[F]](ws)
	*t = actorTask[F]{a: a, lag: lag, grad: grad, scale: 1 / math.Max(float64(nonEmpty), 1),
		loss: ws.scratch(0, B), clip: ws.scratch(1, B), kl: ws.scratch(2, B), ok: ws.flagsBuf(B)}
	parallelRows(ws, B, N, t)
	r := ActorResult{Loss: -rowsAverage(t.loss, t.ok), ClipFrac: rowsAverage(t.clip, t.ok), ApproxKL: rowsAverage(t.kl, t.ok)}
	if !finite(r.Loss) || !finite(r.ApproxKL) {
		return ActorResult{}, nonFiniteError(k, ts...)
	}
	return r, nil
}

// nonNeg returns 1 if x ≥ 0 (+0 included) and 0 if x < 0, from the sign bit, without a branch.
func nonNeg(x float64) float64 { return float64(1 - math.Float64bits(x)>>63) }

// countNonEmptyRows counts rows of the [B,N] mask holding a non-zero value.
func countNonEmptyRows[F Float](mask []F, B, N int) int {
	c := 0
	for i := range B {
		for _, v := range mask[i*N : (i+1)*N] {
			if v != 0 {
				c++
				break
			}
		}
	}
	return c
}

type actorTask[F Float] struct {
	a              ActorArgs[F]
	lag            bool
	grad           []F
	scale          float64
	loss, clip, kl []float64
	ok             []bool
}

func (t *actorTask[F]) rows(lo, hi int) {
	a := t.a
	N := a.N
	lam := a.Lambda
	lo1, hi1 := 1.0-a.ClipRatio, 1.0+a.ClipRatio
	for i := lo; i < hi; i++ {
		lp, old, ar, m := a.LogProbs[i*N:(i+1)*N], a.OldLogProbs[i*N:(i+1)*N], a.RewardAdv[i*N:(i+1)*N], a.Mask[i*N:(i+1)*N]
		var ac, g []F
		if t.lag {
			ac = a.CostAdv[i*N : (i+1)*N]
		}
		if t.grad != nil {
			g = t.grad[i*N : (i+1)*N]
		}
		n := sum(m)
		var w float64
		if n != 0 {
			w = -t.scale / n
			t.ok[i] = true
		}
		s, cf, kl := 0.0, 0.0, 0.0
		inv1p := 1 / (1.0 + lam)
		// Branch-free loop (random signs make branches unpredictable): builtin
		// min/max compile to MINSD/MAXSD, and 0/1 selectors come from sign bits.
		for j := range N {
			adv := float64(ar[j])
			if t.lag {
				adv = (adv - lam*float64(ac[j])) * inv1p
			}
			d := float64(lp[j]) - float64(old[j])
			rho := exp(d)
			s1 := adv * rho
			s2 := adv * max(lo1, min(hi1, rho))
			mv := float64(m[j])
			s += min(s1, s2) * mv
			if g != nil {
				// d min(s1,s2)/dlogπ = Â·ρ where the unclipped term is active (s1 ≤ s2), else 0.
				g[j] = F(w * mv * s1 * nonNeg(s2-s1))
			}
			cf += mv * (1 - nonNeg(a.ClipRatio-math.Abs(rho-1))) // 1[|ρ−1| > ε]
			kl += (rho - 1 - d) * mv
		}
		if n != 0 {
			t.loss[i], t.clip[i], t.kl[i] = s/n, cf/n, kl/n
		} else if s != s || kl != kl {
			t.loss[i] = s // propagate NaN so that the caller reports it
			t.ok[i] = true
		}
	}
}
