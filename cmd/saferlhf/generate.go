package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
)

// runGenerate samples one completion of a prompt with the KV-cache generator.
func runGenerate(args []string) error {
	fs := newFlagSet("generate", "")
	modelPath := fs.String("model", "", "model: a llama2.c .bin checkpoint or an HF directory (config.json + safetensors)")
	tokPath := fs.String("tokenizer", "", "tokenizer file: tokenizer.model (SentencePiece) or llama2.c *.bin")
	prompt := fs.String("prompt", "", "prompt text")
	template := fs.String("template", "none", "prompt template: none or safe-rlhf (BEGINNING OF CONVERSATION: USER: ... ASSISTANT:)")
	temperature := fs.Float64("temperature", 0, "sampling temperature; 0 is greedy (ties to the lowest id)")
	topP := fs.Float64("top-p", 1, "nucleus sampling mass (1: off)")
	repPenalty := fs.Float64("repetition-penalty", 1, "HF repetition penalty (1: off)")
	maxNew := fs.Int("max-new-tokens", 128, "maximum number of generated tokens")
	seed := fs.Uint64("seed", 1, "sampling seed")
	printIDs := fs.Bool("print-ids", false, "print the generated ids (not the prompt's) space-separated on one line instead of text")
	backendSpec := fs.String("backend", "", "GoMLX backend: go (default, $SAFERLHF_BACKEND), xla:cuda or xla:/abs/plugin.so")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	if *modelPath == "" || *tokPath == "" {
		return usagef("--model and --tokenizer are required")
	}
	if *maxNew <= 0 {
		return usagef("--max-new-tokens must be > 0")
	}
	if *temperature < 0 || *topP <= 0 || *topP > 1 || *repPenalty <= 0 {
		return usagef("need --temperature >= 0, 0 < --top-p <= 1, --repetition-penalty > 0")
	}
	text := *prompt
	switch *template {
	case "none":
	case "safe-rlhf":
		var err error
		if text, err = datasets.FormatPrompt([]string{text}, ""); err != nil {
			return err
		}
	default:
		return usagef("--template %q: want none or safe-rlhf", *template)
	}
	tok, err := tokenizer.Load(*tokPath)
	if err != nil {
		return err
	}
	cfg, w, err := model.LoadAny(*modelPath)
	if err != nil {
		return err
	}
	if tok.VocabSize() > cfg.VocabSize {
		return fmt.Errorf("tokenizer %s has %d ids, model %s only %d", *tokPath, tok.VocabSize(), *modelPath, cfg.VocabSize)
	}
	be, err := backend.New(*backendSpec)
	if err != nil {
		return err
	}
	gen, err := model.NewGeneratorFromWeights(be, cfg, w)
	if err != nil {
		return err
	}
	ids := tok.Encode(text, true)
	ro, err := gen.Generate([][]int32{ids}, model.GenerateOptions{
		MaxNewTokens: *maxNew, Temperature: *temperature, TopP: *topP, RepetitionPenalty: *repPenalty,
		Seed: *seed, EOS: tok.EOS(), Pad: tok.Pad(), Unk: tok.Unk(),
	})
	if err != nil {
		return err
	}
	out := ro.Seq[0][ro.PromptWidth : ro.PromptWidth+ro.ResponseLen[0]]
	if *printIDs {
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
