// Package stages holds the first three stages of Safe RLHF as trainers built on
// train/trainer: supervised fine-tuning (SFT, spec §6), the reward model (RM,
// spec §4) and the cost model (CM, spec §5).
//
//	cfg := stages.Defaults(stages.RM) // reference script settings (lr 2e-5 cosine, warmup 0.03, wd 0.1, reg 0.001, ...)
//	cfg.Model, cfg.Data, cfg.Out = "out/sft/model", []string{"helpful.jsonl.gz"}, "out/rm"
//	res, err := stages.Run(ctx, stages.RM, cfg) // res.Initial / res.Final: held-out metrics before/after
//
// SFT trains the causal-LM cross-entropy on label tokens only: the prompt template
// "BEGINNING OF CONVERSATION: USER: … ASSISTANT:" and user turns are masked (−100),
// assistant turns + EOS are trained, the mean is over the label tokens of the
// micro-batch (SFTLoss). Multi-turn samples train every assistant turn.
//
// RM and CM start from the model at --model (llama2.c .bin or an HF dir such as
// the SFT output) with its LM head removed and a fresh score head (bias zero,
// spec §3). Better/worse (RM) or unsafer/safer (CM) rows go through one 2B-row
// forward pass; PairwiseScoreLoss gives the sequence-wise (default) or token-wise
// loss with L2 regularisation, the accuracy and, for the CM, the sign terms
// (cost > 0 means unsafe) and sign accuracy. Responses without a safety label (the
// hh-rlhf harmless pairs) contribute the pairwise term only.
//
// Sequences have a fixed width T (--max-length) so one graph is compiled.
// Longer examples are truncated: "right" as the reference (the end is cut), or
// "prompt-left" (the oldest prompt tokens after BOS go first, keeping at least 8,
// so short windows still see the responses and their EOS) — the setting for the
// CPU demo's T = 64.
//
// The final model is saved as an HF directory (config.json, model.safetensors and
// the tokenizer file) under <out>/model, which the next stage, PPO-Lag and the
// evaluation commands load with LoadModel.
package stages
