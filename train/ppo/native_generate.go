package ppo

import (
	"fmt"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/model"
)

// nativeGenerator samples with the native engine (backend "native"): at each
// rollout it reads the actor's live weights (LoRA merged) from the context
// into a native model, then generates exactly as kvGenerator does.
type nativeGenerator struct {
	n    *GraphNets
	opts model.GenerateOptions
}

func newNativeGenerator(n *GraphNets) generator {
	c := n.cfg
	return &nativeGenerator{n: n, opts: model.GenerateOptions{MaxNewTokens: c.MaxNewTokens, Temperature: c.Temperature,
		TopP: c.TopP, TopK: c.TopK, RepetitionPenalty: c.RepPenalty, EOS: c.EOS, Pad: c.Pad, Unk: c.Pad}}
}

func (g *nativeGenerator) generate(prompts [][]int32, seed uint64) (*Rollout, error) {
	c := g.n.cfg
	w, err := model.GetWeights(g.n.ctx.InAbsPath(ScopeActor), g.n.actorCfg)
	if err != nil {
		return nil, fmt.Errorf("ppo: native generate: %w", err)
	}
	m, err := llama.New(g.n.actorCfg, w, 1)
	if err != nil {
		return nil, fmt.Errorf("ppo: native generate: %w", err)
	}
	ps := make([][]int32, len(prompts))
	for i, p := range prompts {
		p = datasets.TruncatePrompt(p, c.MaxPromptTokens)
		ps[i] = p
	}
	opts := g.opts
	opts.Seed = seed
	ro, err := m.Generate(ps, opts)
	if err != nil {
		return nil, fmt.Errorf("ppo: native generate: %w", err)
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
