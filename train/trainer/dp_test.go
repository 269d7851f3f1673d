package trainer

import (
	stdctx "context"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/metrics"
)

// rankSource gives rank its contiguous share of every global batch of src.
type rankSource struct {
	src         *linSource
	rank, world int
	fail        func(epoch, index int) error
}

func (s rankSource) Len() int { return s.src.Len() }

func (s rankSource) Batch(epoch, index int) (Batch, error) {
	if s.fail != nil {
		if err := s.fail(epoch, index); err != nil {
			return Batch{}, err
		}
	}
	b, err := s.src.Batch(epoch, index)
	if err != nil {
		return b, err
	}
	x, y := b.Inputs[0].([][]float32), b.Inputs[1].([]float32)
	per := len(y) / s.world
	lo, hi := s.rank*per, (s.rank+1)*per
	return Batch{Inputs: []any{x[lo:hi], y[lo:hi]}, Tokens: per}, nil
}

type dpRun struct {
	sum     Summary
	err     error
	weights []float32
	bias    float32
	moments int64 // AdamW moment elements the rank holds at the end
}

// runDP trains the linear model for steps optimizer steps with a global batch
// of 8 on world ranks (world 1: no communicator, the single-process path).
func runDP(t *testing.T, dir string, world, acc, steps int, resume bool, fail func(c dist.Communicator, epoch, index int) error) []dpRun {
	t.Helper()
	return runDPZero(t, dir, world, 0, acc, steps, resume, fail)
}

// runDPZero is runDP at a ZeRO stage.
func runDPZero(t *testing.T, dir string, world, zero, acc, steps int, resume bool, fail func(c dist.Communicator, epoch, index int) error) []dpRun {
	t.Helper()
	comms := []dist.Communicator{nil}
	if world > 1 {
		cs, err := dist.NewLocalGroup(stdctx.Background(), world, dist.Options{Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		comms = comms[:0]
		for _, c := range cs {
			comms = append(comms, c)
			defer c.Close()
		}
	}
	out := make([]dpRun, world)
	var wg sync.WaitGroup
	for r := range world {
		wg.Go(func() {
			mctx := newLinearCtx([]float32{0, 0, 0}, 0)
			s, err := NewStepper(testBackend(t), mctx, Config{Scope: "/m", Loss: linearLoss, WeightDecay: 0.01, Accumulation: acc,
				ClipNorm: 2, Comm: comms[r], ZeroStage: zero})
			if err != nil {
				out[r].err = err
				return
			}
			src := rankSource{src: newLinSource(64, 8, 5), rank: r, world: world}
			if fail != nil {
				src.fail = func(e, i int) error { return fail(comms[r], e, i) }
			}
			l, err := NewLoop(LoopConfig{Stepper: s, Train: src, Eval: newLinSource(16, 8, 99), Steps: steps,
				LR: mustSchedule(t, "cosine", 0.3, 0.1, 6), EvalEvery: 2, CheckpointEvery: 2, Dir: dir, Resume: resume,
				Plot: func(string, string) error { return nil }})
			if err != nil {
				out[r].err = err
				return
			}
			out[r].sum, out[r].err = l.Run(stdctx.Background())
			if comms[r] != nil && out[r].err != nil {
				comms[r].Close() // as a process would on exit
			}
			out[r].weights = tensors.MustCopyFlatData[float32](mctx.GetVariableByScopeAndName("/m/lin", "weight").MustValue())
			out[r].bias = tensors.MustCopyFlatData[float32](mctx.GetVariableByScopeAndName("/m/lin", "bias").MustValue())[0]
			out[r].moments = s.OptimizerStateElements()
		})
	}
	wg.Wait()
	return out
}

func trainRecords(t *testing.T, dir string) []metrics.Record {
	t.Helper()
	recs, err := metrics.Read(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestDataParallelEquivalence: 2 ranks with 4 rows each follow the trajectory of
// 1 rank with the global batch of 8 (loss, grad norm, held-out loss and weights
// within 2e-6 relative: only float32 summation order differs), and the two
// ranks' weights are identical bit for bit.
func TestDataParallelEquivalence(t *testing.T) {
	const tol = 2e-6
	for _, acc := range []int{1, 2} {
		d1, d2 := t.TempDir(), t.TempDir()
		one := runDP(t, d1, 1, acc, 6, false, nil)
		two := runDP(t, d2, 2, acc, 6, false, nil)
		for r, run := range append(one, two...) {
			if run.err != nil {
				t.Fatalf("acc %d: run %d: %v", acc, r, run.err)
			}
		}
		if two[0].weights[0] != two[1].weights[0] || two[0].weights[1] != two[1].weights[1] || two[0].weights[2] != two[1].weights[2] || two[0].bias != two[1].bias {
			t.Errorf("acc %d: ranks diverged: %v %v vs %v %v", acc, two[0].weights, two[0].bias, two[1].weights, two[1].bias)
		}
		worst := 0.0
		close := func(what string, a, b float64) {
			worst = max(worst, math.Abs(a-b)/max(1, math.Abs(a)))
			if math.Abs(a-b) > tol*max(1, math.Abs(a)) {
				t.Errorf("acc %d: %s: world 1 %.9g, world 2 %.9g", acc, what, a, b)
			}
		}
		for i := range 3 {
			close("weight", float64(one[0].weights[i]), float64(two[0].weights[i]))
		}
		close("bias", float64(one[0].bias), float64(two[0].bias))
		r1, r2 := trainRecords(t, d1), trainRecords(t, d2)
		if len(r1) != len(r2) || len(r1) < 6 {
			t.Fatalf("acc %d: %d records vs %d", acc, len(r1), len(r2))
		}
		for i := range r1 {
			if r1[i].Step != r2[i].Step || r1[i].Tags["split"] != r2[i].Tags["split"] {
				t.Fatalf("acc %d: record %d: step %d/%s vs %d/%s", acc, i, r1[i].Step, r1[i].Tags["split"], r2[i].Step, r2[i].Tags["split"])
			}
			for k, v := range r1[i].Values {
				close(r1[i].Tags["split"]+" "+k, v, r2[i].Values[k])
			}
		}
		t.Logf("accumulation %d: largest relative difference world 1 vs 2: %.3g", acc, worst)
		if two[0].sum.Steps != 6 || two[1].sum.Steps != 6 {
			t.Errorf("acc %d: steps %d, %d", acc, two[0].sum.Steps, two[1].sum.Steps)
		}
		if two[0].sum.TokensPerS == 0 {
			t.Errorf("acc %d: no tokens counted", acc)
		}
	}
}

// TestDataParallelResume: a 2-rank run stopped after 2 steps and resumed to 6
// ends bit for bit where an uninterrupted 2-rank run ends.
func TestDataParallelResume(t *testing.T) {
	full := runDP(t, t.TempDir(), 2, 2, 6, false, nil)
	dir := t.TempDir()
	part := runDP(t, dir, 2, 2, 2, false, nil)
	resumed := runDP(t, dir, 2, 2, 6, true, nil)
	for i, r := range [][]dpRun{full, part, resumed} {
		for rank, run := range r {
			if run.err != nil {
				t.Fatalf("run %d rank %d: %v", i, rank, run.err)
			}
		}
	}
	for rank := range 2 {
		for i := range 3 {
			if full[rank].weights[i] != resumed[rank].weights[i] {
				t.Errorf("rank %d: weight %d: %v resumed vs %v uninterrupted", rank, i, resumed[rank].weights[i], full[rank].weights[i])
			}
		}
	}
}

// TestDataParallelDeadRank: a rank that dies mid-run ends the others with an
// error naming it instead of a hang.
func TestDataParallelDeadRank(t *testing.T) {
	runs := runDP(t, t.TempDir(), 3, 1, 6, false, func(c dist.Communicator, epoch, index int) error {
		if c.Rank() == 2 && index == 3 {
			c.Close()
			return errors.New("rank 2 crashed")
		}
		return nil
	})
	if runs[2].err == nil || !strings.Contains(runs[2].err.Error(), "rank 2 crashed") {
		t.Errorf("rank 2: %v", runs[2].err)
	}
	for r := range 2 {
		if runs[r].err == nil || !strings.Contains(runs[r].err.Error(), "step 4") || !strings.Contains(runs[r].err.Error(), "rank 2 is gone") {
			t.Errorf("rank %d: %v", r, runs[r].err)
		}
	}
}

// TestDataParallelStartCheck: ranks that start from different weights, or different training
// state outside the model and optimizer (Config.State: a score normaliser), are refused.
func TestDataParallelStartCheck(t *testing.T) {
	for _, tc := range []struct {
		name          string
		weight, state func(rank int) float64
		want          string // "" for a run that starts
	}{
		{"weights differ", func(r int) float64 { return float64(r) }, func(int) float64 { return 0 }, "weights, optimizer or other training state differ"},
		{"normaliser differs", func(int) float64 { return 0 }, func(r int) float64 { return float64(r) }, "weights, optimizer or other training state differ"},
		{"in step", func(int) float64 { return 0 }, func(int) float64 { return 1 }, ""},
	} {
		cs, err := dist.NewLocalGroup(stdctx.Background(), 2, dist.Options{Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		errs := make([]error, 2)
		var wg sync.WaitGroup
		dir := t.TempDir()
		for r := range 2 {
			wg.Go(func() {
				defer cs[r].Close()
				ctx := newLinearCtx([]float32{float32(tc.weight(r)), 0, 0}, 0)
				ctx.InAbsPath("/norm").VariableWithValue("mean", tc.state(r)).SetTrainable(false)
				s, err := NewStepper(testBackend(t), ctx, Config{Scope: "/m", Loss: linearLoss, Comm: cs[r], State: []string{"/norm"}})
				if err != nil {
					errs[r] = err
					return
				}
				l, err := NewLoop(LoopConfig{Stepper: s, Train: rankSource{src: newLinSource(16, 8, 5), rank: r, world: 2}, Steps: 1,
					LR: func(int) float64 { return 0.1 }, Dir: dir})
				if err == nil {
					_, err = l.Run(stdctx.Background())
				}
				errs[r] = err
			})
		}
		wg.Wait()
		for r, err := range errs {
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("%s: rank %d: %v, want %q", tc.name, r, err, tc.want)
			}
		}
	}
}

// TestDataParallelResumeOtherWorld: a run checkpointed by 2 ranks resumes on 1
// (and one by 1 rank on 2) and follows the same trajectory within 2e-6: the data
// position counts global batches and the state is the same on every rank.
func TestDataParallelResumeOtherWorld(t *testing.T) {
	full := runDP(t, t.TempDir(), 1, 2, 6, false, nil)
	for _, worlds := range [][2]int{{2, 1}, {1, 2}} {
		dir := t.TempDir()
		part := runDP(t, dir, worlds[0], 2, 2, false, nil)
		resumed := runDP(t, dir, worlds[1], 2, 6, true, nil)
		for _, r := range append(part, resumed...) {
			if r.err != nil {
				t.Fatalf("%v: %v", worlds, r.err)
			}
		}
		for i := range 3 {
			if d := math.Abs(float64(full[0].weights[i] - resumed[0].weights[i])); d > 2e-6*max(1, math.Abs(float64(full[0].weights[i]))) {
				t.Errorf("%d ranks then %d: weight %d: %v, uninterrupted 1 rank %v", worlds[0], worlds[1], i, resumed[0].weights[i], full[0].weights[i])
			}
		}
	}
}

// evalFake is a Steps whose Eval returns the batch's first input as loss and metric
// "m", and counts its calls.
type evalFake struct {
	Steps
	comm  dist.Communicator
	calls int
}

func (f *evalFake) Comm() dist.Communicator { return f.comm }
func (f *evalFake) Eval(in ...any) (Result, error) {
	f.calls++
	x := in[0].(float64)
	return Result{Loss: x, Metrics: map[string]float64{"m": 2 * x, "r_num": x, "r_den": 1}}, nil
}

type listSource []float64

func (s listSource) Len() int { return len(s) }
func (s listSource) Batch(_, i int) (Batch, error) {
	return Batch{Inputs: []any{s[i]}, Weight: float64(i + 1)}, nil
}

// TestEvaluateSharded: with 2 ranks each evaluates its share of the held-out batches (batch i
// on rank i mod 2, 3 of 5 on rank 0) and both return the one-process weighted means.
func TestEvaluateSharded(t *testing.T) {
	src := listSource{0.5, 1.25, -3, 7, 0.125}
	want, err := Evaluate(&evalFake{comm: dist.Self{}}, src)
	if err != nil {
		t.Fatal(err)
	}
	comms, err := dist.NewLocalGroup(stdctx.Background(), 2, dist.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	fakes := []*evalFake{{comm: comms[0]}, {comm: comms[1]}}
	got := make([]map[string]float64, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() { got[r], errs[r] = Evaluate(fakes[r], src) })
	}
	wg.Wait()
	for r := range 2 {
		comms[r].Close()
		if errs[r] != nil {
			t.Fatalf("rank %d: %v", r, errs[r])
		}
		for k, v := range want {
			if math.Abs(got[r][k]-v) > 1e-12 {
				t.Errorf("rank %d: %s = %v, one process %v", r, k, got[r][k], v)
			}
		}
		if len(got[r]) != len(want) {
			t.Errorf("rank %d: %v, one process %v", r, got[r], want)
		}
	}
	if fakes[0].calls != 3 || fakes[1].calls != 2 {
		t.Errorf("ranks evaluated %d and %d batches, want 3 and 2", fakes[0].calls, fakes[1].calls)
	}
}
