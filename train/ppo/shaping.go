package ppo

import "math"

// Host-side rl_step math done under no_grad in the reference (spec §1.3–1.4). The shapes are
// small ([B, L] per micro-batch) so this runs on the host in float64 between graph executions.

// endIndex returns the last t where seqMask row i is 1 (spec: end_i), or −1 if none.
func endIndex(seqMask []float32, i, L int) int {
	for t := L - 1; t >= 0; t-- {
		if seqMask[i*L+t] != 0 {
			return t
		}
	}
	return -1
}

// klShape computes the KL-shaped per-token rewards (and costs when cost != nil), spec §1.3
// (PPOLagTrainer/PPOTrainer.add_kl_divergence_regularization):
//
//	rewards_t = clip(−β·k_t + 1[t=end]·reward, ±c),  costs_t = clip(+β·k_t + 1[t=end]·cost, ±c),
//
// with k_t = logπ − logπ_ref. Outputs are [B*L] float64.
func klShape(B, L int, logp, refLogp, seqMask []float32, reward, cost []float32, beta, clipScore float64) (rewards, costs []float64) {
	rewards = make([]float64, B*L)
	if cost != nil {
		costs = make([]float64, B*L)
	}
	for i := 0; i < B; i++ {
		end := endIndex(seqMask, i, L)
		for t := 0; t < L; t++ {
			k := float64(logp[i*L+t]) - float64(refLogp[i*L+t])
			r := -beta * k
			if t == end {
				r += float64(reward[i])
			}
			rewards[i*L+t] = clamp(r, -clipScore, clipScore)
			if cost != nil {
				c := beta * k
				if t == end {
					c += float64(cost[i])
				}
				costs[i*L+t] = clamp(c, -clipScore, clipScore)
			}
		}
	}
	return rewards, costs
}

func clamp(x, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, x)) }

// gae computes advantages and returns (spec §1.4, RLTrainer.get_advantages_and_returns) at full
// width L, zero for t < start: values and rewards are masked by seqMask first, then for
// t = L−1 … start: δ_t = r_t + γV_{t+1} − V_t, A_t = δ_t + γλA_{t+1}, R_t = A_t + V_t.
func gae(B, L, start int, values []float32, rewards []float64, seqMask []float32, gamma, lam float64) (adv, ret []float64) {
	adv = make([]float64, B*L)
	ret = make([]float64, B*L)
	for i := 0; i < B; i++ {
		last, nextV := 0.0, 0.0
		for t := L - 1; t >= start; t-- {
			m := float64(seqMask[i*L+t])
			v := float64(values[i*L+t]) * m
			r := rewards[i*L+t] * m
			delta := r + gamma*nextV - v
			last = delta + gamma*lam*last
			adv[i*L+t] = last
			ret[i*L+t] = last + v
			nextV = v
		}
	}
	return adv, ret
}

// maskedMean is the reference's utils.masked_mean: the mean over rows of each row's masked mean
// (PR #154). Rows with an empty mask contribute 0 here instead of NaN (a deliberate difference).
func maskedMean(B, L int, x []float64, mask []float32) float64 {
	s := 0.0
	for i := 0; i < B; i++ {
		num, den := 0.0, 0.0
		for t := 0; t < L; t++ {
			m := float64(mask[i*L+t])
			num += x[i*L+t] * m
			den += m
		}
		if den > 0 {
			s += num / den
		}
	}
	return s / float64(B)
}

// rowSums returns mean_i Σ_t x·mask (the reference's logged kl_divergence / reward_with_kl_penalty).
func meanRowSum(B, L int, x []float64, mask []float32) float64 {
	s := 0.0
	for i := 0; i < B*L; i++ {
		s += x[i] * float64(mask[i])
	}
	return s / float64(B)
}

// toF32 converts for feeding graphs.
func toF32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}
