package ppo

import (
	"fmt"

	"github.com/saferlhf/saferlhf/kernels"
)

// shaped holds what rl_step computes under no_grad (spec §1.3–1.4), all [B*L] at full width with
// zeros before start, so that graphs can use them with the response mask instead of slicing.
type shaped struct {
	rewards, costs         []float64
	rAdv, rRet, cAdv, cRet []float64
	stats                  kernels.KLStats
	// means, when set (RLMath), are the logged masked means of rAdv, rRet, the reward values
	// [, cAdv, cRet, the cost values] under the response mask, computed with the advantages.
	means []float64
}

// shapeAndGAE runs the KL shaping and the fused reward+cost GAE kernels on a scored rollout:
// PPO-Lag shapes both streams (±β·k); PPO shapes the reward only; the fixed-penalty baseline shapes
// r − λ₀·c as PPO does its reward (spec §2).
func shapeAndGAE(ws *kernels.Workspace, cfg *Config, r *Rollout) (shaped, error) {
	var s shaped
	B, L, start := r.B, r.L(), r.Start()
	seqMask := to64(r.SequenceMask())
	reward := to64(r.Reward)
	if cfg.Algorithm == Fixed {
		for i := range reward {
			reward[i] -= cfg.LambdaInit * float64(r.Cost[i])
		}
	}
	ka := kernels.KLArgs[float64]{B: B, L: L, KLCoeff: cfg.KLCoeff, ClipRangeScore: cfg.ClipRangeScore, Start: start,
		Reward: reward, LogProbs: to64(r.LogProbs), RefLogProbs: to64(r.RefLogProbs), SeqMask: seqMask}
	s.rewards = make([]float64, B*L)
	ga := kernels.GAEArgs[float64]{B: B, L: L, Start: start, Gamma: cfg.Gamma, Lambda: cfg.GAELambda,
		RewardValues: to64(r.RewardValues), Rewards: s.rewards, SeqMask: seqMask}
	var err error
	if cfg.UsesCostCritic() {
		ka.Cost = to64(r.Cost)
		s.costs = make([]float64, B*L)
		s.stats, err = kernels.KLShapedRewardsCosts(ws, ka, s.rewards, s.costs)
		ga.CostValues, ga.Costs = to64(r.CostValues), s.costs
	} else {
		s.stats, err = kernels.KLShapedRewards(ws, ka, s.rewards)
	}
	if err != nil {
		return s, fmt.Errorf("kl shaping: %w", err)
	}
	out := kernels.NewGAEOut[float64](B, L-start, cfg.UsesCostCritic())
	if err := kernels.GAE(ws, ga, out); err != nil {
		return s, fmt.Errorf("gae: %w", err)
	}
	s.rAdv, s.rRet = fullWidth(out.RewardAdv, B, L, start), fullWidth(out.RewardRet, B, L, start)
	if cfg.UsesCostCritic() {
		s.cAdv, s.cRet = fullWidth(out.CostAdv, B, L, start), fullWidth(out.CostRet, B, L, start)
	}
	return s, nil
}

// fullWidth places [B, L−start] rows at columns start… of a zero [B, L].
func fullWidth(x []float64, B, L, start int) []float64 {
	n := L - start
	out := make([]float64, B*L)
	for i := 0; i < B; i++ {
		copy(out[i*L+start:(i+1)*L], x[i*n:(i+1)*n])
	}
	return out
}

// maskedMean is the reference's utils.masked_mean (mean over rows of each row's masked mean), for
// logging; rows with an empty mask are skipped.
func maskedMean(B, L int, x []float64, mask []float32) float64 {
	s, rows := 0.0, 0
	for i := 0; i < B; i++ {
		num, den := 0.0, 0.0
		for t := 0; t < L; t++ {
			m := float64(mask[i*L+t])
			num += x[i*L+t] * m
			den += m
		}
		if den > 0 {
			s += num / den
			rows++
		}
	}
	return s / float64(max(rows, 1))
}

// toF32 converts for feeding graphs (nil stays nil).
func toF32(x []float64) []float32 {
	if x == nil {
		return nil
	}
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}
