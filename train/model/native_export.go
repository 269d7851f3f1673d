package model

import "math/rand/v2"

// Hooks for engines outside GoMLX (native/llama) that must compute exactly
// what the graph and the generator do.

// RopeInvFreq returns RoPE's inverse frequencies θ^(-2i/dh), i < dh/2, with
// HF rope_scaling applied for sequences of length seqLen: the same table the
// graph builds.
func RopeInvFreq(cfg *Config, seqLen int) []float64 { return invFreq(cfg, seqLen) }

// Sampler picks tokens exactly as Generator does (repetition penalty, then
// greedy or temperature + top-p); it keeps scratch buffers between calls.
type Sampler struct{ s sampler }

// Sample picks the next token of one row from its logits and history.
func (s *Sampler) Sample(logits []float32, history []int32, opts *GenerateOptions, rng *rand.Rand) int32 {
	return s.s.sample(logits, history, opts, rng)
}

// NewSamplingRNG returns the random source Generator.Generate draws from for opts.Seed.
func NewSamplingRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)) }

// PromptBucket is the multiple Generator rounds the prompt width up to.
const PromptBucket = 16
