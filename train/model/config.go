package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Config describes one LLaMA-family transformer. Field names follow HF
// config.json (LlamaConfig / Qwen2Config) so a config round-trips through
// ParseHFConfig and HFConfigJSON.
type Config struct {
	// Architecture is HF "architectures"[0], e.g. "LlamaForCausalLM",
	// "LlamaForScore", "Qwen2ForCausalLM".
	Architecture     string
	ModelType        string // HF "model_type": "llama" or "qwen2".
	HiddenSize       int    // D.
	IntermediateSize int    // FFN width.
	NumLayers        int
	NumHeads         int // query heads.
	NumKVHeads       int // key/value heads (GQA when < NumHeads, MQA when 1).
	HeadDim          int // per-head width; 0 means HiddenSize/NumHeads.
	VocabSize        int
	MaxPositions     int
	RMSNormEps       float64
	RopeTheta        float64
	RopeScaling      *RopeScaling // nil: none.
	// TieWordEmbeddings: the LM head is the token embedding table (llama2.c's
	// shared classifier); "lm_head.weight" is then absent.
	TieWordEmbeddings bool
	// AttentionBias: q/k/v projections have biases (Qwen2 always; LLaMA's
	// attention_bias also gives o_proj one, see OBias).
	AttentionBias bool
	// OBias: o_proj has a bias (LLaMA attention_bias=true; never Qwen2).
	OBias         bool
	BOS, EOS, Pad int32
	// ScoreDim is the score head's width (1 for Safe-RLHF score models; 0: no
	// score head).
	ScoreDim int
	// Score is the Safe-RLHF score model's normaliser settings and statistics
	// (ScoreModelMixin's config keys); meaningful when ScoreDim > 0.
	Score ScoreConfig
	// TorchDType is HF "torch_dtype" of the checkpoint read ("float32",
	// "bfloat16", ...; "" when unknown): --save-dtype's default.
	TorchDType string
}

// ScoreConfig holds the config.json keys of a Safe-RLHF score model (spec §3):
// score_type selects the normalize function (reward: affine, cost: scale, critic:
// identity), do_normalize whether outputs are normalised, and normalizer_type,
// momentum, mean and var the normaliser tracked during training.
type ScoreConfig struct {
	Type           string    // "reward", "cost" or "critic"; "" is written as "reward"
	DoNormalize    bool      // normalise the scores with Mean/Var
	NormalizerType string    // "ExponentialMovingAverage", "RunningMeanStd" or "" (None)
	Momentum       float64   // EMA momentum (ExponentialMovingAverage)
	Mean, Var      []float64 // per score dimension; nil when never tracked
}

// RopeScaling is HF "rope_scaling": Type "linear" divides positions by
// Factor; "dynamic" (NTK) raises θ when the sequence exceeds
// OriginalMaxPositions; "llama3" rescales low frequencies as Llama 3.1 does.
type RopeScaling struct {
	Type                 string  `json:"rope_type"`
	Factor               float64 `json:"factor"`
	LowFreqFactor        float64 `json:"low_freq_factor,omitempty"`
	HighFreqFactor       float64 `json:"high_freq_factor,omitempty"`
	OriginalMaxPositions int     `json:"original_max_position_embeddings,omitempty"`
}

// CheckContext refuses n tokens beyond the model's context (max_position_embeddings, when
// known): positions past it were never trained. what names the length, a flag ("--max-length")
// or a sum ("--max-prompt-tokens 24 + --max-new-tokens 8"), and path the model with its flag
// ("--model DIR"): "--max-length 600 exceeds the context of --model DIR
// (max_position_embeddings 512)", or "A + B = 600 exceed ..." for a sum.
func (c *Config) CheckContext(what string, n int, path string) error {
	if c.MaxPositions <= 0 || n <= c.MaxPositions {
		return nil
	}
	if strings.Contains(what, " + ") {
		return fmt.Errorf("%s = %d exceed the context of %s (max_position_embeddings %d)", what, n, path, c.MaxPositions)
	}
	return fmt.Errorf("%s %d exceeds the context of %s (max_position_embeddings %d)", what, n, path, c.MaxPositions)
}

// Dh returns the per-head width.
func (c *Config) Dh() int {
	if c.HeadDim > 0 {
		return c.HeadDim
	}
	if c.NumHeads == 0 {
		return 0
	}
	return c.HiddenSize / c.NumHeads
}

// Validate checks the config is self-consistent.
func (c *Config) Validate() error {
	switch {
	case c.HiddenSize <= 0 || c.IntermediateSize <= 0 || c.NumLayers <= 0 || c.NumHeads <= 0 || c.VocabSize <= 0:
		return fmt.Errorf("model config: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size must be > 0 (got %d, %d, %d, %d, %d)",
			c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.VocabSize)
	case c.NumKVHeads <= 0 || c.NumHeads%c.NumKVHeads != 0:
		return fmt.Errorf("model config: num_attention_heads %d not a multiple of num_key_value_heads %d", c.NumHeads, c.NumKVHeads)
	case c.HeadDim == 0 && c.HiddenSize%c.NumHeads != 0:
		return fmt.Errorf("model config: hidden_size %d not a multiple of num_attention_heads %d", c.HiddenSize, c.NumHeads)
	case c.Dh()%2 != 0:
		return fmt.Errorf("model config: head dim %d is odd (RoPE needs pairs)", c.Dh())
	case c.RMSNormEps <= 0:
		return fmt.Errorf("model config: rms_norm_eps %g must be > 0", c.RMSNormEps)
	case c.RopeTheta <= 0:
		return fmt.Errorf("model config: rope_theta %g must be > 0", c.RopeTheta)
	case c.ScoreDim < 0:
		return fmt.Errorf("model config: score_dim %d < 0", c.ScoreDim)
	}
	if rs := c.RopeScaling; rs != nil {
		switch rs.Type {
		case "linear", "dynamic", "llama3", "default", "":
		default:
			return fmt.Errorf("model config: rope_scaling type %q not supported (linear, dynamic, llama3)", rs.Type)
		}
		if rs.Type != "default" && rs.Type != "" && rs.Factor <= 0 {
			return fmt.Errorf("model config: rope_scaling factor %g must be > 0", rs.Factor)
		}
	}
	return nil
}

// NumParams returns the number of weights of the LM (score head included when ScoreDim > 0).
func (c *Config) NumParams() int {
	d, dh := c.HiddenSize, c.Dh()
	qd, kvd := c.NumHeads*dh, c.NumKVHeads*dh
	per := d*qd + 2*d*kvd + qd*d + 3*d*c.IntermediateSize + 2*d
	if c.AttentionBias {
		per += qd + 2*kvd
	}
	if c.OBias {
		per += d
	}
	n := c.VocabSize*d + c.NumLayers*per + d
	if !c.TieWordEmbeddings {
		n += c.VocabSize * d
	}
	if c.ScoreDim > 0 {
		n += c.ScoreDim*d + c.ScoreDim
	}
	return n
}

// hfConfig is the JSON layout of HF config.json (the fields we use).
type hfConfig struct {
	Architectures         []string        `json:"architectures,omitempty"`
	ModelType             string          `json:"model_type,omitempty"`
	HiddenSize            int             `json:"hidden_size"`
	IntermediateSize      int             `json:"intermediate_size"`
	NumHiddenLayers       int             `json:"num_hidden_layers"`
	NumAttentionHeads     int             `json:"num_attention_heads"`
	NumKeyValueHeads      int             `json:"num_key_value_heads,omitempty"`
	HeadDim               int             `json:"head_dim,omitempty"`
	VocabSize             int             `json:"vocab_size"`
	MaxPositionEmbeddings int             `json:"max_position_embeddings,omitempty"`
	RMSNormEps            float64         `json:"rms_norm_eps,omitempty"`
	RopeTheta             float64         `json:"rope_theta,omitempty"`
	RopeScaling           json.RawMessage `json:"rope_scaling,omitempty"`
	TieWordEmbeddings     *bool           `json:"tie_word_embeddings,omitempty"`
	AttentionBias         *bool           `json:"attention_bias,omitempty"`
	BOSTokenID            *int32          `json:"bos_token_id,omitempty"`
	EOSTokenID            json.RawMessage `json:"eos_token_id,omitempty"`
	PadTokenID            *int32          `json:"pad_token_id,omitempty"`
	ScoreDim              *int            `json:"score_dim,omitempty"`
	HiddenAct             string          `json:"hidden_act,omitempty"`
	TorchDType            string          `json:"torch_dtype,omitempty"`
	ScoreType             string          `json:"score_type,omitempty"`
	ScoreBias             *bool           `json:"score_bias,omitempty"`
	DoNormalize           *bool           `json:"do_normalize,omitempty"`
	NormalizerType        string          `json:"normalizer_type,omitempty"`
	Momentum              *float64        `json:"momentum,omitempty"`
	Mean                  []float64       `json:"mean,omitempty"`
	Var                   []float64       `json:"var,omitempty"`
}

// ParseHFConfig parses an HF config.json (LLaMA or Qwen2 family).
func ParseHFConfig(data []byte) (*Config, error) {
	var h hfConfig
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	if h.HiddenAct != "" && h.HiddenAct != "silu" {
		return nil, fmt.Errorf("config.json: hidden_act %q not supported (silu only)", h.HiddenAct)
	}
	c := &Config{
		ModelType:        h.ModelType,
		HiddenSize:       h.HiddenSize,
		IntermediateSize: h.IntermediateSize,
		NumLayers:        h.NumHiddenLayers,
		NumHeads:         h.NumAttentionHeads,
		NumKVHeads:       h.NumKeyValueHeads,
		HeadDim:          h.HeadDim,
		VocabSize:        h.VocabSize,
		MaxPositions:     h.MaxPositionEmbeddings,
		RMSNormEps:       h.RMSNormEps,
		RopeTheta:        h.RopeTheta,
		BOS:              1,
		EOS:              2,
		Pad:              -1,
		TorchDType:       h.TorchDType,
	}
	if len(h.Architectures) > 0 {
		c.Architecture = h.Architectures[0]
	}
	if c.ModelType == "" {
		c.ModelType = "llama"
		if strings.HasPrefix(c.Architecture, "Qwen2") {
			c.ModelType = "qwen2"
		}
	}
	if c.ModelType != "llama" && c.ModelType != "qwen2" && c.ModelType != "mistral" {
		return nil, fmt.Errorf("config.json: model_type %q not supported (llama, mistral, qwen2)", c.ModelType)
	}
	if c.NumKVHeads == 0 {
		c.NumKVHeads = c.NumHeads
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-6
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	if c.MaxPositions == 0 {
		c.MaxPositions = 2048
	}
	c.TieWordEmbeddings = c.ModelType == "qwen2" // HF defaults differ per family
	if c.ModelType == "llama" || c.ModelType == "mistral" {
		c.TieWordEmbeddings = false
	}
	if h.TieWordEmbeddings != nil {
		c.TieWordEmbeddings = *h.TieWordEmbeddings
	}
	if c.ModelType == "qwen2" {
		c.AttentionBias = true
	} else if h.AttentionBias != nil && *h.AttentionBias {
		c.AttentionBias, c.OBias = true, true
	}
	if h.BOSTokenID != nil {
		c.BOS = *h.BOSTokenID
	}
	if len(h.EOSTokenID) > 0 && string(h.EOSTokenID) != "null" {
		var one int32
		var many []int32
		if err := json.Unmarshal(h.EOSTokenID, &one); err == nil {
			c.EOS = one
		} else if err := json.Unmarshal(h.EOSTokenID, &many); err == nil && len(many) > 0 {
			c.EOS = many[0]
		} else {
			return nil, fmt.Errorf("config.json: eos_token_id %s: want an int or a list of ints", h.EOSTokenID)
		}
	}
	if h.PadTokenID != nil {
		c.Pad = *h.PadTokenID
	}
	if h.ScoreDim != nil {
		c.ScoreDim = *h.ScoreDim
	} else if strings.HasSuffix(c.Architecture, "ForScore") {
		c.ScoreDim = 1
	}
	c.Score = ScoreConfig{Type: h.ScoreType, NormalizerType: h.NormalizerType, Mean: h.Mean, Var: h.Var}
	if h.DoNormalize != nil {
		c.Score.DoNormalize = *h.DoNormalize
	}
	if h.Momentum != nil {
		c.Score.Momentum = *h.Momentum
	}
	switch c.Score.Type {
	case "", "reward", "cost", "critic":
	default:
		return nil, fmt.Errorf("config.json: score_type %q: want reward, cost or critic", c.Score.Type)
	}
	if len(c.Score.Mean) != len(c.Score.Var) || len(c.Score.Mean) > 0 && len(c.Score.Mean) != c.ScoreDim {
		return nil, fmt.Errorf("config.json: normaliser mean has %d entries and var %d, want score_dim = %d each",
			len(c.Score.Mean), len(c.Score.Var), c.ScoreDim)
	}
	if len(h.RopeScaling) > 0 && string(h.RopeScaling) != "null" {
		var raw struct {
			RopeScaling
			Type string `json:"type"`
		}
		if err := json.Unmarshal(h.RopeScaling, &raw); err != nil {
			return nil, fmt.Errorf("config.json: rope_scaling: %w", err)
		}
		rs := raw.RopeScaling
		if rs.Type == "" {
			rs.Type = raw.Type
		}
		if rs.Type != "default" {
			c.RopeScaling = &rs
		}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// LoadHFConfig reads dir/config.json.
func LoadHFConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseHFConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// HFConfigJSON renders c as an HF config.json that transformers can load
// (LlamaForCausalLM, or the Safe-RLHF LlamaForScore with score_dim when
// ScoreDim > 0 and Architecture is unset).
func (c *Config) HFConfigJSON() ([]byte, error) {
	arch := c.Architecture
	if arch == "" {
		arch = "LlamaForCausalLM"
		if c.ModelType == "qwen2" {
			arch = "Qwen2ForCausalLM"
		}
	}
	mt := c.ModelType
	if mt == "" {
		mt = "llama"
	}
	tie := c.TieWordEmbeddings
	h := hfConfig{
		Architectures:         []string{arch},
		ModelType:             mt,
		HiddenSize:            c.HiddenSize,
		IntermediateSize:      c.IntermediateSize,
		NumHiddenLayers:       c.NumLayers,
		NumAttentionHeads:     c.NumHeads,
		NumKeyValueHeads:      c.NumKVHeads,
		VocabSize:             c.VocabSize,
		MaxPositionEmbeddings: c.MaxPositions,
		RMSNormEps:            c.RMSNormEps,
		RopeTheta:             c.RopeTheta,
		TieWordEmbeddings:     &tie,
		HiddenAct:             "silu",
		TorchDType:            "float32",
	}
	if c.TorchDType != "" {
		h.TorchDType = c.TorchDType
	}
	if c.HeadDim > 0 && c.HeadDim != c.HiddenSize/c.NumHeads {
		h.HeadDim = c.HeadDim
	}
	if mt == "llama" {
		ab := c.AttentionBias
		h.AttentionBias = &ab
	}
	bos := c.BOS
	h.BOSTokenID = &bos
	h.EOSTokenID, _ = json.Marshal(c.EOS)
	if c.Pad >= 0 {
		pad := c.Pad
		h.PadTokenID = &pad
	}
	if c.ScoreDim > 0 {
		sd := c.ScoreDim
		h.ScoreDim = &sd
		yes := true
		h.ScoreBias = &yes
		sc := c.Score
		h.ScoreType = sc.Type
		if h.ScoreType == "" {
			h.ScoreType = "reward"
		}
		do := sc.DoNormalize
		h.DoNormalize = &do
		h.NormalizerType = sc.NormalizerType
		if sc.NormalizerType == "ExponentialMovingAverage" {
			m := sc.Momentum
			h.Momentum = &m
		}
		h.Mean, h.Var = sc.Mean, sc.Var
	}
	if c.RopeScaling != nil {
		h.RopeScaling, _ = json.Marshal(c.RopeScaling)
	}
	return json.MarshalIndent(h, "", "  ")
}
