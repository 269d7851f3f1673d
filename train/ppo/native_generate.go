package ppo

import (
	"fmt"

	"github.com/saferlhf/saferlhf/train/model"
)

// nativeGenerator samples with the native engine (backend "native"): the run's native actor
// (adapters applied unmerged) generates exactly as model.Generator does.
type nativeGenerator struct{ n *GraphNets }

func (g *nativeGenerator) generate(prompts [][]int32, opts model.GenerateOptions) (*model.Rollout, error) {
	nn, err := g.n.natives()
	if err != nil {
		return nil, err
	}
	ro, err := nn.actor.m.Generate(prompts, opts)
	if err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	return ro, nil
}
