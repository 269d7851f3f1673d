// Package kernels implements the numerical core of Safe RLHF on the CPU,
// exactly as the reference implementation (PKU-Alignment/safe-rlhf, spec
// §1–5) computes it, for float32 (the training path, accumulated in float64)
// and float64 (the verification path). Package kernels/ingraph holds the same
// math as GoMLX graph functions; kernels/refcheck checks both against the
// reference's test vectors (saferlhf verify-reference).
//
// # Conventions
//
// Tensors are flat row-major slices with explicit sizes: B rows; per-token RL
// tensors have width L = T−1 (spec notation); losses and advantages live on
// the response slice [:, start:] of width N = L − start. Masks are 0/1 values
// of the element type. Every kernel is generic over Float and takes a
// *Workspace (nil is allowed: single-threaded, allocating) and caller-owned
// output buffers, so that with a Workspace the steady state allocates nothing;
// rows are split over the Workspace's goroutines when B·width ≥ 32768.
//
// # API
//
//	ws := kernels.NewWorkspace(0) // GOMAXPROCS workers; defer ws.Close()
//	MaskedMean(ws, x, mask, B, N) (float64, error)                                  spec §1.5
//	Whiten(ws, x, mask, B, N, shiftMean, out) error
//	KLShapedRewardsCosts(ws, KLArgs, rewards, costs) (KLStats, error)              spec §1.3 (PPO-Lag)
//	KLShapedRewards(ws, KLArgs, rewards) (KLStats, error)                          spec §2 (PPO)
//	GAE(ws, GAEArgs, GAEOut) error   fused reward+cost backward sweep; NewGAEOut(B, N, cost)   spec §1.4
//	GAE1(ws, B, L, start, gamma, lambda, values, rewards, mask, adv, ret) error
//	ActorLossPPOLag(ws, ActorArgs, grad) (ActorResult, error)  loss, dL/dlogπ, clipfrac, approx KL  spec §1.5
//	ActorLossPPO(ws, ActorArgs, grad) (ActorResult, error)                         spec §2
//	CriticLoss(ws, CriticArgs, grad) (float64, error)  loss and dL/dV              spec §1.6
//	EndScores(B, T, mask, rewardScores, costScores, endReward, endCost, endIndex) error   spec §3
//	RewardLoss(ws, PreferenceArgs, betterEnd, worseEnd) (RewardLossResult, error)     spec §4
//	CostLoss(ws, SafetyPreferenceArgs, saferEnd, unsaferEnd) (CostLossResult, error)  spec §5
//	NewLagrange(LagrangeConfig) (*Lagrange, error)                                 spec §1.7
//	  (*Lagrange).AddEpisodeCosts(costs) error; Update(globalStep) LagrangeStep;
//	  Lambda(); LogLambda(); EpisodeCost(); State() LagrangeState; SetState(LagrangeState) error
//	NewNormalizer(type, function, momentum) (*Normalizer, error)                   spec §3
//	  UpdateNormalizer(n, batch) error; NormalizeInto(n, x, out) error; (*Normalizer).Update/Normalize
//
// grad and the end-score outputs may be nil when not wanted. Per-token inputs
// of the actor and critic losses are the response slice [:, start:] (width N);
// KL shaping and GAE take the full width L and the start index.
//
// The Lagrange multiplier follows the reference exactly with Method
// LagrangeSGD (the default); Method LagrangePID is the PID Lagrangian of
// Stooke, Achiam & Abbeel (ICML 2020): e = J_c − d, I ← clip(I + e, 0, λ_max/K_I)
// (anti-windup), D = max(0, Δ EMA of J_c), λ = clip(K_P·e + K_I·I + K_D·D, 0, λ_max).
// Both honour DelaySteps and the cost window; State/SetState round-trip
// through JSON for exact checkpoint resume.
//
// # Where this package deliberately differs from the reference
//
//   - Masked means skip rows whose mask is all zero (the reference divides by
//     zero and returns NaN); if every row is empty the mean is 0 and gradients are 0.
//   - A row of the KL shaping with an all-zero sequence mask has no end
//     position and receives no end score; EndScores returns index −1 and score 0
//     for it (the reference raises). RM/CM losses return an error for such rows.
//   - log λ is capped at MaxLogLambda (λ ≈ 2.7e43) even without λ_max, so λ is
//     never Inf (the reference overflows); an Update on an empty cost window
//     does nothing (the reference would produce NaN).
//   - A NaN or ±Inf input gives an error wrapping ErrNonFinite that names the
//     tensor and element; the kernels detect it from their accumulators, so
//     the check costs nothing when every value is finite.
//   - The unbiased variance of a one-element normalizer batch is taken as 0 (NaN in the reference).
//
// The reference computes its accuracies in float32; these kernels return them in float64.
package kernels
