// Package ppo is the Safe RLHF reinforcement-learning stage: PPO-Lagrangian (Dai et al., ICLR 2024;
// reference safe_rlhf/algorithms/ppo_lag), with plain PPO, the fixed-penalty reward-shaping
// baseline and a PID-Lagrangian multiplier as variants (Config.Algorithm).
//
// The loop (Trainer.Run → trainStep → rlStep, trainer.go) reads top to bottom in the order of
// spec §1.8:
//
//	for each prompt batch:
//	    for each micro-batch: Generate (KV-cache sampling) → Score (actor and reference log-probs,
//	        reward and cost end scores, reward and cost critic values: one graph) → episode-cost window
//	    for update_iters passes, for each micro-batch (one rl_step = one global step):
//	        λ update (kernels.Lagrange) → KL shaping + fused reward/cost GAE (kernels, host, no grad)
//	        → actor step → reward-critic step → cost-critic step (each loss + gradient + clipped AdamW
//	        in one compiled graph: trainer.Stepper with kernels/ingraph losses)
//	    metrics.jsonl / perf.jsonl line, progress bar, checkpoint every N batches
//
// Nets is the boundary to the networks; GraphNets implements it with GoMLX: the six models live in
// one context under ScopeActor, ScopeReference, ScopeReward, ScopeCost, ScopeRewardCritic and
// ScopeCostCritic (reference and score models frozen, critics initialised from the reward and cost
// models).
//
// Exact resume: checkpoints are train/checkpoint's, as for the supervised stages
// (OutDir/checkpoints/step-NNNNNNNN, checksummed, verified on resume): the actor as an HF model
// (it opens with generate and eval-*), every trained variable and optimiser moment bit for bit
// (Nets.Checkpoint; the frozen reference, reward and cost models are referenced by path and hash,
// not copied), and state.json (step, global step, λ state with the episode-cost window, data
// positions, config; no random state: every sampled row's stream is a function of --seed, the
// rollout step and the row). A resumed run keeps the metrics.jsonl and perf.jsonl records
// up to the checkpoint. A run killed at any point and resumed writes a metrics.jsonl identical to
// an uninterrupted run's (tested with SIGKILL in cmd/saferlhf). Wall-clock figures go to
// perf.jsonl, which is not reproducible by nature.
//
// Deliberate differences from the reference: the reference's [:, start:] slices are full-width
// tensors with a mask that is zero before start (no Slice in gradient graphs); masked means skip
// rows with an empty mask instead of returning NaN; with PTX the actor minimises
// ½(actor loss + ptx_coeff·PTX loss) in one step, which is the gradient DeepSpeed's doubled
// accumulation applies; responses are right-padded to MaxNewTokens so the graphs see few shapes;
// a non-finite metric stops the run with an error before anything is checkpointed, and a checkpoint
// whose weights or optimiser state hold NaN/Inf is never written. Rollouts that
// never emit EOS are kept whole, as in the reference (the end score is read at the last token).
// With LoRA (GraphNetsConfig.LoRA, --lora-rank) the actor trains adapters over the frozen reference
// weights and each critic trains its score head and adapters over its frozen score model, so one
// copy of each base serves two of the six models; otherwise the actor and critics are fully fine-tuned.
//
// Started by a launcher, Run is one rank of a data-parallel run (dist.go: global batch sizes, each
// rank's share of every micro-batch, gradients averaged across ranks, λ from the ranks' mean
// window cost as the reference computes it, rank 0 writing the outputs).
package ppo
