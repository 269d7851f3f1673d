package model

// Hooks for engines outside GoMLX (native/llama) that must compute exactly
// what the graph and the generator do.

// RopeInvFreq returns RoPE's inverse frequencies θ^(-2i/dh), i < dh/2, with
// HF rope_scaling applied for sequences of length seqLen: the same table the
// graph builds.
func RopeInvFreq(cfg *Config, seqLen int) []float64 { return invFreq(cfg, seqLen) }

// PromptBucket is the multiple Generator rounds the prompt width up to.
const PromptBucket = 16
