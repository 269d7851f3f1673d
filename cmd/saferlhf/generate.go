package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/model"
)

// generateConfig is the command line of generate.
type generateConfig struct {
	Model             string  `flag:"model" help:"model: a llama2.c .bin checkpoint or an HF directory (config.json + safetensors)"`
	Tokenizer         string  `flag:"tokenizer" help:"tokenizer file: tokenizer.model (SentencePiece) or llama2.c *.bin; default: the one inside (or next to) --model whose vocabulary fits it"`
	Prompt            string  `flag:"prompt" help:"prompt text"`
	Template          string  `flag:"template" help:"prompt template: none or safe-rlhf (BEGINNING OF CONVERSATION: USER: ... ASSISTANT:)"`
	Temperature       float64 `flag:"temperature" help:"sampling temperature; 0 is greedy (ties to the lowest id)"`
	TopP              float64 `flag:"top-p" help:"nucleus sampling mass (1: off)"`
	TopK              int     `flag:"top-k" help:"keep the K most likely tokens before top-p (0: off; HF's default 50)"`
	RepetitionPenalty float64 `flag:"repetition-penalty" help:"HF repetition penalty (1: off)"`
	MaxNewTokens      int     `flag:"max-new-tokens" help:"maximum number of generated tokens"`
	Seed              uint64  `flag:"seed" help:"sampling seed"`
	PrintIDs          bool    `flag:"print-ids" help:"print the generated ids (not the prompt's) space-separated on one line instead of text"`
	Backend           string  `flag:"backend" help:"backend: native (default when built with cgo), go (pure-Go GoMLX), xla:cuda or xla:/abs/plugin.so; default $SAFERLHF_BACKEND"`
}

func (c *generateConfig) validate() error {
	var ck config.Checker
	ck.Required("model", c.Model)
	ck.PositiveInt("max-new-tokens", c.MaxNewTokens)
	ck.NonNegative("temperature", c.Temperature)
	ck.Fraction("top-p", c.TopP)
	ck.NonNegativeInt("top-k", c.TopK)
	ck.Positive("repetition-penalty", c.RepetitionPenalty)
	ck.OneOf("template", c.Template, "none", "safe-rlhf")
	return ck.Err()
}

// runGenerate samples one completion of a prompt with the KV-cache generator.
func runGenerate(args []string) error {
	c := generateConfig{Template: "none", TopP: 1, TopK: 50, RepetitionPenalty: 1, MaxNewTokens: 128, Seed: 1}
	fs := newFlagSet("generate", "")
	config.Register(fs, &c)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if err := c.validate(); err != nil {
		return usagef("%v", err)
	}
	text := c.Prompt
	if c.Template == "safe-rlhf" {
		var err error
		if text, err = datasets.FormatPrompt([]string{text}, ""); err != nil {
			return err
		}
	}
	tokPath, err := model.ResolveTokenizer(c.Tokenizer, c.Model)
	if err != nil {
		return err
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return err
	}
	cfg, w, err := model.LoadAny(c.Model)
	if err != nil {
		return err
	}
	if err := model.CheckPolicy(cfg, c.Model); err != nil {
		return usagef("--model: %v", err)
	}
	if tok.VocabSize() > cfg.VocabSize {
		return fmt.Errorf("tokenizer %s has %d ids, model %s only %d", tokPath, tok.VocabSize(), c.Model, cfg.VocabSize)
	}
	be, err := backend.New(c.Backend)
	if err != nil {
		return err
	}
	gen, err := llama.NewGenerator(be, cfg, w)
	if err != nil {
		return err
	}
	ids := tok.Encode(text, true)
	if err := cfg.CheckContext(fmt.Sprintf("the prompt's %d tokens + --max-new-tokens %d", len(ids), c.MaxNewTokens),
		len(ids)+c.MaxNewTokens, "--model "+c.Model); err != nil {
		return err
	}
	ro, err := gen.Generate([][]int32{ids}, model.GenerateOptions{
		MaxNewTokens: c.MaxNewTokens, Temperature: c.Temperature, TopP: c.TopP, TopK: c.TopK, RepetitionPenalty: c.RepetitionPenalty,
		Seed: c.Seed, EOS: tok.EOS(), Pad: tok.Pad(), Unk: tok.Unk(),
	})
	if err != nil {
		return err
	}
	out := ro.Seq[0][ro.PromptWidth : ro.PromptWidth+ro.ResponseLen[0]]
	if c.PrintIDs {
		parts := make([]string, len(out))
		for i, id := range out {
			parts[i] = strconv.Itoa(int(id))
		}
		fmt.Println(strings.Join(parts, " "))
		return nil
	}
	fmt.Println(tok.Decode(out))
	return nil
}
