package ppo

import (
	"fmt"
	"math/rand/v2"
)

// PromptSet is the tokenized prompt-only training set with a deterministic per-epoch shuffle and
// an exact position, so a resumed run draws the same prompts as an uninterrupted one.
type PromptSet struct {
	prompts [][]int32
	seed    uint64
	order   []int
	Pos     DataPosition
}

// DataPosition is where the next prompt batch starts.
type DataPosition struct {
	Epoch int `json:"epoch"`
	Index int `json:"index"`
}

// NewPromptSet returns a set over prompts (each non-empty); seed fixes the shuffles.
func NewPromptSet(prompts [][]int32, seed uint64) (*PromptSet, error) {
	if len(prompts) == 0 {
		return nil, fmt.Errorf("prompt set: no prompts")
	}
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("prompt set: prompt %d is empty", i)
		}
	}
	s := &PromptSet{prompts: prompts, seed: seed}
	s.Seek(DataPosition{})
	return s, nil
}

// Len is the number of prompts.
func (s *PromptSet) Len() int { return len(s.prompts) }

// Seek moves to pos (the epoch's order is recomputed from the seed).
func (s *PromptSet) Seek(pos DataPosition) {
	s.Pos = pos
	r := rand.New(rand.NewPCG(s.seed, uint64(pos.Epoch)+0x9e3779b97f4a7c15))
	s.order = r.Perm(len(s.prompts))
}

// Next returns the next n prompts, dropping an incomplete batch at the end of an epoch (the
// reference's DataLoader keeps it; dropping keeps every rollout batch the same size).
func (s *PromptSet) Next(n int) [][]int32 {
	if n > len(s.prompts) {
		n = len(s.prompts)
	}
	if s.Pos.Index+n > len(s.prompts) {
		s.Seek(DataPosition{Epoch: s.Pos.Epoch + 1})
	}
	out := make([][]int32, n)
	for i := range out {
		out[i] = s.prompts[s.order[s.Pos.Index+i]]
	}
	s.Pos.Index += n
	return out
}

// BatchesPerEpoch is the number of full batches of n prompts in one epoch.
func (s *PromptSet) BatchesPerEpoch(n int) int {
	if n > len(s.prompts) {
		return 1
	}
	return len(s.prompts) / n
}
