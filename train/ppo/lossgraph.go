package ppo

import (
	G "github.com/gomlx/gomlx/pkg/core/graph"
)

// graphLMLoss is the PTX causal-LM loss (spec §1.9): −Σ logp·m / Σ m over the label tokens (HF's
// mean over labels), given token log-probs [B, T−1] and the label mask of the same shape.
func graphLMLoss(logp, labelMask *G.Node) *G.Node {
	return G.Neg(G.Div(G.ReduceAllSum(G.Mul(logp, labelMask)), G.MaxScalar(G.ReduceAllSum(labelMask), 1)))
}
