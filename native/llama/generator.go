package llama

import (
	"github.com/gomlx/gomlx/backends"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
)

// Generator is what model.Generator and Model both do: sample a rollout.
type Generator interface {
	Generate(prompts [][]int32, opts model.GenerateOptions) (*model.Rollout, error)
}

// NewGenerator returns a generator over weights w: the native engine's when
// be was started as "native" (backend.IsNative), else the GoMLX KV-cache
// generator on be. Both sample identically (same sampler and random stream).
func NewGenerator(be backends.Backend, cfg *model.Config, w model.Weights) (Generator, error) {
	if backend.IsNative(be) {
		return New(cfg, w, 1)
	}
	return model.NewGeneratorFromWeights(be, cfg, w)
}
