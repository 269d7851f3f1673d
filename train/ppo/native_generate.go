package ppo

import (
	"fmt"

	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/model"
)

// nativeGenerator samples with the native engine (backend "native"): at each rollout it reads
// the actor's live weights (LoRA merged) from the context into a native model, then generates
// exactly as model.Generator does.
type nativeGenerator struct{ n *GraphNets }

func (g *nativeGenerator) generate(prompts [][]int32, opts model.GenerateOptions) (*model.Rollout, error) {
	w, err := model.GetWeights(g.n.ctx.InAbsPath(ScopeActor), g.n.actorCfg)
	if err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	m, err := llama.New(g.n.actorCfg, w, 1)
	if err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	return m.Generate(prompts, opts)
}
