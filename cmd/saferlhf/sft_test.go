package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/saferlhf/saferlhf/train/checkpoint"
)

func sftArgs(out string, extra ...string) []string {
	a := "../../assets/data"
	return append([]string{"sft", "--model", a + "/models/stories260K.bin", "--tokenizer", a + "/models/tok512.bin",
		"--data", a + "/helpful/hh-rlhf-helpful-base-test.jsonl.gz", "--out", out,
		"--max-length", "32", "--batch-size", "4", "--grad-accum", "2", "--steps", "16", "--lr", "1e-3",
		"--eval-max", "8", "--eval-every", "4", "--save-every", "2", "--truncate", "prompt-left"}, extra...)
}

// TestSIGKILLResumeIsBitExact kills an SFT run (SIGKILL, no chance to clean up)
// after its first checkpoint, resumes it, and requires the metrics file and the
// final model to equal those of an uninterrupted run byte for byte. It then does
// the same with SIGINT (Ctrl-C), which must checkpoint and exit with an error.
func TestSIGKILLResumeIsBitExact(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI and trains five times")
	}
	sigkillResume(t, buildCLIBinary(t), "go")
}

// TestNativeSIGKILLResumeIsBitExact is TestSIGKILLResumeIsBitExact with the
// cgo binary training on the native engine.
func TestNativeSIGKILLResumeIsBitExact(t *testing.T) {
	sigkillResume(t, buildNativeCLIBinary(t), "native")
}

func sigkillResume(t *testing.T, bin, backend string) {
	sftArgs := func(out string, extra ...string) []string {
		return sftArgs(out, append([]string{"--backend", backend}, extra...)...)
	}
	ref := t.TempDir()
	if out, err := exec.Command(bin, sftArgs(ref)...).CombinedOutput(); err != nil {
		t.Fatalf("reference run: %v\n%s", err, out)
	}
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGINT} {
		dir := t.TempDir()
		cmd := exec.Command(bin, sftArgs(dir)...)
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		latest := filepath.Join(dir, "checkpoints", checkpoint.LatestFile)
		deadline := time.Now().Add(2 * time.Minute)
		sent := false
		for !sent && time.Now().Before(deadline) {
			select {
			case err := <-done:
				t.Fatalf("%v: the run finished before the signal (%v): make it longer\n%s", sig, err, log.String())
			default:
			}
			if _, err := os.Stat(latest); err == nil {
				if err := cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
				sent = true
			}
			time.Sleep(5 * time.Millisecond)
		}
		if !sent {
			t.Fatal("no checkpoint within 2 minutes")
		}
		err := <-done
		ck, _ := os.ReadFile(latest)
		t.Logf("%v after checkpoint %s", sig, strings.TrimSpace(string(ck)))
		if sig == syscall.SIGINT && (err == nil || !strings.Contains(log.String(), "interrupted after step") ||
			!strings.Contains(log.String(), filepath.Join(dir, "checkpoints", "step-"))) {
			t.Fatalf("SIGINT: want an error exit naming the interruption and the saved checkpoint, got %v\n%s", err, log.String())
		}
		if out, err := exec.Command(bin, sftArgs(dir, "--resume")...).CombinedOutput(); err != nil {
			t.Fatalf("resumed run: %v\n%s", err, out)
		}
		// The final checkpoint is a model directory with its tokenizer, and verifies.
		if _, err := checkpoint.Load(filepath.Join(dir, "checkpoints", "step-00000016")); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"config.json", "model.safetensors", "tok512.bin"} {
			if _, err := os.Stat(filepath.Join(dir, "checkpoints", "step-00000016", f)); err != nil {
				t.Errorf("checkpoint: %v", err)
			}
		}
		for _, f := range []string{"metrics.jsonl", "model/model.safetensors"} {
			want, err := os.ReadFile(filepath.Join(ref, f))
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%v: %s differs after resume:\n%s\nwant:\n%s", sig, f, trunc(got), trunc(want))
			}
		}
	}
}

func trunc(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "..."
	}
	return string(b)
}

func TestStageFlagErrors(t *testing.T) {
	ok := []string{"--model", "m.bin", "--data", "d.json", "--out", t.TempDir()}
	for _, args := range [][]string{
		append(ok, "--lr", "-3"),
		append(ok, "--batch-size", "0"),
		append(ok, "--loss-type", "bogus"),
		append(ok, "--max-length", "4"),
		{"--data", "d.json", "--out", "o"}, // no model
		append(ok, "stray-argument"),
		append(ok, "--collectives", "mpi"),
		append(ok, "--collectives", "nccl", "--backend", "go"),
		append(ok, "--gpu-memory-fraction", "1.5"),
		append(ok, "--gpu-memory-fraction", "0.5", "--backend", "go"), // nothing would apply it
	} {
		err := runTrainRM(args)
		if _, isUsage := err.(usageError); !isUsage {
			t.Errorf("args %v: want a usage error (before any work), got %v", args, err)
		}
	}
	err := runTrainRM(append(ok, "--collectives", "nccl", "--backend", "native"))
	if err == nil || !strings.Contains(err.Error(), "--collectives nccl needs --backend xla:cuda (NCCL averages gradients in GPU memory), not --backend native") {
		t.Errorf("--collectives nccl on native: %v", err)
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "rm.json")
	os.WriteFile(cfg, []byte(`{"model": "x.bin", "data": ["a.json", "b.json"], "out": "`+filepath.Join(dir, "o")+`", "lr": 2, "batch-size": 4}`), 0o644)
	err := runTrainRM([]string{"--config", cfg})
	if _, ok := err.(usageError); !ok || !strings.Contains(err.Error(), "--lr 2") {
		t.Fatalf("want a usage error naming --lr 2 from the config file, got %v", err)
	}
	// A flag on the command line wins over the file; then the missing model is the error.
	err = runTrainRM([]string{"--config", cfg, "--lr", "1e-3"})
	if err == nil || strings.Contains(err.Error(), "--lr") || !strings.Contains(err.Error(), "x.bin") {
		t.Fatalf("want an error about the missing model x.bin, got %v", err)
	}
	os.WriteFile(cfg, []byte("learning-rate: 1\n"), 0o644)
	if err := runTrainRM([]string{"--config", cfg}); err == nil || !strings.Contains(err.Error(), "unknown key") {
		t.Fatalf("want an unknown-key error, got %v", err)
	}
}

// TestStageInputErrorsLeaveNothing: a training stage that fails on its inputs (a
// missing model or data file, a dtype the backend cannot run) creates no output
// directory, so the same command with the inputs fixed runs without --force.
func TestStageInputErrorsLeaveNothing(t *testing.T) {
	assets := filepath.Join("..", "..", "assets", "data")
	model := filepath.Join(assets, "models", "stories260K.bin")
	data := filepath.Join(assets, "helpful", "llamafactory-dpo_en_demo.json")
	dir := t.TempDir()
	for i, tc := range []struct {
		run  func([]string) error
		args []string
		want string
	}{
		{runSFT, []string{"--model", filepath.Join(dir, "missing.bin"), "--data", data}, "missing.bin"},
		{runSFT, []string{"--model", model, "--data", filepath.Join(dir, "missing.json")}, "missing.json"},
		{runTrainRM, []string{"--model", model, "--data", filepath.Join(dir, "missing.jsonl")}, "missing.jsonl"},
		{runDPO, []string{"--model", model, "--data", filepath.Join(dir, "missing.json")}, "missing.json"},
		// Batches are --max-length wide: beyond the model's context it ran out of memory.
		{runSFT, []string{"--model", model, "--data", data, "--max-length", "100000000"}, "--max-length 100000000 exceeds the context of --model"},
		{runTrainCM, []string{"--model", model, "--data", data, "--max-length", "513"}, "(max_position_embeddings 512)"},
		{runDPO, []string{"--model", model, "--data", data, "--max-length", "4096"}, "--max-length 4096 exceeds the context"},
	} {
		out := filepath.Join(dir, fmt.Sprint("out", i))
		err := tc.run(append(tc.args, "--out", out, "--max-steps", "1", "--backend", "go"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error naming %s", tc.args, err, tc.want)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%v: the failed run left its output %s behind (%v)", tc.args, out, err)
		}
	}
}

// TestEvalInputErrorsLeaveNothing: an evaluation that fails on its inputs leaves --out as it found
// it: one it created is removed and one that was empty is empty again (its run.json alone made the
// corrected rerun need --force), and a previous report --force would replace is still there.
func TestEvalInputErrorsLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	for i, tc := range []struct {
		run  func([]string) error
		args []string
	}{
		{runEvalRM, []string{"--model", missing, "--data", "d.json"}},
		{runEvalCM, []string{"--model", missing, "--data", "d.json"}},
		{runEvalArena, []string{"--red", missing, "--blue", missing, "--reward-model", missing, "--cost-model", missing}},
		{runJudge, []string{"--model", missing, "--before", missing, "--after", missing}},
	} {
		out := filepath.Join(dir, fmt.Sprint("out", i))
		if err := tc.run(append(tc.args, "--out", out, "--backend", "go")); err == nil || !strings.Contains(err.Error(), "missing") {
			t.Errorf("%v: got %v, want an error naming the missing input", tc.args, err)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%v: the failed run left its output %s behind (%v)", tc.args, out, err)
		}
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := tc.run(append(tc.args, "--out", out, "--backend", "go")); err == nil {
			t.Errorf("%v: no error", tc.args)
		}
		if left, err := os.ReadDir(out); err != nil || len(left) > 0 {
			t.Errorf("%v: the failed run into an empty directory left it %v (%v), want it empty", tc.args, left, err)
		}
		// --force over a previous report: a failed run puts it back as it was.
		kind := []string{"eval-rm", "eval-cm", "eval-arena", "judge"}[i]
		old := []byte(`{"kind":"` + kind + `"}` + "\n")
		if err := os.WriteFile(filepath.Join(out, "run.json"), old, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, "report.json"), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := tc.run(append(tc.args, "--out", out, "--backend", "go", "--force")); err == nil {
			t.Errorf("%v --force: no error", tc.args)
		}
		if b, err := os.ReadFile(filepath.Join(out, "run.json")); err != nil || string(b) != string(old) {
			t.Errorf("%v --force: the failed run lost the previous report's run.json: %q, %v", tc.args, b, err)
		}
		if _, err := os.Stat(filepath.Join(out, "report.json")); err != nil {
			t.Errorf("%v --force: the failed run lost the previous report: %v", tc.args, err)
		}
		if aside, _ := filepath.Glob(out + ".replaced-*"); len(aside) > 0 {
			t.Errorf("%v --force: left %v behind", tc.args, aside)
		}
	}
}

// TestPrepareReportForceSucceeds: a run that succeeds over a previous report (--force) leaves
// only its own report, nothing kept aside.
func TestPrepareReportForceSucceeds(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"run.json", "old.json"} {
		if err := os.WriteFile(filepath.Join(out, f), []byte(`{"kind":"judge"}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	finish, err := prepareReport(out, "judge", true)
	if err != nil {
		t.Fatal(err)
	}
	var runErr error
	finish(&runErr)
	if _, err := os.Stat(filepath.Join(out, "old.json")); !os.IsNotExist(err) {
		t.Errorf("the previous report is still there: %v", err)
	}
	if checkpoint.RunKind(out) != "judge" {
		t.Errorf("run.json: %q", checkpoint.RunKind(out))
	}
	if aside, _ := filepath.Glob(out + ".replaced-*"); len(aside) > 0 {
		t.Errorf("left %v behind", aside)
	}
}
