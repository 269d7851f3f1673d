package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/train/model"
)

// TestGenerateCLIGolden: `saferlhf generate --temperature 0 --print-ids`
// reproduces llama2.c's greedy ids for a golden prompt.
func TestGenerateCLIGolden(t *testing.T) {
	root := filepath.Join("..", "..")
	data, err := os.ReadFile(filepath.Join(root, "assets", "golden", "llama2c", "stories260k_greedy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Cases []struct {
			Name         string  `json:"name"`
			Prompt       string  `json:"prompt"`
			GeneratedIDs []int32 `json:"generated_ids"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	c := g.Cases[1]
	n := 20
	bin := filepath.Join(root, "assets", "data", "models", "stories260K.bin")
	// The same model as an HF directory (safetensors + config.json).
	cfg, w, err := model.LoadLlama2C(bin)
	if err != nil {
		t.Fatal(err)
	}
	hf := filepath.Join(t.TempDir(), "hf")
	if err := model.Save(hf, cfg, w); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{bin, hf} {
		out := captureStdout(t, func() error {
			return runGenerate([]string{"--model", m,
				"--tokenizer", filepath.Join(root, "assets", "data", "models", "tok512.bin"),
				"--prompt", c.Prompt, "--max-new-tokens", strconv.Itoa(n), "--temperature", "0", "--print-ids"})
		})
		fields := strings.Fields(out)
		if len(fields) != n {
			t.Fatalf("%s %s: got %d ids: %q", m, c.Name, len(fields), out)
		}
		for i, f := range fields {
			if f != strconv.Itoa(int(c.GeneratedIDs[i])) {
				t.Fatalf("%s %s: id %d = %s, llama2.c %d", m, c.Name, i, f, c.GeneratedIDs[i])
			}
		}
	}
}

// generate refuses non-finite weights (naming the tensor) and a config.json that
// disagrees with the weights, as the training commands do.
func TestGenerateRefusesBadModels(t *testing.T) {
	root := filepath.Join("..", "..")
	tok := filepath.Join(root, "assets", "data", "models", "tok512.bin")
	cfg, w, err := model.LoadLlama2C(filepath.Join(root, "assets", "data", "models", "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	nan := filepath.Join(t.TempDir(), "nan")
	w[model.NameFinalNorm].Data[0] = float32(math.Inf(1))
	if err := model.Save(nan, cfg, w); err != nil {
		t.Fatal(err)
	}
	if err := runGenerate([]string{"--model", nan, "--tokenizer", tok}); err == nil || !strings.Contains(err.Error(), model.NameFinalNorm) {
		t.Errorf("non-finite weights: err = %v", err)
	}
	w[model.NameFinalNorm].Data[0] = 1
	bad := filepath.Join(t.TempDir(), "bad")
	if err := model.Save(bad, cfg, w); err != nil {
		t.Fatal(err)
	}
	js, _ := os.ReadFile(filepath.Join(bad, "config.json"))
	js = []byte(strings.Replace(string(js), fmt.Sprintf(`"num_hidden_layers": %d`, cfg.NumLayers), fmt.Sprintf(`"num_hidden_layers": %d`, cfg.NumLayers-1), 1))
	os.WriteFile(filepath.Join(bad, "config.json"), js, 0o644)
	if err := runGenerate([]string{"--model", bad, "--tokenizer", tok}); err == nil || !strings.Contains(err.Error(), "not part of the model") {
		t.Errorf("config disagreeing with the weights: err = %v", err)
	}
	// A score model (as train-rm saves it) is no policy: its tied head scored, it never predicted.
	score := filepath.Join(t.TempDir(), "score")
	scfg := *cfg
	scfg.ScoreDim, scfg.Score.Type = 1, "reward"
	sw := model.Weights{}
	for k, v := range w {
		sw[k] = v
	}
	sw[model.NameScoreW] = &model.Tensor{Shape: []int{1, cfg.HiddenSize}, Data: make([]float32, cfg.HiddenSize)}
	sw[model.NameScoreB] = &model.Tensor{Shape: []int{1}, Data: []float32{0}}
	if err := model.Save(score, &scfg, sw); err != nil {
		t.Fatal(err)
	}
	if err := runGenerate([]string{"--model", score, "--tokenizer", tok}); err == nil || !strings.Contains(err.Error(), "is a score model") {
		t.Errorf("a score model as the policy: err = %v", err)
	}
	// Beyond the context: the native engine said "decode layer dimensions exceed int32".
	stories := filepath.Join(root, "assets", "data", "models", "stories260K.bin")
	for _, n := range []string{"508", "100000000"} {
		if err := runGenerate([]string{"--model", stories, "--tokenizer", tok, "--prompt", "Once upon a time", "--max-new-tokens", n}); err == nil ||
			!strings.Contains(err.Error(), "--max-new-tokens "+n) || !strings.Contains(err.Error(), "exceed the context of --model") {
			t.Errorf("--max-new-tokens %s: err = %v", n, err)
		}
	}
}
