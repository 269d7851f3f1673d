package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/ppo"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// TestNativeBF16Checkpoints: bf16 checkpoints (as --save-dtype bf16 or an HF
// bf16 safetensors write them) load on the native engine, widened to float32,
// for generate, sft and ppo-lag: each command gives exactly what it gives on
// float32 checkpoints of the same bf16-rounded weights.
func TestNativeBF16Checkpoints(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	assets := filepath.Join("..", "..", "assets", "data")
	tok := filepath.Join(assets, "models", "tok512.bin")
	dir := t.TempDir()
	// save writes stories260K (a fresh score head when score) twice, with its tokenizer: as
	// bf16, and as float32 holding the bf16-rounded values.
	save := func(name string, score uint64) (bf16, f32 string) {
		cfg, w, err := model.LoadLlama2C(filepath.Join(assets, "models", "stories260K.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if score > 0 {
			delete(w, model.NameLMHead)
			model.InitScoreHead(cfg, w, 1, score)
		}
		bf16, f32 = filepath.Join(dir, name+"-bf16"), filepath.Join(dir, name+"-f32")
		if err := model.SaveAs(bf16, cfg, w, safetensors.BF16); err != nil {
			t.Fatal(err)
		}
		for _, v := range w {
			for i, x := range model.ToBF16(v.Data) {
				v.Data[i] = x.Float32()
			}
		}
		if err := model.Save(f32, cfg, w); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(tok) // a score model is read with its own tokenizer
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{bf16, f32} {
			if err := os.WriteFile(filepath.Join(d, "tok512.bin"), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return bf16, f32
	}
	actor := [2]string{}
	actor[0], actor[1] = save("actor", 0)
	rm, cm := [2]string{}, [2]string{}
	rm[0], rm[1] = save("rm", 10)
	cm[0], cm[1] = save("cm", 11)
	same := func(what string, run func(k int) []byte) {
		t.Helper()
		a, b := run(0), run(1)
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s: bf16 checkpoint gives\n%s\nthe rounded f32 one\n%s", what, a, b)
		}
	}
	same("generate", func(k int) []byte {
		return []byte(captureStdout(t, func() error {
			return runGenerate([]string{"--backend", "native", "--model", actor[k], "--tokenizer", tok, "--prompt", "Once upon a time",
				"--max-new-tokens", "24", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3", "--print-ids"})
		}))
	})
	metricsOf := func(out string) []byte {
		b, err := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	same("sft", func(k int) []byte {
		out := filepath.Join(dir, "sft", filepath.Base(actor[k]))
		if err := runSFT([]string{"--backend", "native", "--model", actor[k], "--tokenizer", tok,
			"--data", filepath.Join(assets, "helpful", "hh-rlhf-helpful-base-test.jsonl.gz"), "--out", out,
			"--max-length", "32", "--batch-size", "4", "--steps", "2", "--lr", "1e-3", "--eval-max", "8", "--truncate", "prompt-left"}); err != nil {
			t.Fatal(err)
		}
		return metricsOf(out)
	})
	same("ppo-lag", func(k int) []byte {
		out := filepath.Join(dir, "ppo", filepath.Base(actor[k]))
		if err := runPPOLag([]string{"--backend", "native", "--actor", actor[k], "--reward-model", rm[k], "--cost-model", cm[k],
			"--tokenizer", tok, "--train-data", filepath.Join(assets, "pku-saferlhf", "align-anything-preference-sample.json"),
			"--max-prompt-tokens", "32", "--max-new-tokens", "6", "--prompt-batch-size", "2", "--train-batch-size", "2",
			"--max-steps", "2", "--eval-size", "0", "--output", out}); err != nil {
			t.Fatal(err)
		}
		return metricsOf(out)
	})
}

// TestNativeBench: `saferlhf bench --backend native` times a step run by the
// native engine (generation, scoring and updates all on native models, no
// GoMLX program compiled) and leaves out the device-only rows.
func TestNativeBench(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	js := filepath.Join(t.TempDir(), "bench.json")
	out := captureStdout(t, func() error {
		return runBench([]string{"--backend", "native", "--preset", "stories260K", "--batch", "2", "--prompt-len", "4",
			"--gen-len", "4", "--steps", "1", "--json", js})
	})
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var r ppo.BenchResult
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.Engine != "native" || len(r.Programs) != 0 {
		t.Errorf("engine %q, %d GoMLX programs: want the native engine and none", r.Engine, len(r.Programs))
	}
	if r.GenSeconds <= 0 || r.ScoreSeconds <= 0 || r.ActorSeconds <= 0 || r.CriticSecs <= 0 {
		t.Errorf("phases not timed: %+v", r)
	}
	if strings.Contains(out, "device copy bandwidth") || strings.Contains(out, "compile estimate") {
		t.Errorf("device-only rows printed for the native engine:\n%s", out)
	}
}
