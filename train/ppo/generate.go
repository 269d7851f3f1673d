package ppo

import (
	"fmt"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
)

// generator samples responses from the actor: model.Generator over the actor scope, or the
// native engine.
type generator interface {
	generate(prompts [][]int32, opts model.GenerateOptions) (*model.Rollout, error)
}

// Generate implements Nets: prompts longer than MaxPromptTokens keep BOS and their end, where
// the "ASSISTANT:" cue is (datasets.TruncatePrompt, the rule loadPrompts applies), and are
// sampled with a KV cache from the actor's live weights; the response is right padded to exactly
// MaxNewTokens so the scoring and update graphs see few distinct shapes.
func (n *GraphNets) Generate(prompts [][]int32, seed, firstRow uint64) (*Rollout, error) {
	c := n.cfg
	ps := make([][]int32, len(prompts))
	for i, p := range prompts {
		ps[i] = datasets.TruncatePrompt(p, c.MaxPromptTokens)
	}
	opts := model.GenerateOptions{MaxNewTokens: c.MaxNewTokens, Temperature: c.Temperature, TopP: c.TopP, TopK: c.TopK,
		RepetitionPenalty: c.RepPenalty, EOS: c.EOS, Pad: c.Pad, Unk: c.Pad, Seed: seed, FirstRow: firstRow}
	ro, err := n.gen.generate(ps, opts)
	if err != nil {
		return nil, fmt.Errorf("ppo: %w", err)
	}
	B, S := len(ps), ro.PromptWidth
	T := S + c.MaxNewTokens
	r := &Rollout{B: B, T: T, S: S, Seq: make([]int32, B*T), Mask: make([]float32, B*T)}
	for i := 0; i < B; i++ {
		for t := 0; t < T; t++ {
			r.Seq[i*T+t] = c.Pad
		}
		copy(r.Seq[i*T:], ro.Seq[i])
		for t, m := range ro.AttentionMask[i] {
			r.Mask[i*T+t] = float32(m)
		}
	}
	return r, nil
}

// kvGenerator is model.Generator over the actor scope.
type kvGenerator struct{ gen *model.Generator }

func newGenerator(n *GraphNets) (generator, error) {
	if backend.IsNative(n.cfg.Backend) {
		return &nativeGenerator{n: n}, nil
	}
	g, err := model.NewGenerator(n.cfg.Backend, n.actorCfg, n.ctx.InAbsPath(ScopeActor))
	if err != nil {
		return nil, fmt.Errorf("ppo: %w", err)
	}
	g.DeviceSampling = !model.PureGo(n.cfg.Backend) // XLA: sample in graph; pure Go: the host sampler, bit for bit
	g.Transfers = &n.genXfer
	return kvGenerator{gen: g}, nil
}

func (g kvGenerator) generate(prompts [][]int32, opts model.GenerateOptions) (*model.Rollout, error) {
	return g.gen.Generate(prompts, opts)
}
