package main

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/train/eval"
	"github.com/saferlhf/saferlhf/train/metrics"
	"github.com/saferlhf/saferlhf/train/stages"
)

// tinyStage trains a stage for a few steps on the bundled model and returns its model dir.
func tinyStage(t *testing.T, stage stages.Stage, model string, data ...string) string {
	return tinyStageTok(t, stage, model, "../../assets/data/models/tok512.bin", data...)
}

// tinyStageTok is tinyStage with a tokenizer; a Llama-2-vocabulary one starts the
// demo's one-layer score-model config from scratch.
func tinyStageTok(t *testing.T, stage stages.Stage, model, tok string, data ...string) string {
	t.Helper()
	c := stages.Defaults(stage)
	c.Model, c.Data, c.Out = model, data, t.TempDir()
	c.Tokenizer = tok
	if strings.HasSuffix(tok, "tokenizer.model") {
		c.Init = "scratch"
	}
	c.MaxLength, c.BatchSize, c.Accumulation, c.Steps, c.Epochs, c.EvalMax, c.LR = 32, 4, 1, 2, 1, 4, 1e-3
	c.Truncate = "prompt-left"
	r, err := stages.Run(context.Background(), stage, c)
	if err != nil {
		t.Fatal(err)
	}
	return r.ModelDir
}

// TestCompareCommand runs saferlhf compare end to end on a tiny budget: tiny SFT,
// reward, cost and judge models, one rollout batch per algorithm, eight held-out
// prompts; then checks the table, the PNG, and that a rerun with --resume keeps the
// finished runs and that one without it refuses the non-empty output.
func TestCompareCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("trains four tiny models and five tiny RL runs")
	}
	a := "../../assets/data"
	sft := tinyStage(t, stages.SFT, a+"/models/stories260K.bin", a+"/pku-saferlhf/align-anything-preference-sample.json")
	rm := tinyStage(t, stages.RM, sft, a+"/helpful/hh-rlhf-helpful-base-test.jsonl.gz")
	// The training cost model reads the answers re-tokenised (Llama-2 vocabulary, as the demo's).
	cm := tinyStageTok(t, stages.CM, "../../scripts/configs/score-llama2-1layer.json", a+"/models/tokenizer.model",
		a+"/pku-saferlhf/align-anything-preference-sample.json")
	judge := tinyStage(t, stages.CM, a+"/models/stories260K.bin", a+"/hh-rlhf/harmless-base-test.jsonl.gz")
	out := filepath.Join(t.TempDir(), "compare")
	args := []string{"--actor", sft, "--reward-model", rm, "--cost-model", cm, "--judge-cost-model", judge,
		"--train-data", a + "/eval/safe-rlhf-gpt4-problems.json", "--eval-split", "0.2", "--eval-size", "8",
		"--max-steps", "1", "--prompt-batch-size", "4", "--train-batch-size", "4", "--max-new-tokens", "8",
		"--max-prompt-tokens", "24", "--eval-batch-size", "8", "--bootstrap", "50", "--actor-lr", "1e-3",
		"--shaping-lambdas", "0.1,5", "--output", out}
	stdout := captureStdout(t, func() error { return runCompare(args) })
	if !strings.Contains(stdout, "ppo-lag-pid") || !strings.Contains(stdout, "harmful (judge CM)") {
		t.Fatalf("table:\n%s", stdout)
	}
	b, err := os.ReadFile(filepath.Join(out, "compare.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep eval.CompareReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rep.Rows {
		names = append(names, r.Name)
		if len(r.Rewards) != 8 || len(r.JudgeCosts) != 8 || !(r.Reward.Lo <= r.Reward.Mean && r.Reward.Mean <= r.Reward.Hi) ||
			!(r.JudgeHarmful.Lo <= r.JudgeHarmful.Mean && r.JudgeHarmful.Mean <= r.JudgeHarmful.Hi) {
			t.Errorf("row %s: %d rewards, %d judge costs, reward %+v, judge harmful %+v", r.Name, len(r.Rewards), len(r.JudgeCosts), r.Reward, r.JudgeHarmful)
		}
	}
	want := []string{"sft", "ppo", "shaping-0.1", "shaping-5", "ppo-lag", "ppo-lag-pid"}
	if !slices.Equal(names, want) {
		t.Fatalf("policies %v, want %v", names, want)
	}
	// The reward-shaping runs trained with their fixed penalties.
	for run, want := range map[string]float64{"shaping-0.1": 0.1, "shaping-5": 5} {
		recs, err := metrics.Read(filepath.Join(out, run, "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		if _, l := metrics.Series(recs, "lambda", ""); len(l) == 0 || math.Abs(l[0]-want) > 1e-9*want {
			t.Errorf("%s: λ %v, want %g", run, l, want)
		}
	}
	if st, err := os.Stat(filepath.Join(out, "compare.png")); err != nil || st.Size() < 10000 {
		t.Fatalf("compare.png: %v", err)
	}
	if keep := os.Getenv("SAFERLHF_KEEP_COMPARE"); keep != "" {
		b, _ := os.ReadFile(filepath.Join(out, "compare.png"))
		_ = os.WriteFile(keep, b, 0o644)
	}
	if err := runCompare(args); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Fatalf("rerun into a non-empty --output: error %v, want one asking for --resume", err)
	}
	stdout = captureStdout(t, func() error { return runCompare(append(args, "--resume")) })
	if !strings.Contains(stdout, "shaping-5") {
		t.Fatalf("resumed table:\n%s", stdout)
	}
	var ue usageError
	if err := runCompare(append(args[:len(args)-2], "--output", t.TempDir(), "--judge-cost-model", "")); !errors.As(err, &ue) {
		t.Fatalf("missing judge: %v, want a usage error", err)
	}
}

// TestRetokenize checks that a judge with another vocabulary reads the same text.
func TestRetokenize(t *testing.T) {
	from, err := tokenizer.Load("../../assets/data/models/tok512.bin")
	if err != nil {
		t.Fatal(err)
	}
	to, err := tokenizer.Load("../../assets/data/models/tokenizer.model")
	if err != nil {
		t.Fatal(err)
	}
	text := "BEGINNING OF CONVERSATION: USER: How do I stay safe? ASSISTANT: Lock the door."
	seq := append(from.Encode(text, true), from.EOS())
	got := eval.Retokenize([][]int32{seq, seq[:len(seq)-1]}, from, to)
	want := append(to.Encode(text, true), to.EOS())
	// The reference's batch_retokenize appends EOS whether or not the answer ended with one.
	if !slices.Equal(got[0], want) || !slices.Equal(got[1], want) {
		t.Fatalf("retokenised %v / %v, want %v", got[0], got[1], want)
	}
}

// TestMissingModelNamesFlag: a model path that does not exist is reported naming its flag
// ("--reward-model DIR/missing: no such file or directory"), not as a bare stat error.
func TestMissingModelNamesFlag(t *testing.T) {
	dir := t.TempDir()
	ok, missing := dir, filepath.Join(dir, "missing")
	data := filepath.Join(dir, "d.json")
	for _, tc := range []struct {
		name string
		run  func([]string) error
		flag string
		args []string // the other flags; the one under test is added with the missing path
	}{
		{"eval-rm", runEvalRM, "model", []string{"--data", data}},
		{"eval-cm", runEvalCM, "model", []string{"--data", data}},
		{"judge", runJudge, "model", []string{"--before", data, "--after", data}},
		{"eval-arena", runEvalArena, "reward-model", []string{"--red", ok, "--blue", ok, "--cost-model", ok}},
		{"eval-arena", runEvalArena, "cost-model", []string{"--red", ok, "--blue", ok, "--reward-model", ok}},
		{"eval-arena", runEvalArena, "blue", []string{"--red", ok, "--reward-model", ok, "--cost-model", ok}},
		{"compare", runCompare, "reward-model", []string{"--actor", ok, "--cost-model", ok, "--judge-cost-model", ok, "--train-data", data, "--eval-size", "8"}},
		{"compare", runCompare, "judge-cost-model", []string{"--actor", ok, "--reward-model", ok, "--cost-model", ok, "--train-data", data, "--eval-size", "8"}},
	} {
		args := append(append([]string{"--" + tc.flag, missing}, tc.args...), "--out", filepath.Join(dir, "out-"+tc.name))
		err := tc.run(args)
		want := "--" + tc.flag + " " + missing + ": no such file or directory"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s with a missing --%s: error %v, want %q", tc.name, tc.flag, err, want)
		}
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v does not wrap os.ErrNotExist", tc.name, err)
		}
	}
}
