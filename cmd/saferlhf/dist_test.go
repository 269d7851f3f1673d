package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func rmArgs(out string, steps int) []string {
	a := "assets/data"
	return []string{"train-rm", "--model", a + "/models/stories260K.bin", "--data", a + "/helpful/hh-rlhf-helpful-base-test.jsonl.gz",
		"--max-steps", strconv.Itoa(steps), "--batch-size", "4", "--max-length", "48", "--truncate", "prompt-left",
		"--eval-max", "8", "--eval-every", "2", "--lr", "3e-4", "--out", out}
}

// startRanks starts world processes of bin with torchrun's variables (and its
// agent store on MASTER_PORT, so that saferlhf meets on the next port).
func startRanks(t *testing.T, bin string, world int, args []string) ([]*exec.Cmd, []*bytes.Buffer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	p, _ := strconv.Atoi(port)
	ln.Close()
	cmds := make([]*exec.Cmd, world)
	logs := make([]*bytes.Buffer, world)
	for r := range world {
		cmd := exec.Command(bin, args...)
		cmd.Dir = "../.."
		logs[r] = new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = logs[r], logs[r]
		cmd.Env = append(os.Environ(), "RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(world), "LOCAL_RANK="+strconv.Itoa(r),
			"LOCAL_WORLD_SIZE="+strconv.Itoa(world), "MASTER_ADDR=127.0.0.1", "MASTER_PORT="+strconv.Itoa(p-1),
			"TORCHELASTIC_USE_AGENT_STORE=True")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[r] = cmd
		// Process.Wait, not cmd.Wait: a test may be in cmd.Wait already (awaitRecords), and a
		// second cmd.Wait would wait forever for output copies the first has collected.
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Process.Wait() })
	}
	return cmds, logs
}

func readRecords(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// TestDataParallelProcesses runs train-rm as two processes of the binary (the
// launcher's environment, TCP rendezvous) and as one: the same metrics records
// within 2e-5 relative (3.1e-7 seen); with --zero-stage 1 (set in a --config file)
// the 2-process run's records exactly, rank 0 holding half the AdamW moments; then as two ranks started by each real
// launcher on this machine (launch_test.go), to the same tolerance. Then kill -9
// of rank 1 mid-run ends rank 0 with an error naming it, and so does a stalled rank 1
// (SIGSTOP) after --dist-timeout.
func TestDataParallelProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI and trains four times")
	}
	bin := buildCLIBinary(t)
	one, two := t.TempDir(), t.TempDir()
	if out, code := func() (string, int) { o, e, c := runCLI(t, bin, rmArgs(one, 4)...); return o + e, c }(); code != 0 {
		t.Fatalf("one process: exit %d\n%s", code, out)
	}
	cmds, logs := startRanks(t, bin, 2, rmArgs(two, 4))
	for r, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("rank %d: %v\n%s", r, err, logs[r])
		}
	}
	a := readRecords(t, filepath.Join(one, "metrics.jsonl"))
	worst := compareRecords(t, a, readRecords(t, filepath.Join(two, "metrics.jsonl")))
	t.Logf("train-rm, 1 vs 2 processes: largest relative difference %.3g over %d records", worst, len(a))
	if worst > 2e-5 {
		t.Errorf("largest relative difference %.3g > 2e-5", worst)
	}
	for _, f := range []string{"result.json", "config.yaml", "model/config.json"} {
		if _, err := os.Stat(filepath.Join(two, f)); err != nil {
			t.Errorf("2-process run: %v", err)
		}
	}

	// --zero-stage 1 (here from a --config file): the 2-process run's records exactly, rank 0
	// holding about half of the AdamW moments (result.json).
	zero, zcfg := t.TempDir(), filepath.Join(t.TempDir(), "zero.yaml")
	if err := os.WriteFile(zcfg, []byte("zero-stage: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmds, logs = startRanks(t, bin, 2, append(rmArgs(zero, 4), "--config", zcfg))
	for r, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("--zero-stage 1: rank %d: %v\n%s", r, err, logs[r])
		}
	}
	if d := compareRecords(t, readRecords(t, filepath.Join(two, "metrics.jsonl")), readRecords(t, filepath.Join(zero, "metrics.jsonl"))); d != 0 {
		t.Errorf("--zero-stage 1 vs 0 on 2 processes: largest relative difference %.3g, want 0", d)
	}
	var b [2]int64
	for i, dir := range []string{one, zero} {
		var res struct {
			OptimBytes int64 `json:"optimizer_state_bytes"`
		}
		raw, err := os.ReadFile(filepath.Join(dir, "result.json"))
		if err == nil {
			err = json.Unmarshal(raw, &res)
		}
		if err != nil {
			t.Fatal(err)
		}
		b[i] = res.OptimBytes
	}
	if b[0] == 0 || b[1] == 0 || b[1] > b[0]*6/10 {
		t.Errorf("AdamW moment bytes: one process %d, rank 0 of --zero-stage 1 %d (want about half)", b[0], b[1])
	}
	t.Logf("AdamW moment bytes: one process %d, rank 0 of 2 with --zero-stage 1 %d", b[0], b[1])

	// The same two ranks started by each real launcher present (mpirun, torchrun, srun).
	testLaunchers(t, bin, a, func(out string) []string { return rmArgs(out, 4) })

	// A rank that dies (kill -9) or stalls (SIGSTOP: alive, connected, silent) mid-run ends the
	// other with an error naming it; a stalled one after --dist-timeout, not the 10-minute default.
	for _, tc := range []struct {
		name  string
		sig   os.Signal
		extra []string
		want  string
	}{
		{"killed", os.Kill, nil, "rank 1 is gone"},
		{"stalled", syscall.SIGSTOP, []string{"--dist-timeout", "15s"}, "rank 1 did not arrive within 15s"},
	} {
		dir := t.TempDir()
		cmds, logs := startRanks(t, bin, 2, append(rmArgs(dir, 100000), tc.extra...))
		exited := awaitRecords(t, cmds, logs, filepath.Join(dir, "metrics.jsonl"), 3)
		if err := cmds[1].Process.Signal(tc.sig); err != nil {
			t.Fatal(err)
		}
		awaitFailure(t, exited[0], 0, logs[0], tc.want, "rank 1 was "+tc.name, time.Now())
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndexByte(s, '\n')+1:]
}

// awaitRecords waits (3 minutes at most) until the run of ranks cmds has written n records to
// metricsPath, and returns each rank's exit from then on. A rank that ends before fails the test
// at once, with both ranks' output.
func awaitRecords(t *testing.T, cmds []*exec.Cmd, logs []*bytes.Buffer, metricsPath string, n int) []chan error {
	t.Helper()
	exited := make([]chan error, len(cmds))
	for r, cmd := range cmds {
		exited[r] = make(chan error, 1)
		go func() { exited[r] <- cmd.Wait() }()
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if b, err := os.ReadFile(metricsPath); err == nil && bytes.Count(b, []byte("\n")) >= n {
			return exited
		}
		for r := range cmds {
			select {
			case err := <-exited[r]:
				t.Fatalf("rank %d ended before %d records: %v\n%s\nrank %d:\n%s", r, n, err, logs[r], 1-r, logs[1-r])
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d records in 3 minutes:\n%s\n%s", n, logs[0], logs[1])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// awaitFailure waits (2 minutes at most) for rank r to exit (exited, from awaitRecords) with an
// error whose output holds want and no summary of the failed run (it printed "0 steps");
// what says what happened to the run, since.
func awaitFailure(t *testing.T, exited chan error, r int, log *bytes.Buffer, want, what string, since time.Time) {
	t.Helper()
	select {
	case err := <-exited:
		if err == nil || !strings.Contains(log.String(), want) {
			t.Fatalf("rank %d after %s: %v, want an error with %q\n%s", r, what, err, want, log)
		}
		if strings.Contains(log.String(), ": 0 steps") {
			t.Errorf("rank %d printed a summary of the failed run:\n%s", r, log)
		}
		t.Logf("rank %d, %.1f s after %s: %s", r, time.Since(since).Seconds(), what, lastLine(log.String()))
	case <-time.After(2 * time.Minute):
		t.Fatalf("rank %d still running 2 minutes after %s:\n%s", r, what, log)
	}
}

// TestPPOLagDataParallelProcesses runs ppo-lag with sampling (top-k 50, temperature 1) and PTX
// (real SFT answers, so the ranks' label counts differ) as two processes of the binary (the
// launcher's environment, TCP rendezvous) and as one: the same metrics records (λ and the PTX loss
// included) within 1e-4 relative and the same held-out summary (evaluated half by each rank).
// Then kill -9 of rank 1 mid-run ends rank 0 with an error naming it.
func TestPPOLagDataParallelProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI and trains three times")
	}
	ppoLagDataParallelProcesses(t, buildCLIBinary(t), true)
}

// TestNativePPOLagDataParallelProcesses is the equivalence of TestPPOLagDataParallelProcesses
// with the cgo binary, whose ppo-lag runs on the native engine by default.
func TestNativePPOLagDataParallelProcesses(t *testing.T) {
	ppoLagDataParallelProcesses(t, buildNativeCLIBinary(t), false)
}

func ppoLagDataParallelProcesses(t *testing.T, bin string, kill bool) {
	dir := t.TempDir()
	rm, cm := tinyScoreModels(t, dir)
	assets, err := filepath.Abs(filepath.Join("..", "..", "assets", "data"))
	if err != nil {
		t.Fatal(err)
	}
	args := func(out string, steps, evalMax int) []string {
		return []string{"ppo-lag", "--model", filepath.Join(assets, "models", "stories260K.bin"),
			"--tokenizer", filepath.Join(assets, "models", "tok512.bin"), "--reward-model", rm, "--cost-model", cm,
			"--data", filepath.Join(assets, "pku-saferlhf", "align-anything-preference-sample.json"),
			"--max-prompt-tokens", "64", "--max-new-tokens", "8", "--prompt-batch-size", "4", "--train-batch-size", "4",
			"--top-k", "50", "--temperature", "1", "--threshold", "-2", "--lambda-lr", "0.5", "--max-steps", strconv.Itoa(steps),
			"--save-every", "2", "--eval-max", strconv.Itoa(evalMax), "--eval-batch-size", "2", "--actor-lr", "1e-3", "--critic-lr", "1e-3",
			"--ptx-data", filepath.Join(assets, "pku-saferlhf", "pku-saferlhf-train-head500.jsonl"), "--ptx-coeff", "2",
			"--ptx-max-length", "96", "--out", out}
	}
	one, two := filepath.Join(dir, "one"), filepath.Join(dir, "two")
	start := time.Now()
	if o, e, code := runCLI(t, bin, args(one, 3, 4)...); code != 0 {
		t.Fatalf("one process: exit %d\n%s%s", code, o, e)
	}
	t.Logf("one process: %.1f s", time.Since(start).Seconds())
	start = time.Now()
	cmds, logs := startRanks(t, bin, 2, args(two, 3, 4))
	for r, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("rank %d: %v\n%s", r, err, logs[r])
		}
	}
	t.Logf("two processes: %.1f s", time.Since(start).Seconds())
	worst := 0.0
	for _, f := range []string{"metrics.jsonl", "summary.json"} {
		var a, b []map[string]any
		if f == "summary.json" {
			for _, p := range []string{one, two} {
				raw, err := os.ReadFile(filepath.Join(p, f))
				if err != nil {
					t.Fatal(err)
				}
				var s struct{ Before, After map[string]any }
				if err := json.Unmarshal(raw, &s); err != nil {
					t.Fatal(err)
				}
				if p == one {
					a = []map[string]any{s.Before, s.After}
				} else {
					b = []map[string]any{s.Before, s.After}
				}
			}
		} else {
			a, b = readRecords(t, filepath.Join(one, f)), readRecords(t, filepath.Join(two, f))
		}
		if len(a) != len(b) || len(a) < 2 {
			t.Fatalf("%s: %d records vs %d", f, len(a), len(b))
		}
		for i := range a {
			for k, v := range a[i] {
				x, _ := v.(float64)
				y, ok := b[i][k].(float64)
				if !ok {
					t.Fatalf("%s record %d: %s missing in the 2-process run", f, i, k)
				}
				d := math.Abs(x-y) / max(1, math.Abs(x))
				worst = max(worst, d)
				if d > 1e-4 {
					t.Errorf("%s record %d: %s = %v (1 process) vs %v (2)", f, i, k, x, y)
				}
			}
		}
	}
	t.Logf("ppo-lag, 1 vs 2 processes: largest relative difference %.3g", worst)
	for _, f := range []string{"policy/config.json", "checkpoints/step-00000002/state.json", "samples_after.jsonl", "perf.jsonl"} {
		if _, err := os.Stat(filepath.Join(two, f)); err != nil {
			t.Errorf("2-process run: %v", err)
		}
	}
	if perf := readRecords(t, filepath.Join(two, "perf.jsonl")); perf[0]["ranks"] != 2.0 {
		t.Errorf("perf.jsonl of 2 ranks: %v", perf[0])
	}

	if !kill {
		return
	}
	// A rank killed mid-run ends the other with an error naming it.
	out := filepath.Join(dir, "killed")
	cmds, logs = startRanks(t, bin, 2, args(out, 100000, 0))
	exited := awaitRecords(t, cmds, logs, filepath.Join(out, "metrics.jsonl"), 2)
	if err := cmds[1].Process.Kill(); err != nil {
		t.Fatal(err)
	}
	awaitFailure(t, exited[0], 0, logs[0], "rank 1 is gone", "rank 1 was killed", time.Now())
}

// TestSingleProcessCommandsRefuseRanks: under a launcher (rank 1 of 2) the commands that do not
// run data-parallel refuse before doing anything, naming themselves, so that copies never race on
// one output; the data-parallel ones get as far as their flags (-h).
func TestSingleProcessCommandsRefuseRanks(t *testing.T) {
	t.Setenv("RANK", "1")
	t.Setenv("WORLD_SIZE", "2")
	t.Setenv("MASTER_ADDR", "127.0.0.1")
	for _, c := range commands {
		var stderr bytes.Buffer
		code := run([]string{c.name, "-h"}, &stderr)
		if c.ranked {
			if code != 0 {
				t.Errorf("%s -h as rank 1 of 2: exit %d\n%s", c.name, code, stderr.String())
			}
			continue
		}
		if code != 1 || !strings.Contains(stderr.String(), c.name+" does not run data-parallel yet") {
			t.Errorf("%s as rank 1 of 2: exit %d, %q", c.name, code, stderr.String())
		}
	}
}
