package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/train/model"
)

// tinyScoreModels writes reward and cost models for tests: the stories260K trunk with fresh
// (seeded) score heads, as HF directories.
func tinyScoreModels(t *testing.T, dir string) (rm, cm string) {
	t.Helper()
	assets := filepath.Join("..", "..", "assets", "data", "models")
	for i, name := range []string{"rm", "cm"} {
		cfg, w, err := model.LoadLlama2C(filepath.Join(assets, "stories260K.bin"))
		if err != nil {
			t.Fatal(err)
		}
		delete(w, model.NameLMHead)
		model.InitScoreHead(cfg, w, 1, uint64(10+i))
		if err := model.SaveWithTokenizer(filepath.Join(dir, name), cfg, w, filepath.Join(assets, "tok512.bin")); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "rm"), filepath.Join(dir, "cm")
}

// TestPPOLagSIGKILLResume kills a ppo-lag run with SIGKILL right after its first checkpoint,
// resumes it with --resume, and requires metrics.jsonl to equal an uninterrupted run's byte for byte.
func TestPPOLagSIGKILLResume(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI")
	}
	ppoLagSIGKILLResume(t, buildCLIBinary(t), "go")
}

// TestNativePPOLagSIGKILLResume is TestPPOLagSIGKILLResume with the cgo binary: generation,
// scoring and the actor and critic updates on the native engine.
func TestNativePPOLagSIGKILLResume(t *testing.T) {
	ppoLagSIGKILLResume(t, buildNativeCLIBinary(t), "native")
}

func ppoLagSIGKILLResume(t *testing.T, bin, backend string) {
	dir := t.TempDir()
	rm, cm := tinyScoreModels(t, dir)
	assets := filepath.Join("..", "..", "assets", "data")
	args := func(out string) []string {
		return []string{"ppo-lag", "--actor", filepath.Join(assets, "models", "stories260K.bin"),
			"--tokenizer", filepath.Join(assets, "models", "tok512.bin"), "--reward-model", rm, "--cost-model", cm,
			"--train-data", filepath.Join(assets, "pku-saferlhf", "align-anything-preference-sample.json"),
			"--max-prompt-tokens", "96", "--max-new-tokens", "8", "--prompt-batch-size", "4", "--train-batch-size", "2",
			"--max-steps", "5", "--checkpoint-every", "1", "--eval-size", "0", "--actor-lr", "1e-3", "--critic-lr", "1e-3",
			"--backend", backend, "--output", out}
	}
	run := func(a []string) {
		t.Helper()
		cmd := exec.Command(bin, a...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", a, err, out)
		}
	}
	ref := filepath.Join(dir, "ref")
	run(args(ref))
	want, err := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
	if err != nil || bytes.Count(want, []byte("\n")) != 5 {
		t.Fatalf("reference run: %v, %q", err, want)
	}

	out := filepath.Join(dir, "killed")
	cmd := exec.Command(bin, args(out)...)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(out, "checkpoints", "latest")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("no checkpoint after 2 minutes:\n%s", log.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if st, _ := cmd.ProcessState.Sys().(syscall.WaitStatus); !st.Signaled() {
		t.Logf("the run ended before the kill landed (%v); resuming anyway", cmd.ProcessState)
	}
	run(append(args(out), "--resume"))
	got, err := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("resumed metrics differ from the uninterrupted run:\n got %s\nwant %s", got, want)
	}
	// The last checkpoint opens with generate on its own (weights, config.json and tokenizer inside)
	// and generates what the final policy does.
	gen := func(m string) string {
		t.Helper()
		out, err := exec.Command(bin, "generate", "--model", m, "--backend", backend,
			"--prompt", "Once upon", "--max-new-tokens", "6", "--temperature", "0", "--print-ids").CombinedOutput()
		if err != nil {
			t.Fatalf("generate --model %s: %v\n%s", m, err, out)
		}
		return string(out)
	}
	if c, p := gen(filepath.Join(out, "checkpoints", "step-00000005")), gen(filepath.Join(out, "policy")); c != p || c == "" {
		t.Fatalf("checkpoint generates %q, the final policy %q", c, p)
	}
}

// TestRLFlagErrors: bad command lines fail before any model is loaded.
func TestRLFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func([]string) error
		args []string
		want string
	}{
		{"no actor", runPPOLag, []string{"--reward-model", "r", "--cost-model", "c", "--train-data", "d"}, "--actor"},
		{"no cost model", runPPOLag, []string{"--actor", "a", "--reward-model", "r", "--train-data", "d"}, "--cost-model is required"},
		{"ppo needs no cost model", runPPO, []string{"--actor", "a", "--reward-model", "r"}, "--data is required"},
		{"bad lambda", runPPOLag, []string{"--lambda", "adam"}, "--lambda"},
		{"indivisible batch", runPPOLag, []string{"--actor", "a", "--reward-model", "r", "--cost-model", "c", "--train-data", "d",
			"--prompt-batch-size", "6", "--train-batch-size", "4"}, "divisible"},
		{"lora", runPPOLag, []string{"--actor", "a", "--reward-model", "r", "--cost-model", "c", "--train-data", "d", "--lora-rank", "8", "--lora-alpha", "0"}, "--lora-alpha"},
		{"bad rl math", runPPO, []string{"--actor", "a", "--reward-model", "r", "--train-data", "d", "--rl-math", "gpu"}, "--rl-math"},
		{"ptx data without a coefficient", runPPO, []string{"--actor", "a", "--reward-model", "r", "--train-data", "d", "--ptx-data", "p", "--ptx-coeff", "0"}, "--ptx-coeff"},
		{"negative top-k", runPPOLag, []string{"--actor", "a", "--reward-model", "r", "--cost-model", "c", "--train-data", "d", "--top-k", "-1"}, "--top-k must be >= 0, got -1"},
		{"zero top-p", runPPO, []string{"--actor", "a", "--reward-model", "r", "--train-data", "d", "--top-p", "0"}, "--top-p must be in (0, 1], got 0"},
		{"generate: zero top-p", runGenerate, []string{"--model", "m", "--prompt", "p", "--top-p", "0"}, "--top-p must be in (0, 1], got 0"},
		{"eval-arena: top-p above 1", runEvalArena, []string{"--red", "a", "--blue", "b", "--top-p", "1.5"}, "--top-p must be in (0, 1], got 1.5"},
	} {
		err := tc.run(tc.args)
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%s: err = %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

// TestPPOLagRetokenizedCostModel runs ppo-lag end to end with the stories260K actor (512-token
// vocabulary) and a cost model on the Llama-2 32K tokenizer (a fresh small trunk): the cost model
// scores re-tokenised text, the cost critic starts from the actor, and the run trains and
// evaluates with finite costs.
func TestPPOLagRetokenizedCostModel(t *testing.T) {
	dir := t.TempDir()
	rm, _ := tinyScoreModels(t, dir)
	assets := filepath.Join("..", "..", "assets", "data")
	llama, err := tokenizer.Load(filepath.Join(assets, "models", "tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	ccfg := &model.Config{Architecture: "LlamaForScore", ModelType: "llama", HiddenSize: 16, IntermediateSize: 32,
		NumLayers: 1, NumHeads: 2, NumKVHeads: 2, VocabSize: llama.VocabSize(), MaxPositions: 512, RMSNormEps: 1e-5,
		RopeTheta: 10000, BOS: 1, EOS: 2, Pad: -1}
	w := model.RandomWeights(ccfg, 3)
	model.InitScoreHead(ccfg, w, 1, 4)
	cm := filepath.Join(dir, "cm32k")
	if err := model.SaveWithTokenizer(cm, ccfg, w, filepath.Join(assets, "models", "tokenizer.model")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	err = runPPOLag([]string{"--actor", filepath.Join(assets, "models", "stories260K.bin"),
		"--tokenizer", filepath.Join(assets, "models", "tok512.bin"), "--reward-model", rm, "--cost-model", cm,
		"--train-data", filepath.Join(assets, "pku-saferlhf", "align-anything-preference-sample.json"),
		"--max-prompt-tokens", "96", "--max-new-tokens", "6", "--prompt-batch-size", "2", "--train-batch-size", "2",
		"--max-steps", "2", "--eval-size", "2", "--eval-batch-size", "2", "--output", out})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sum struct {
		Before, After struct {
			N        int     `json:"n"`
			CostMean float64 `json:"cost_mean"`
		}
	}
	if err := json.Unmarshal(b, &sum); err != nil || sum.After.N < 1 || sum.After.CostMean == 0 {
		t.Fatalf("summary %s (%v)", b, err)
	}
}

// PPO settings are checked before any work and leave nothing behind: numeric flags (usage
// errors), lengths beyond the models' context and a bad data spec (failures, after loading).
func TestRLValidationLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	rm, cm := tinyScoreModels(t, dir)
	assets := filepath.Join("..", "..", "assets", "data")
	base := func(out string) []string {
		return []string{"--model", filepath.Join(assets, "models", "stories260K.bin"), "--tokenizer", filepath.Join(assets, "models", "tok512.bin"),
			"--reward-model", rm, "--cost-model", cm, "--data", filepath.Join(assets, "eval", "safe-rlhf-gpt4-problems.json"), "--out", out}
	}
	for i, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--actor-lr", "0"}, 2, "--actor-lr must be > 0"},
		{[]string{"--lambda-lr", "-1"}, 2, "--lambda-lr must be >= 0"},
		{[]string{"--kl-coeff", "-0.1"}, 2, "--kl-coeff must be >= 0"},
		{[]string{"--repetition-penalty", "0"}, 2, "--repetition-penalty"},
		{[]string{"--ptx-coeff", "-1"}, 2, "--ptx-coeff"},
		{[]string{"--threshold", "NaN"}, 2, "finite"},
		{[]string{"--rl-math", "graph", "--backend", "native"}, 2, "--rl-math graph needs a GoMLX backend"},
		{[]string{"--collectives", "nccl", "--backend", "go"}, 2, "--collectives nccl needs --backend xla:cuda"},
		{[]string{"--collectives", "gloo"}, 2, `--collectives "gloo": want auto, tcp or nccl`},
		{[]string{"--gpu-memory-fraction", "0.5", "--backend", "go"}, 2, "--gpu-memory-fraction 0.5: --backend go:ops_sequential has no GPU memory pool"},
		{[]string{"--max-new-tokens", "600"}, 1, "exceed the context"},
		{[]string{"--data", "nosuchformat:x.json"}, 1, `unknown format "nosuchformat"`},
	} {
		out := filepath.Join(dir, fmt.Sprint("out", i))
		a := append(append([]string{"ppo-lag"}, base(out)...), tc.args...)
		if tc.args[0] == "--data" {
			a = append([]string{"ppo-lag"}, base(out)[:8]...)
			a = append(a, "--out", out, "--data", tc.args[1])
		}
		code, errOut := runIn(t, a...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, want %d; stderr %q", tc.args, code, tc.code, errOut)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%v: %s was created", tc.args, out)
		}
	}
}
