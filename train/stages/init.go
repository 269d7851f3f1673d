package stages

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/train/model"
)

// scratchWeights gives cfg (the architecture of --model) fresh weights drawn as HF initialises
// LLaMA (normal, std 0.02), with the vocabulary resized to the tokenizer's: a small trunk over the
// Llama-2 32K vocabulary is `--model stories260K.bin --tokenizer tokenizer.model --init scratch`.
func scratchWeights(cfg *model.Config, tokPath string, seed uint64) (model.Weights, error) {
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return nil, err
	}
	cfg.VocabSize = tok.VocabSize()
	cfg.BOS, cfg.EOS, cfg.Pad = tok.BOS(), tok.EOS(), tok.Pad()
	cfg.ScoreDim = 0
	return model.RandomWeights(cfg, seed), nil
}

// freeze marks the model variables outside --train-layers frozen: "all" trains everything,
// "head" the score head only, "top-N" the score head, the final norm and the last N layers,
// "no-embed" everything but the token embedding.
func freeze(ctx *context.Context, cfg *model.Config, layers string) error {
	trainable, err := layerFilter(cfg, layers)
	if err != nil {
		return err
	}
	ctx.EnumerateVariablesInScope(func(v *context.Variable) {
		v.Trainable = trainable(v.Name())
	})
	return nil
}

// layerFilter returns which weight names --train-layers trains.
func layerFilter(cfg *model.Config, layers string) (func(name string) bool, error) {
	head := func(n string) bool { return strings.HasPrefix(n, "score_head.") || n == model.NameLMHead }
	switch {
	case layers == "" || layers == "all":
		return func(string) bool { return true }, nil
	case layers == "head":
		return head, nil
	case layers == "no-embed":
		return func(n string) bool { return n != model.NameEmbed }, nil
	case strings.HasPrefix(layers, "top-"):
		k, err := strconv.Atoi(strings.TrimPrefix(layers, "top-"))
		if err != nil || k < 0 || k > cfg.NumLayers {
			return nil, fmt.Errorf("--train-layers %q: want top-N with 0 <= N <= %d", layers, cfg.NumLayers)
		}
		return func(n string) bool {
			if head(n) || n == model.NameFinalNorm {
				return true
			}
			for l := cfg.NumLayers - k; l < cfg.NumLayers; l++ {
				if strings.HasPrefix(n, model.LayerName(l, "")) {
					return true
				}
			}
			return false
		}, nil
	}
	return nil, fmt.Errorf("--train-layers %q: want all, head, top-N or no-embed", layers)
}
