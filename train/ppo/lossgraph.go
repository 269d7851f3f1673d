package ppo

import (
	G "github.com/gomlx/gomlx/pkg/core/graph"
)

// graphLMLoss is the PTX causal-LM loss (spec §1.9): −Σ logp·m / den over the label tokens, given
// token log-probs [B, T−1], the label mask of the same shape and the scalar den (HF's mean over
// labels: max(Σ m, 1) in one process; see PTXBatch.Den across ranks).
func graphLMLoss(logp, labelMask, den *G.Node) *G.Node {
	return G.Neg(G.Div(G.ReduceAllSum(G.Mul(logp, labelMask)), den))
}
