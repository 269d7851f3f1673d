package model

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// MaxShardBytes is the shard size Save uses (HF's default max_shard_size).
const MaxShardBytes = 5 << 30

// Load reads an HF model directory: config.json and the weights in
// model.safetensors or sharded with model.safetensors.index.json, in
// f32/bf16/f16 (converted to float32). Tensor names are LLaMA-2's
// ("model.layers.N.self_attn.q_proj.weight", ...); a checkpoint of the bare
// model without the "model." prefix is accepted. Safe-RLHF score models
// (score_head.weight/bias, no lm_head) load with cfg.ScoreDim set. Files are
// memory-mapped, so peak memory is about the float32 weights once. Errors
// name the file and tensor; Load never panics on malformed input.
func Load(dir string) (*Config, Weights, error) {
	cfg, err := LoadHFConfig(dir)
	if err != nil {
		return nil, nil, err
	}
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, nil, err
	}
	defer set.Close()
	prefix, exp, err := hfLayout(dir, cfg, set)
	if err != nil {
		return nil, nil, err
	}
	w := Weights{}
	for _, name := range sortedKeys(exp) {
		stored := strings.TrimPrefix(name, prefix)
		dt, shape, err := set.Info(stored)
		if err != nil {
			if errors.Is(err, safetensors.ErrNotFound) {
				return nil, nil, fmt.Errorf("%s: tensor %q missing", dir, stored)
			}
			return nil, nil, fmt.Errorf("%s: %w", dir, err)
		}
		if !dt.IsFloat() {
			return nil, nil, fmt.Errorf("%s: tensor %q has dtype %s, want a float type", dir, stored, dt)
		}
		if !slices.Equal(shape, exp[name]) {
			return nil, nil, fmt.Errorf("%s: tensor %q has shape %v, config.json implies %v", dir, stored, shape, exp[name])
		}
		t := NewTensor(shape...)
		if err := set.Float32Into(stored, t.Data); err != nil {
			return nil, nil, err
		}
		if err := checkFinite(dir, stored, t.Data); err != nil {
			return nil, nil, err
		}
		w[name] = t
	}
	if err := checkDescribed(dir, set, exp, prefix, cfg); err != nil {
		return nil, nil, err
	}
	return cfg, w, nil
}

// hfLayout reads what Load and LoadInto need of set before the weights: the
// prefix its names lack ("model." when they omit it), the score head's size
// into cfg.ScoreDim, and the expected tensors by HF name (the LM head when
// stored untied).
func hfLayout(dir string, cfg *Config, set *safetensors.Set) (prefix string, exp map[string][]int, err error) {
	if !set.Has(NameEmbed) && set.Has(strings.TrimPrefix(NameEmbed, "model.")) {
		prefix = "model."
	}
	if cfg.ScoreDim == 0 && set.Has(NameScoreW) {
		if _, shape, err := set.Info(NameScoreW); err == nil && len(shape) == 2 {
			cfg.ScoreDim = shape[0]
		}
	}
	exp = ExpectedShapes(cfg, false)
	if !cfg.TieWordEmbeddings && set.Has(NameLMHead) {
		exp[NameLMHead] = []int{cfg.VocabSize, cfg.HiddenSize}
	}
	if !cfg.TieWordEmbeddings && !set.Has(NameLMHead) && cfg.ScoreDim == 0 {
		return "", nil, fmt.Errorf("%s: tensor %q missing (config has tie_word_embeddings=false and no score head)", dir, NameLMHead)
	}
	return prefix, exp, nil
}

// checkDescribed refuses a tensor of set that config.json does not describe (exp: the
// expected names): the two disagree (say, more layers in the weights than
// num_hidden_layers), and dropping it silently would load another model.
func checkDescribed(dir string, set *safetensors.Set, exp map[string][]int, prefix string, cfg *Config) error {
	for _, stored := range set.Names() {
		name := stored
		if prefix != "" && !strings.HasPrefix(stored, prefix) {
			name = prefix + stored
		}
		if _, ok := exp[name]; ok || name == NameLMHead || strings.HasSuffix(name, "rotary_emb.inv_freq") {
			continue
		}
		return fmt.Errorf("%s: tensor %q is not part of the model config.json describes (%d layers, hidden %d, vocab %d)",
			dir, stored, cfg.NumLayers, cfg.HiddenSize, cfg.VocabSize)
	}
	return nil
}

// checkFiniteBF16 is checkFinite on raw little-endian bfloat16 values.
func checkFiniteBF16(file, tensor string, raw []byte) error {
	for i := 0; i+1 < len(raw); i += 2 {
		if raw[i+1]&0x7f == 0x7f && raw[i]&0x80 != 0 { // exponent all ones: Inf or NaN
			return fmt.Errorf("%s: tensor %s holds a non-finite value (bf16 at index %d)", file, tensor, i/2)
		}
	}
	return nil
}

// checkFinite returns an error naming the tensor if data holds a NaN or an infinity.
func checkFinite(file, tensor string, data []float32) error {
	for i, v := range data {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("%s: tensor %s holds a non-finite value (%v at index %d)", file, tensor, v, i)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// hfOrder returns w's names in HF's usual order: embeddings, layers in
// order, final norm, heads.
func hfOrder(cfg *Config, w Weights) []string {
	var names []string
	seen := map[string]bool{}
	add := func(n string) {
		if _, ok := w[n]; ok && !seen[n] {
			names = append(names, n)
			seen[n] = true
		}
	}
	add(NameEmbed)
	for l := 0; l < cfg.NumLayers; l++ {
		for _, s := range []string{"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.q_proj.bias",
			"self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
			"self_attn.o_proj.weight", "self_attn.o_proj.bias", "post_attention_layernorm.weight",
			"mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"} {
			add(LayerName(l, s))
		}
	}
	add(NameFinalNorm)
	add(NameLMHead)
	add(NameScoreW)
	add(NameScoreB)
	for _, n := range w.Names() {
		add(n)
	}
	return names
}

// Save writes cfg and w to dir in HF layout (config.json plus
// model.safetensors, or shards of MaxShardBytes with
// model.safetensors.index.json), float32 (SaveAs: another dtype), loadable by transformers
// (LlamaForCausalLM; Safe-RLHF's LlamaForScore when cfg.ScoreDim > 0). Every
// file is written to a temporary name, synced and renamed; config.json last.
// A tied LM head is not written.
func Save(dir string, cfg *Config, w Weights) error { return SaveAs(dir, cfg, w, safetensors.F32) }

// SaveAs is Save with the tensors stored as dt (F32, BF16 or F16, rounded
// to nearest even; --save-dtype) and config.json's torch_dtype set to match.
func SaveAs(dir string, cfg *Config, w Weights, dt safetensors.DType) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := w.Check(cfg, false); err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	var ts []safetensors.Tensor
	for _, name := range hfOrder(cfg, w) {
		t := w[name]
		ts = append(ts, safetensors.Tensor{Name: name, DType: dt, Shape: t.Shape, F32: t.Data})
	}
	return SaveTensorsAs(dir, cfg, ts, dt)
}

// SaveTensorsAs is SaveAs for tensors given as safetensors.Tensor (e.g. StreamWeights'
// streams, written one at a time): each is stored as dt, a tensor of another dtype (F32 or
// BF16) converted as it streams (widened exactly, or rounded to nearest even).
func SaveTensorsAs(dir string, cfg *Config, ts []safetensors.Tensor, dt safetensors.DType) error {
	torch := map[safetensors.DType]string{safetensors.F32: "float32", safetensors.BF16: "bfloat16", safetensors.F16: "float16"}[dt]
	if torch == "" {
		return fmt.Errorf("save %s: dtype %s: want F32, BF16 or F16", dir, dt)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	out := make([]safetensors.Tensor, 0, len(ts))
	for _, t := range ts {
		if t.Name == NameLMHead && cfg.TieWordEmbeddings {
			continue
		}
		if t.Stream != nil && t.DType != dt {
			conv, err := convertStream(t, dt)
			if err != nil {
				return fmt.Errorf("save %s: %w", dir, err)
			}
			t = conv
		}
		out = append(out, t)
	}
	if _, err := safetensors.WriteDir(dir, out, map[string]string{"format": "pt"}, MaxShardBytes); err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	c := *cfg
	c.TorchDType = torch
	js, err := c.HFConfigJSON()
	if err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	if err := atomicfile.WriteBytes(filepath.Join(dir, "config.json"), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	return nil
}

// convertStream returns t streaming as dt: its F32 or BF16 bytes decoded to float32 in chunks
// and re-encoded (safetensors.AppendFloat32s's rounding).
func convertStream(t safetensors.Tensor, dt safetensors.DType) (safetensors.Tensor, error) {
	src := t.DType
	if src == "" {
		src = safetensors.F32
	}
	if src != safetensors.F32 && src != safetensors.BF16 {
		return t, fmt.Errorf("tensor %s: cannot convert %s to %s", t.Name, src, dt)
	}
	stream := t.Stream
	out := t
	out.DType = dt
	out.Stream = func(w io.Writer) error {
		cw := &convertWriter{w: w, src: src, dst: dt}
		if err := stream(cw); err != nil {
			return err
		}
		if len(cw.rest) != 0 {
			return fmt.Errorf("tensor %s: %d trailing bytes", t.Name, len(cw.rest))
		}
		return nil
	}
	return out, nil
}

// convertWriter re-encodes a stream of src elements as dst.
type convertWriter struct {
	w        io.Writer
	src, dst safetensors.DType
	rest     []byte // an incomplete element from the last Write
	f32      []float32
	buf      []byte
}

func (c *convertWriter) Write(p []byte) (int, error) {
	n := len(p)
	if len(c.rest) > 0 {
		p = append(c.rest, p...)
		c.rest = nil
	}
	size := c.src.Size()
	whole := len(p) / size * size
	c.rest = append([]byte(nil), p[whole:]...)
	for lo := 0; lo < whole; lo += 1 << 22 {
		chunk := p[lo:min(lo+1<<22, whole)]
		c.f32 = c.f32[:0]
		for i := 0; i < len(chunk); i += size {
			if c.src == safetensors.BF16 {
				c.f32 = append(c.f32, safetensors.BF16ToFloat32(binary.LittleEndian.Uint16(chunk[i:])))
			} else {
				c.f32 = append(c.f32, math.Float32frombits(binary.LittleEndian.Uint32(chunk[i:])))
			}
		}
		var err error
		if c.buf, err = safetensors.AppendFloat32s(c.buf[:0], c.f32, c.dst); err != nil {
			return 0, err
		}
		if _, err := c.w.Write(c.buf); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// LoadAny loads a llama2.c checkpoint (a .bin file) or an HF directory. An HF
// config.json file alone gives the configuration and nil weights (a model to
// initialise from scratch).
func LoadAny(path string) (*Config, Weights, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if st.IsDir() {
		return Load(path)
	}
	if strings.HasSuffix(path, ".json") {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, err
		}
		cfg, err := ParseHFConfig(b)
		if err != nil {
			return nil, nil, fmt.Errorf("model %s: %w", path, err)
		}
		return cfg, nil, nil
	}
	return LoadLlama2C(path)
}

// SaveDType maps a torch_dtype or --save-dtype value ("float32"/"f32",
// "bfloat16"/"bf16", "float16"/"f16"; "" means float32) to a safetensors dtype.
func SaveDType(s string) (safetensors.DType, error) {
	switch strings.ToLower(s) {
	case "", "float32", "f32", "fp32":
		return safetensors.F32, nil
	case "bfloat16", "bf16":
		return safetensors.BF16, nil
	case "float16", "f16", "fp16", "half":
		return safetensors.F16, nil
	}
	return "", fmt.Errorf("dtype %q: want f32, bf16 or f16", s)
}
