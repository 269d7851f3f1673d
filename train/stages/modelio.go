package stages

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/safetensors"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// LoadModel reads a model: a llama2.c checkpoint (*.bin) or an HF directory
// (config.json + *.safetensors, as SaveModel writes).
func LoadModel(path string) (*model.Config, model.Weights, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("model %s: %w", path, err)
	}
	if !st.IsDir() {
		return model.LoadLlama2C(path)
	}
	cfg, err := model.LoadHFConfig(path)
	if err != nil {
		return nil, nil, err
	}
	set, err := safetensors.OpenDir(path)
	if err != nil {
		return nil, nil, fmt.Errorf("model %s: %w", path, err)
	}
	defer set.Close()
	w := model.Weights{}
	for _, name := range set.Names() {
		data, shape, err := set.Float32(name)
		if err != nil {
			return nil, nil, fmt.Errorf("model %s: tensor %s: %w", path, name, err)
		}
		w[name] = &model.Tensor{Shape: shape, Data: data}
	}
	if _, ok := w[model.NameScoreW]; ok && cfg.ScoreDim == 0 {
		cfg.ScoreDim = w[model.NameScoreW].Shape[0]
	}
	return cfg, w, nil
}

// SaveModel writes cfg and w as an HF directory: config.json and model.safetensors
// (each written atomically), plus a copy of the tokenizer file when tokPath is set,
// so that the next stage finds everything in one place.
func SaveModel(dir string, cfg *model.Config, w model.Weights, tokPath string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	names := w.Names()
	sort.Strings(names)
	ts := make([]safetensors.Tensor, 0, len(names))
	for _, n := range names {
		ts = append(ts, safetensors.Tensor{Name: n, DType: "F32", Shape: w[n].Shape, F32: w[n].Data})
	}
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), ts, map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("save model %s: %w", dir, err)
	}
	js, err := cfg.HFConfigJSON()
	if err != nil {
		return fmt.Errorf("save model %s: %w", dir, err)
	}
	if err := trainer.WriteFileAtomic(filepath.Join(dir, "config.json"), js); err != nil {
		return err
	}
	if tokPath != "" {
		b, err := os.ReadFile(tokPath)
		if err != nil {
			return fmt.Errorf("save model %s: tokenizer: %w", dir, err)
		}
		dst := filepath.Join(dir, filepath.Base(tokPath))
		if abs1, _ := filepath.Abs(tokPath); abs1 != dst {
			if err := trainer.WriteFileAtomic(dst, b); err != nil {
				return err
			}
		}
	}
	return nil
}

// ResolveTokenizer returns the tokenizer path: explicit if given, else the
// tokenizer file inside (or next to) the model path whose vocabulary matches the
// model's (tok512.bin for stories260K, tokenizer.model for Llama-2-vocabulary models).
func ResolveTokenizer(explicit, modelPath string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	return ResolveTokenizerFor("", modelPath, modelVocab(modelPath))
}

// modelVocab reads the vocabulary size of a model (HF config.json or the llama2.c
// header), 0 if it cannot.
func modelVocab(path string) int {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		if cfg, err := model.LoadHFConfig(path); err == nil {
			return cfg.VocabSize
		}
		return 0
	}
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	var hdr [28]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return 0
	}
	v := int32(binary.LittleEndian.Uint32(hdr[20:24])) // llama2.c: vocab_size (negative: unshared classifier)
	if v < 0 {
		v = -v
	}
	return int(v)
}

// ResolveTokenizerFor is ResolveTokenizer for a known vocabulary size (0: any).
func ResolveTokenizerFor(explicit, modelPath string, vocab int) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	dir := modelPath
	if st, err := os.Stat(modelPath); err == nil && !st.IsDir() {
		dir = filepath.Dir(modelPath)
	}
	for _, n := range []string{"tokenizer.model", "tok512.bin", "tokenizer.bin"} {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		if vocab > 0 {
			tok, err := tokenizer.Load(p)
			if err != nil || tok.VocabSize() != vocab {
				continue
			}
		}
		return p, nil
	}
	return "", fmt.Errorf("no tokenizer given and none with %d tokens found in %s (use --tokenizer)", vocab, dir)
}

// loadTokenizer loads the tokenizer and checks it fits the model's vocabulary.
func loadTokenizer(path string, cfg *model.Config) (tokenizer.Tokenizer, error) {
	tok, err := tokenizer.Load(path)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() > cfg.VocabSize {
		return nil, fmt.Errorf("tokenizer %s has %d tokens but the model's vocabulary is %d", path, tok.VocabSize(), cfg.VocabSize)
	}
	return tok, nil
}
