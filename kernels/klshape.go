package kernels

// KLArgs are the inputs of the KL-shaped per-token rewards (spec §1.3, §2).
// Per-token tensors are [B,L] row-major; Reward and Cost are [B].
type KLArgs[F Float] struct {
	B, L int
	// KLCoeff is β; ClipRangeScore clamps the shaped values to ±ClipRangeScore.
	KLCoeff, ClipRangeScore float64
	// Start is the first response position (S−1), used only for the logged statistics.
	Start int
	// Reward and Cost are the end scores of the reward and cost models ([B]); Cost is unused by KLShapedRewards.
	Reward, Cost []F
	// LogProbs are the (old) actor log-probs, RefLogProbs the reference model's, SeqMask = attention_mask[:,1:].
	LogProbs, RefLogProbs, SeqMask []F
}

// KLStats are the statistics rl_step logs about the shaped rewards (spec §1.8):
// KL = mean_i Σ_{t≥start} (logπ−logπ_ref)·m and RewardWithKLPenalty = mean_i Σ_{t≥start} rewards_t·m.
type KLStats struct {
	KL, RewardWithKLPenalty float64
}

// KLShapedRewardsCosts writes the PPO-Lag per-token rewards and costs ([B,L]):
// rewards_t = clip(−β·k_t + 1[t=end]·reward), costs_t = clip(+β·k_t + 1[t=end]·cost),
// with k_t = logπ − logπ_ref and end the last index where SeqMask is non-zero
// (reference PPOLagTrainer.add_kl_divergence_regularization). A row whose mask is
// all zero has no end: it gets the KL terms only (the reference raises).
func KLShapedRewardsCosts[F Float](ws *Workspace, a KLArgs[F], rewards, costs []F) (KLStats, error) {
	return klShape(ws, "KLShapedRewardsCosts", a, rewards, costs)
}

// KLShapedRewards is KLShapedRewardsCosts for plain PPO: the reward stream only
// (reference PPOTrainer.add_kl_divergence_regularization); a.Cost is ignored.
func KLShapedRewards[F Float](ws *Workspace, a KLArgs[F], rewards []F) (KLStats, error) {
	return klShape(ws, "KLShapedRewards", a, rewards, nil)
}

func klShape[F Float](ws *Workspace, k string, a KLArgs[F], rewards, costs []F) (KLStats, error) {
	B, L := a.B, a.L
	if B < 0 || L < 0 || a.Start < 0 || a.Start > L {
		return KLStats{}, badSize(k, "B=%d L=%d start=%d", B, L, a.Start)
	}
	if err := checkScalars(k, "KLCoeff", a.KLCoeff, "ClipRangeScore", a.ClipRangeScore); err != nil {
		return KLStats{}, err
	}
	noCost := costs == nil
	ts := []tensorRef[F]{{"reward", a.Reward, B, false}, {"cost", a.Cost, B, noCost},
		{"log_probs", a.LogProbs, B * L, false}, {"ref_log_probs", a.RefLogProbs, B * L, false},
		{"sequence_mask", a.SeqMask, B * L, false}}
	if err := checkShapes(k, ts...); err != nil {
		return KLStats{}, err
	}
	if err := checkShapes(k, tensorRef[F]{"rewards", rewards, B * L, false}, tensorRef[F]{"costs", costs, B * L, noCost}); err != nil {
		return KLStats{}, err
	}
	ws = ws.orNew()
	t := taskFor[klTask[F]](ws)
	*t = klTask[F]{a: a, rewards: rewards, costs: costs, kl: ws.scratch(0, B), rkl: ws.scratch(1, B), chk: ws.scratch(2, B)}
	parallelRows(ws, B, L, t)
	var st KLStats
	chk := 0.0
	for i := range B {
		st.KL += t.kl[i]
		st.RewardWithKLPenalty += t.rkl[i]
		chk += t.chk[i]
	}
	if !finite(chk) || !finite(st.KL) || !finite(st.RewardWithKLPenalty) {
		return KLStats{}, nonFiniteError(k, ts...)
	}
	if B > 0 {
		st.KL /= float64(B)
		st.RewardWithKLPenalty /= float64(B)
	}
	return st, nil
}

type klTask[F Float] struct {
	a              KLArgs[F]
	rewards, costs []F
	kl, rkl, chk   []float64
}

func (t *klTask[F]) rows(lo, hi int) {
	a := t.a
	L, beta, clip := a.L, a.KLCoeff, a.ClipRangeScore
	for i := lo; i < hi; i++ {
		lp, ref, m := a.LogProbs[i*L:(i+1)*L], a.RefLogProbs[i*L:(i+1)*L], a.SeqMask[i*L:(i+1)*L]
		rw := t.rewards[i*L : (i+1)*L]
		end := lastNonZero(m)
		R := float64(a.Reward[i])
		var C float64
		var cs []F
		if t.costs != nil {
			cs = t.costs[i*L : (i+1)*L]
			C = float64(a.Cost[i])
		}
		kl, rkl, chk := 0.0, 0.0, R+C
		for j := range L {
			kt := float64(lp[j]) - float64(ref[j])
			pen := -beta * kt
			r := pen
			if j == end {
				r += R
			}
			r = clamp(r, clip)
			rw[j] = F(r)
			if cs != nil {
				c := -pen
				if j == end {
					c += C
				}
				cs[j] = F(clamp(c, clip))
			}
			chk += kt
			if j >= a.Start {
				mv := float64(m[j])
				kl += kt * mv
				rkl += r * mv
			}
		}
		t.kl[i], t.rkl[i], t.chk[i] = kl, rkl, chk
	}
}

// clamp limits x to [−c, c] (torch.clamp; NaN passes through).
func clamp(x, c float64) float64 {
	if x < -c {
		return -c
	}
	if x > c {
		return c
	}
	return x
}
