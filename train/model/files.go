package model

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// SaveWithTokenizer is Save plus a copy of the tokenizer file at tokPath (when
// set) in dir, so that the next stage finds the model and its tokenizer in one place.
// The tensors are stored in cfg.TorchDType (the loaded checkpoint's, or
// --save-dtype: HF's behaviour), float32 when it is unknown.
func SaveWithTokenizer(dir string, cfg *Config, w Weights, tokPath string) error {
	dt, err := SaveDType(cfg.TorchDType)
	if err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	if err := SaveAs(dir, cfg, w, dt); err != nil {
		return err
	}
	return copyTokenizer(dir, tokPath)
}

// SaveTensorsWithTokenizer is SaveWithTokenizer for tensors given as safetensors.Tensor
// (StreamWeights' streams: the model never whole on the host), via SaveTensorsAs.
func SaveTensorsWithTokenizer(dir string, cfg *Config, ts []safetensors.Tensor, tokPath string) error {
	dt, err := SaveDType(cfg.TorchDType)
	if err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	if err := SaveTensorsAs(dir, cfg, ts, dt); err != nil {
		return err
	}
	return copyTokenizer(dir, tokPath)
}

// copyTokenizer copies the tokenizer file tokPath (if any) into dir.
func copyTokenizer(dir, tokPath string) error {
	if tokPath == "" {
		return nil
	}
	dst := filepath.Join(dir, filepath.Base(tokPath))
	if abs, _ := filepath.Abs(tokPath); abs == dst {
		return nil
	}
	b, err := os.ReadFile(tokPath)
	if err != nil {
		return fmt.Errorf("save %s: tokenizer: %w", dir, err)
	}
	if err := atomicfile.WriteBytes(dst, b, 0o644); err != nil {
		return fmt.Errorf("save %s: tokenizer: %w", dir, err)
	}
	return nil
}

// ResolveTokenizer returns the tokenizer path: explicit if given, else the
// tokenizer file inside (or next to) the model path whose vocabulary matches the
// model's (tok512.bin for stories260K, tokenizer.model for Llama-2-vocabulary models,
// also for the reference's models with a <pad> row added: see AddedSpecialTokens).
func ResolveTokenizer(explicit, modelPath string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	vocab, err := vocabOf(modelPath)
	if err != nil {
		return "", err
	}
	return ResolveTokenizerFor("", modelPath, vocab)
}

// vocabOf reads the vocabulary size of a model: an HF directory's or config file's
// config.json, or a llama2.c checkpoint's header (checked as LoadLlama2C checks it, so a file
// that is no model is reported as such, not as a tokenizer of a nonsense size not found).
func vocabOf(path string) (int, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("model: %w", err) // not "no tokenizer found" for a model that is not there
	}
	if st.IsDir() {
		cfg, err := LoadHFConfig(path)
		if err != nil {
			return 0, err
		}
		return cfg.VocabSize, nil
	}
	if strings.HasSuffix(path, ".json") {
		cfg, _, err := LoadAny(path)
		if err != nil {
			return 0, err
		}
		return cfg.VocabSize, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	cfg, err := readLlama2CHeader(path, f, st.Size())
	if err != nil {
		return 0, fmt.Errorf("model %w", err)
	}
	return cfg.VocabSize, nil
}

// ResolveTokenizerFor is ResolveTokenizer for a known vocabulary size (0: any).
func ResolveTokenizerFor(explicit, modelPath string, vocab int) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	p, dir, err := besideModel(modelPath, vocab)
	if err != nil || p != "" {
		return p, err
	}
	return "", fmt.Errorf("no tokenizer given and none with %d tokens (or up to %d fewer) found in %s as %s (use --tokenizer)", vocab, AddedSpecialTokens, dir, tokenizerFilesText())
}

// OwnTokenizer returns the tokenizer saved inside (or next to) a score model, as train-rm and
// train-cm save it. A score model is only read with its own tokenizer: another tokenizer's ids,
// even of the same vocabulary size, may spell other text, so none found is an error.
func OwnTokenizer(modelPath string) (string, error) {
	vocab, err := vocabOf(modelPath)
	if err != nil {
		return "", err
	}
	p, dir, err := besideModel(modelPath, vocab)
	if err != nil || p != "" {
		return p, err
	}
	return "", fmt.Errorf("score model %s: no tokenizer with its %d tokens in %s: a score model is read with the tokenizer it was trained with "+
		"(train-rm and train-cm save it beside the model; copy it there as %s)", modelPath, vocab, dir, tokenizerFilesText())
}

// tokenizerFiles are the names besideModel looks for inside (or next to) a model, in order.
var tokenizerFiles = []string{"tokenizer.model", "tok512.bin", "tokenizer.bin"}

// tokenizerFilesText lists tokenizerFiles for an error message: "a, b or c".
func tokenizerFilesText() string {
	n := len(tokenizerFiles)
	return strings.Join(tokenizerFiles[:n-1], ", ") + " or " + tokenizerFiles[n-1]
}

// AddedSpecialTokens is how many rows a model's vocabulary may have beyond its tokenizer's: the
// reference adds the special tokens a tokenizer lacks (<pad>, </s>, <s>, <unk>) and resizes the
// embedding (spec §6), so its Llama-2 models have 32001 rows for tokenizer.model's 32000. Those
// rows are never produced by the tokenizer (pad is <unk> here, and the reference masks both).
const AddedSpecialTokens = 4

// besideModel returns the tokenizer file inside (or next to) modelPath whose vocabulary is vocab
// (0: any) or, failing that, the largest one at most AddedSpecialTokens short of it; "" when there
// is none, and the directory searched. A tokenizer file there that does not load is an error
// naming it when no other one fits (not "no tokenizer found").
func besideModel(modelPath string, vocab int) (path, dir string, err error) {
	st, err := os.Stat(modelPath)
	if err != nil {
		return "", "", fmt.Errorf("model: %w", err) // not "no tokenizer found" for a model that is not there
	}
	dir = modelPath
	if !st.IsDir() {
		dir = filepath.Dir(modelPath)
	}
	best, bestSize := "", 0
	var broken []error // tokenizer files that do not load: the error when none fits
	for _, n := range tokenizerFiles {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if vocab <= 0 {
			return p, dir, nil
		}
		tok, err := tokenizer.Load(p)
		if err != nil {
			broken = append(broken, err)
			continue
		}
		switch size := tok.VocabSize(); {
		case size == vocab:
			return p, dir, nil
		case size < vocab && vocab-size <= AddedSpecialTokens && size > bestSize:
			best, bestSize = p, size
		}
	}
	if best == "" && len(broken) > 0 {
		return "", dir, fmt.Errorf("no tokenizer with %d tokens in %s: %w", vocab, dir, errors.Join(broken...))
	}
	return best, dir, nil
}

// CheckPolicy refuses a score model (a score head: LlamaForScore, as train-rm and train-cm
// save) where a policy is read: its language-model head is absent, or tied to embeddings
// that were trained to score, not to predict tokens.
func CheckPolicy(cfg *Config, path string) error {
	if cfg.ScoreDim > 0 {
		return fmt.Errorf("%s is a score model (score_dim %d, score_type %q), not a policy: give the causal language model (sft's output, or the base model)", path, cfg.ScoreDim, cfg.Score.Type)
	}
	return nil
}

// LoadTokenizer loads the tokenizer at path and checks it fits cfg's vocabulary.
func LoadTokenizer(path string, cfg *Config) (tokenizer.Tokenizer, error) {
	tok, err := tokenizer.Load(path)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() > cfg.VocabSize {
		return nil, fmt.Errorf("tokenizer %s has %d tokens but the model's vocabulary is %d", path, tok.VocabSize(), cfg.VocabSize)
	}
	return tok, nil
}
