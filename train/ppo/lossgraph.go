package ppo

import (
	G "github.com/gomlx/gomlx/pkg/core/graph"
)

// Graph forms of the reference's losses, used inside the Stepper's loss+grad+AdamW graph. All
// per-token inputs are [B, W] with a 0/1 mask of the same shape (W = L for the actor; the critic
// pads to T so no Slice, whose gradient the pure-Go backend lacks, is needed).

// graphMaskedMean is utils.masked_mean: the mean over rows of each row's masked mean (PR #154).
// An empty row contributes 0 (the reference would give NaN).
func graphMaskedMean(x, mask *G.Node) *G.Node {
	num := G.ReduceSum(G.Mul(x, mask), 1)
	den := G.MaxScalar(G.ReduceSum(mask, 1), 1)
	return G.ReduceAllMean(G.Div(num, den))
}

// graphActorLoss is PPOTrainer/PPOLagTrainer.actor_loss_fn (spec §1.5) with the advantage already
// combined on the host (Â = (A^r − λA^c)/(1+λ) for PPO-Lag): −masked_mean(min(Âρ, Â·clip(ρ, 1±ε))).
// It also returns the clip fraction and the approximate KL ½(logπ − logπ_old)².
func graphActorLoss(logp, oldLogp, adv, mask *G.Node, eps float64) (loss, clipFrac, approxKL *G.Node) {
	diff := G.Sub(logp, oldLogp)
	ratio := G.Exp(diff)
	surr1 := G.Mul(adv, ratio)
	surr2 := G.Mul(adv, G.ClipScalar(ratio, 1-eps, 1+eps))
	loss = G.Neg(graphMaskedMean(G.Min(surr1, surr2), mask))
	clipped := G.ConvertDType(G.GreaterThan(G.Abs(G.SubScalar(ratio, 1)), G.Scalar(ratio.Graph(), ratio.DType(), eps)), ratio.DType())
	den := G.MaxScalar(G.ReduceAllSum(mask), 1)
	clipFrac = G.StopGradient(G.Div(G.ReduceAllSum(G.Mul(clipped, mask)), den))
	approxKL = G.StopGradient(G.Div(G.ReduceAllSum(G.Mul(G.MulScalar(G.Square(diff), 0.5), mask)), den))
	return loss, clipFrac, approxKL
}

// graphCriticLoss is RLTrainer.critic_loss_fn (spec §1.6):
// ½·masked_mean(max((V − R)², (clip(V, V_old ± c) − R)²)).
func graphCriticLoss(values, oldValues, returns, mask *G.Node, clip float64) *G.Node {
	lo := G.AddScalar(oldValues, -clip)
	hi := G.AddScalar(oldValues, clip)
	vclip := G.Min(G.Max(values, lo), hi)
	l1 := G.Square(G.Sub(values, returns))
	l2 := G.Square(G.Sub(vclip, returns))
	return G.MulScalar(graphMaskedMean(G.Max(l1, l2), mask), 0.5)
}

// graphLMLoss is the PTX causal-LM loss: −Σ logp·m / Σ m over label tokens (HF's mean over labels).
func graphLMLoss(logp, labelMask *G.Node) *G.Node {
	return G.Neg(G.Div(G.ReduceAllSum(G.Mul(logp, labelMask)), G.MaxScalar(G.ReduceAllSum(labelMask), 1)))
}
