package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/train/safetensors"
)

func weightsEqual(t *testing.T, a, b Weights, tol float64) {
	t.Helper()
	if !slices.Equal(a.Names(), b.Names()) {
		t.Fatalf("names differ:\n%v\n%v", a.Names(), b.Names())
	}
	for n, x := range a {
		y := b[n]
		if !slices.Equal(x.Shape, y.Shape) {
			t.Fatalf("%s: shape %v vs %v", n, x.Shape, y.Shape)
		}
		for i := range x.Data {
			if math.Abs(float64(x.Data[i]-y.Data[i])) > tol*(1+math.Abs(float64(x.Data[i]))) {
				t.Fatalf("%s[%d]: %g vs %g", n, i, x.Data[i], y.Data[i])
			}
		}
	}
}

// TestSaveLoadRoundTrip saves and reloads stories260K (tied head) and a
// small untied GQA config with attention biases, RoPE scaling and a score
// head; then reads the same weights as bf16 shards.
func TestSaveLoadRoundTrip(t *testing.T) {
	cfg, w := loadStories(t)
	dir := filepath.Join(t.TempDir(), "stories")
	if err := Save(dir, cfg, w); err != nil {
		t.Fatal(err)
	}
	cfg2, w2, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg2.TorchDType != "float32" {
		t.Fatalf("torch_dtype %q after Save, want float32", cfg2.TorchDType)
	}
	cfg2.TorchDType = cfg.TorchDType
	if !reflect.DeepEqual(cfg2, cfg) {
		t.Fatalf("config round trip:\n%+v\n%+v", cfg, cfg2)
	}
	weightsEqual(t, w, w2, 0)

	tc := tinyConfig()
	tc.TieWordEmbeddings = false
	tc.RopeScaling = &RopeScaling{Type: "linear", Factor: 2}
	tc.RopeTheta = 500000
	tc.Score = ScoreConfig{Type: "cost", DoNormalize: true, NormalizerType: "ExponentialMovingAverage", Momentum: 0.9,
		Mean: []float64{0.25}, Var: []float64{2.5}}
	tw := RandomWeights(tc, 9)
	dir = filepath.Join(t.TempDir(), "tiny")
	if err := Save(dir, tc, tw); err != nil {
		t.Fatal(err)
	}
	tc2, tw2, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tc2.RopeScaling == nil || *tc2.RopeScaling != *tc.RopeScaling || tc2.RopeTheta != tc.RopeTheta || tc2.ScoreDim != 1 || !tc2.OBias || tc2.TieWordEmbeddings ||
		!reflect.DeepEqual(tc2.Score, tc.Score) {
		t.Fatalf("config round trip:\n%+v\n%+v", tc, tc2)
	}
	weightsEqual(t, tw, tw2, 0)

	// bf16, sharded, via the safetensors writer directly.
	dir = filepath.Join(t.TempDir(), "bf16")
	var ts []safetensors.Tensor
	for _, n := range hfOrder(tc, tw) {
		ts = append(ts, safetensors.Tensor{Name: n, DType: safetensors.BF16, Shape: tw[n].Shape, F32: tw[n].Data})
	}
	files, err := safetensors.WriteDir(dir, ts, nil, 4000)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("expected shards, got %v", files)
	}
	js, _ := tc.HFConfigJSON()
	os.WriteFile(filepath.Join(dir, "config.json"), js, 0o644)
	_, tw3, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	weightsEqual(t, tw, tw3, 1.0/128)
}

// TestLoadErrors checks malformed checkpoints give errors naming the
// tensor or file, never panics.
func TestLoadErrors(t *testing.T) {
	tc := tinyConfig()
	tw := RandomWeights(tc, 9)
	good := filepath.Join(t.TempDir(), "good")
	if err := Save(good, tc, tw); err != nil {
		t.Fatal(err)
	}
	st, _ := os.ReadFile(filepath.Join(good, "model.safetensors"))
	cj, _ := os.ReadFile(filepath.Join(good, "config.json"))
	cases := []struct {
		name, want string
		mutate     func(dir string)
	}{
		{"shape mismatch", "has shape [16 24], config.json implies [16 25]", func(dir string) {
			c := strings.Replace(string(cj), `"intermediate_size": 24`, `"intermediate_size": 25`, 1)
			os.WriteFile(filepath.Join(dir, "config.json"), []byte(c), 0o644)
		}},
		{"missing tensor", "model.layers.2.input_layernorm.weight\" missing", func(dir string) {
			c := strings.Replace(string(cj), `"num_hidden_layers": 2`, `"num_hidden_layers": 3`, 1)
			os.WriteFile(filepath.Join(dir, "config.json"), []byte(c), 0o644)
		}},
		{"truncated", "model.safetensors", func(dir string) {
			os.WriteFile(filepath.Join(dir, "model.safetensors"), st[:len(st)/2], 0o644)
		}},
		{"header size overflow", "model.safetensors", func(dir string) {
			b := slices.Clone(st)
			for i := 0; i < 8; i++ {
				b[i] = 0xff
			}
			os.WriteFile(filepath.Join(dir, "model.safetensors"), b, 0o644)
		}},
		{"bad config", "config.json", func(dir string) {
			os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"hidden_size": "x"`), 0o644)
		}},
		{"fewer layers in the config than in the weights", `tensor "model.layers.1.input_layernorm.weight" is not part of the model`, func(dir string) {
			c := strings.Replace(string(cj), `"num_hidden_layers": 2`, `"num_hidden_layers": 1`, 1)
			os.WriteFile(filepath.Join(dir, "config.json"), []byte(c), 0o644)
		}},
		{"non-finite", "tensor model.norm.weight holds a non-finite value", func(dir string) {
			w := Weights{}
			for k, v := range tw {
				w[k] = &Tensor{Shape: v.Shape, Data: slices.Clone(v.Data)}
			}
			w[NameFinalNorm].Data[3] = float32(math.NaN())
			var ts []safetensors.Tensor
			for _, n := range hfOrder(tc, w) {
				ts = append(ts, safetensors.Tensor{Name: n, DType: safetensors.F32, Shape: w[n].Shape, F32: w[n].Data})
			}
			if _, err := safetensors.WriteDir(dir, ts, nil, MaxShardBytes); err != nil {
				t.Fatal(err)
			}
		}},
		{"hidden_act", "hidden_act", func(dir string) {
			c := strings.Replace(string(cj), `"hidden_act": "silu"`, `"hidden_act": "gelu"`, 1)
			os.WriteFile(filepath.Join(dir, "config.json"), []byte(c), 0o644)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "model.safetensors"), st, 0o644)
			os.WriteFile(filepath.Join(dir, "config.json"), cj, 0o644)
			c.mutate(dir)
			_, _, err := Load(dir)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
			// The streaming loader refuses the same checkpoints.
			_, err = LoadInto(dir, context.New(), Storage{})
			named := strings.Contains(c.name, "finite") || strings.Contains(c.name, "fewer layers")
			if err == nil || named && !strings.Contains(err.Error(), c.want) {
				t.Fatalf("LoadInto: error %v does not mention %q", err, c.want)
			}
		})
	}
}

// TestLoadLlama2CErrors checks truncated or inconsistent llama2.c files.
func TestLoadLlama2CErrors(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(repoRoot(t), "assets", "data", "models", "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"truncated": src[:len(src)-4],
		"header":    src[:10],
		"bad dims":  append([]byte{0, 0, 0, 0x80}, src[4:]...),
	} {
		p := filepath.Join(t.TempDir(), "m.bin")
		os.WriteFile(p, b, 0o644)
		if _, _, err := LoadLlama2C(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v should name %s", name, err, p)
		}
	}
}

// FuzzParseHFConfig: config.json parsing never panics and accepted configs
// validate and render back.
func FuzzParseHFConfig(f *testing.F) {
	js, _ := tinyConfig().HFConfigJSON()
	f.Add(js)
	f.Add([]byte(`{"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":4,"rope_scaling":{"type":"linear","factor":2},"eos_token_id":[2,3]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseHFConfig(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.HFConfigJSON(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestParseHFConfig covers the family defaults: LLaMA-2-7B, Qwen2 (q/k/v
// biases only, tied), GQA, rope scaling, eos lists, score models.
func TestParseHFConfig(t *testing.T) {
	cases := []struct {
		name string
		js   string
		want func(c *Config) bool
	}{
		{"llama2-7b", `{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":11008,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32000,"max_position_embeddings":4096,"rms_norm_eps":1e-05,"bos_token_id":1,"eos_token_id":2,"pad_token_id":0}`,
			func(c *Config) bool {
				return c.Dh() == 128 && !c.TieWordEmbeddings && !c.AttentionBias && c.RopeTheta == 10000 && c.Pad == 0 && c.NumParams() == 6738415616
			}},
		{"qwen2", `{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936,"rope_theta":1000000.0,"tie_word_embeddings":true,"eos_token_id":151643}`,
			func(c *Config) bool {
				return c.AttentionBias && !c.OBias && c.TieWordEmbeddings && c.NumKVHeads == 2 && c.RopeTheta == 1e6 && c.EOS == 151643
			}},
		{"llama3 scaling, eos list", `{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":1,"vocab_size":100,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192},"eos_token_id":[7,9]}`,
			func(c *Config) bool {
				return c.RopeScaling != nil && c.RopeScaling.Type == "llama3" && c.EOS == 7 && c.NumKVHeads == 1
			}},
		{"score model", `{"architectures":["LlamaForScore"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":100,"score_dim":1}`,
			func(c *Config) bool { return c.ScoreDim == 1 && c.NumKVHeads == 4 }},
	}
	for _, c := range cases {
		cfg, err := ParseHFConfig([]byte(c.js))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !c.want(cfg) {
			t.Errorf("%s: unexpected %+v (params %d)", c.name, cfg, cfg.NumParams())
		}
	}
	if _, err := ParseHFConfig([]byte(`{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":3,"vocab_size":100}`)); err == nil {
		t.Error("hidden_size not a multiple of heads accepted")
	}
}

// FuzzLoadLlama2C: arbitrary llama2.c files give errors, never panics.
func FuzzLoadLlama2C(f *testing.F) {
	hdr := []byte{64, 0, 0, 0, 172, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 4, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0}
	f.Add(hdr)
	f.Add(append(hdr, make([]byte, 64)...))
	f.Add([]byte{1, 0, 0, 0, 255, 255, 255, 127})
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "m.bin")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, w, err := LoadLlama2C(p)
		if err == nil {
			if err := w.Check(cfg, false); err != nil {
				t.Fatalf("accepted file with inconsistent weights: %v", err)
			}
		}
	})
}

// TestScoreHeadInitAndConfigKeys: a fresh score head is normal(0, 0.02) with a zero bias (HF
// _init_weights), and a score model's config.json carries the reference's normaliser keys.
func TestScoreHeadInitAndConfigKeys(t *testing.T) {
	cfg := tinyConfig()
	cfg.HiddenSize = 4096
	w := Weights{}
	InitScoreHead(cfg, w, 1, 3)
	var s, s2 float64
	for _, v := range w[NameScoreW].Data {
		s += float64(v)
		s2 += float64(v) * float64(v)
	}
	n := float64(len(w[NameScoreW].Data))
	mean, std := s/n, math.Sqrt(s2/n-(s/n)*(s/n))
	if math.Abs(mean) > 0.002 || math.Abs(std-0.02) > 0.001 {
		t.Errorf("score head init mean %g std %g, want normal(0, 0.02)", mean, std)
	}
	for _, v := range w[NameScoreB].Data {
		if v != 0 {
			t.Fatalf("score head bias %v, want 0", w[NameScoreB].Data)
		}
	}
	cfg.Score = ScoreConfig{NormalizerType: "ExponentialMovingAverage", Momentum: 0.9, Mean: []float64{1.5}, Var: []float64{4}}
	js, err := cfg.HFConfigJSON()
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(js, &keys); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"score_type": "reward", "do_normalize": false, "normalizer_type": "ExponentialMovingAverage",
		"momentum": 0.9, "mean": []any{1.5}, "var": []any{4.0}, "score_dim": 1.0, "score_bias": true} {
		if !reflect.DeepEqual(keys[k], want) {
			t.Errorf("config.json %s = %v, want %v", k, keys[k], want)
		}
	}
}

func TestCheckFiniteBF16(t *testing.T) {
	// Little-endian bfloat16: 1.0 = 0x3f80, max finite = 0x7f7f, -1.0 = 0xbf80, +Inf = 0x7f80,
	// NaN = 0x7fc0, -Inf = 0xff80.
	for _, c := range []struct {
		raw []byte
		ok  bool
	}{{[]byte{0x80, 0x3f}, true}, {[]byte{0x7f, 0x7f}, true}, {[]byte{0x80, 0xbf}, true}, {[]byte{0x80, 0x7f}, false},
		{[]byte{0xc0, 0x7f}, false}, {[]byte{0x80, 0x3f, 0x80, 0xff}, false}} {
		if err := checkFiniteBF16("f", "w", c.raw); (err == nil) != c.ok {
			t.Errorf("% x: err %v", c.raw, err)
		}
	}
}

// TestResolveTokenizerBadModel: a model path that does not exist, or a file that is no model, is
// reported as such, not as "no tokenizer found" in it (a JSONL file passed as --model read as a
// llama2.c header asked for a tokenizer of 1179590727 tokens).
func TestResolveTokenizerBadModel(t *testing.T) {
	dir := t.TempDir()
	jsonl := filepath.Join(dir, "samples.jsonl")
	noConfig := filepath.Join(dir, "noconfig")
	if err := os.WriteFile(jsonl, []byte(`{"prompt": "p", "response": "r"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(noConfig, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "missing"), "no such file"},
		{"not a model", jsonl, "samples.jsonl: header field 0 = 1919951483 out of range"},
		{"a tokenizer", filepath.Join("..", "..", "assets", "data", "models", "tok512.bin"), "tok512.bin: header field"},
		{"a directory without config.json", noConfig, "config.json"},
	} {
		for _, resolve := range []func(string) (string, error){
			func(p string) (string, error) { return ResolveTokenizer("", p) }, OwnTokenizer} {
			if _, err := resolve(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "no tokenizer") {
				t.Errorf("%s: got %v, want an error about the model (%q)", tc.name, err, tc.want)
			}
		}
	}
	if _, err := ResolveTokenizer("", filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing model: %v, want os.ErrNotExist", err)
	}
}

// TestTokenizerBesidePaddedVocabulary: the reference's Llama-2 models carry a <pad> row (vocab_size
// 32001 for tokenizer.model's 32000, spec §6); their tokenizer is found, by ResolveTokenizer and
// OwnTokenizer alike. The exact size wins over a near one, and a tokenizer more than
// AddedSpecialTokens short of the model (tok512.bin for a 32000-row model) is never taken.
func TestTokenizerBesidePaddedVocabulary(t *testing.T) {
	assets := filepath.Join("..", "..", "assets", "data", "models")
	for _, tc := range []struct {
		name  string
		vocab int
		files []string
		want  string // "" for an error
	}{
		{"exact", 32000, []string{"tokenizer.model", "tok512.bin"}, "tokenizer.model"},
		{"reference <pad> row", 32001, []string{"tokenizer.model", "tok512.bin"}, "tokenizer.model"},
		{"four added specials", 32004, []string{"tokenizer.model"}, "tokenizer.model"},
		{"five rows more", 32005, []string{"tokenizer.model", "tok512.bin"}, ""},
		{"small model padded", 513, []string{"tokenizer.model", "tok512.bin"}, "tok512.bin"},
		{"exact beats near", 512, []string{"tokenizer.model", "tok512.bin"}, "tok512.bin"},
		{"only a far smaller one", 32001, []string{"tok512.bin"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := fmt.Sprintf(`{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
				"num_attention_heads": 2, "vocab_size": %d, "hidden_act": "silu"}`, tc.vocab)
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.files {
				b, err := os.ReadFile(filepath.Join(assets, f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for name, resolve := range map[string]func(string) (string, error){
				"ResolveTokenizer": func(p string) (string, error) { return ResolveTokenizer("", p) },
				"OwnTokenizer":     OwnTokenizer,
			} {
				got, err := resolve(dir)
				switch {
				case tc.want == "" && err == nil:
					t.Errorf("%s: took %s, want an error", name, got)
				case tc.want != "" && (err != nil || filepath.Base(got) != tc.want):
					t.Errorf("%s: got %q, %v; want %s", name, got, err, tc.want)
				}
			}
		})
	}
}

// TestTokenizerBesideDamaged: a tokenizer file beside the model that does not load is reported
// with its name and what is wrong with it, not as "no tokenizer found" (it was skipped silently);
// an intact one that fits still wins over it.
func TestTokenizerBesideDamaged(t *testing.T) {
	assets := filepath.Join("..", "..", "assets", "data", "models")
	for _, tc := range []struct {
		name   string
		intact bool
	}{{"only a damaged one", false}, {"an intact one too", true}} {
		dir := t.TempDir()
		cfg := `{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
			"num_attention_heads": 2, "vocab_size": 512, "hidden_act": "silu"}`
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "tokenizer.model"), []byte("not a sentencepiece model"), 0o644); err != nil {
			t.Fatal(err)
		}
		if tc.intact {
			b, err := os.ReadFile(filepath.Join(assets, "tok512.bin"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "tok512.bin"), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for name, resolve := range map[string]func(string) (string, error){
			"ResolveTokenizer": func(p string) (string, error) { return ResolveTokenizer("", p) },
			"OwnTokenizer":     OwnTokenizer,
		} {
			got, err := resolve(dir)
			switch {
			case tc.intact && (err != nil || filepath.Base(got) != "tok512.bin"):
				t.Errorf("%s, %s: got %q, %v; want tok512.bin", tc.name, name, got, err)
			case !tc.intact && (err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "tokenizer.model")+":")):
				t.Errorf("%s, %s: got %q, %v; want an error naming the damaged tokenizer.model", tc.name, name, got, err)
			}
		}
	}
}

// TestNoTokenizerBesideNamesFiles: when no tokenizer sits beside a model, the error of
// ResolveTokenizer and OwnTokenizer lists every name that is looked for (tokenizer.bin was missing).
func TestNoTokenizerBesideNamesFiles(t *testing.T) {
	dir := t.TempDir()
	cfg := `{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
		"num_attention_heads": 2, "vocab_size": 512, "hidden_act": "silu"}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, resolve := range map[string]func(string) (string, error){
		"ResolveTokenizer": func(p string) (string, error) { return ResolveTokenizer("", p) },
		"OwnTokenizer":     OwnTokenizer,
	} {
		_, err := resolve(dir)
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		for _, f := range []string{"tokenizer.model", "tok512.bin", "tokenizer.bin"} {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("%s: %v does not name %s", name, err, f)
			}
		}
	}
}

// TestCheckContext: the one context check of every command (sft/train-rm/dpo's --max-length,
// the scorer's, ppo's and generate's prompt + new tokens) refuses lengths past
// max_position_embeddings, with the messages the commands' tests pin.
func TestCheckContext(t *testing.T) {
	cfg := &Config{MaxPositions: 512}
	for _, tc := range []struct {
		what string
		n    int
		want string // "" for no error
	}{
		{"--max-length", 512, ""},
		{"--max-length", 513, "--max-length 513 exceeds the context of --model m (max_position_embeddings 512)"},
		{"--max-prompt-tokens 500 + --max-new-tokens 13", 513, "--max-prompt-tokens 500 + --max-new-tokens 13 = 513 exceed the context of --model m (max_position_embeddings 512)"},
		{"--max-prompt-tokens 500 + --max-new-tokens 12", 512, ""},
	} {
		err := cfg.CheckContext(tc.what, tc.n, "--model m")
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || err.Error() != tc.want) {
			t.Errorf("%s = %d: got %v, want %q", tc.what, tc.n, err, tc.want)
		}
	}
	if err := (&Config{}).CheckContext("--max-length", 1<<20, "--model m"); err != nil {
		t.Errorf("unknown context: %v, want no error", err)
	}
}
