package model

// RopeInvFreq returns RoPE's inverse frequencies θ^(-2i/dh), i < dh/2, with
// HF rope_scaling applied for sequences of length seqLen: the same table the
// graph builds, for engines outside GoMLX (native/llama).
func RopeInvFreq(cfg *Config, seqLen int) []float64 { return invFreq(cfg, seqLen) }
