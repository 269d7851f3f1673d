package trainer

import (
	"bytes"
	stdctx "context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/optim"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// linSource is a deterministic regression data set shuffled per epoch.
type linSource struct {
	x       [][]float32
	y       []float32
	bs      int
	seed    uint64
	nanAt   int // poison this batch index of epoch 0 with NaN (-1: never)
	onBatch func(epoch, index int)
}

func newLinSource(n, bs int, seed uint64) *linSource {
	r := rand.New(rand.NewPCG(seed, 7))
	s := &linSource{bs: bs, seed: seed, nanAt: -1}
	for i := 0; i < n; i++ {
		x := []float32{float32(r.NormFloat64()), float32(r.NormFloat64()), float32(r.NormFloat64())}
		s.x = append(s.x, x)
		s.y = append(s.y, 2*x[0]-x[1]+0.5*x[2]+1+float32(0.1*r.NormFloat64()))
	}
	return s
}

func (s *linSource) Len() int { return len(s.y) / s.bs }

func (s *linSource) Batch(epoch, index int) (Batch, error) {
	if s.onBatch != nil {
		s.onBatch(epoch, index)
	}
	perm := rand.New(rand.NewPCG(s.seed, uint64(epoch))).Perm(len(s.y))
	var x [][]float32
	var y []float32
	for _, i := range perm[index*s.bs : (index+1)*s.bs] {
		x = append(x, s.x[i])
		y = append(y, s.y[i])
	}
	if epoch == 0 && index == s.nanAt {
		y[0] = float32(math.NaN())
	}
	return Batch{Inputs: []any{x, y}, Tokens: s.bs}, nil
}

func runLinLoop(t *testing.T, dir string, resume bool, acc int, src *linSource, ctx stdctx.Context, ckptEvery int, opts ...func(*LoopConfig)) (Summary, error) {
	t.Helper()
	mctx := newLinearCtx([]float32{0, 0, 0}, 0)
	s, err := NewStepper(testBackend(t), mctx, Config{Scope: "/m", Loss: linearLoss, WeightDecay: 0.01, Accumulation: acc})
	if err != nil {
		t.Fatal(err)
	}
	cfg := LoopConfig{Stepper: s, Train: src, Eval: newLinSource(32, 8, 99), Epochs: 3,
		LR: mustSchedule(t, "cosine", 0.3, 0.1, 3*src.Len()/acc), EvalEvery: 4, CheckpointEvery: ckptEvery, Dir: dir, Resume: resume,
		Kind: "lin", Meta: map[string]any{"lr": 0.3, "out": dir}, ConfigIgnore: []string{"out"},
		// The weights are stored once, as "weight" and "bias", and restored from there.
		WeightsScope: "/m/lin",
		CheckpointWeights: func() ([]safetensors.Tensor, json.RawMessage, error) {
			var ws []safetensors.Tensor
			for _, n := range []string{"weight", "bias"} {
				v := mctx.GetVariableByScopeAndName("/m/lin", n).MustValue()
				ws = append(ws, safetensors.Tensor{Name: n, Shape: v.Shape().Dimensions, F32: tensors.MustCopyFlatData[float32](v)})
			}
			return ws, nil, nil
		},
		SaveModel: func(d string) error {
			ts, err := checkpoint.ContextTensors(mctx, nil)
			if err != nil {
				return err
			}
			return safetensors.Write(d+".safetensors", ts, nil)
		}}
	for _, o := range opts {
		o(&cfg)
	}
	l, err := NewLoop(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l.Run(ctx)
}

func mustSchedule(t *testing.T, kind string, lr, warm float64, total int) Schedule {
	s, err := optim.NewSchedule(kind, lr, optim.WarmupSteps(warm, total), total)
	if err != nil {
		t.Fatal(err)
	}
	return s.LR
}

func TestLoopResumeIsExact(t *testing.T) {
	for _, acc := range []int{1, 2} {
		ref := t.TempDir()
		sum, err := runLinLoop(t, ref, false, acc, newLinSource(96, 8, 1), stdctx.Background(), 5)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Eval["loss"] > 0.5 {
			t.Fatalf("held-out loss %g: the regression did not train", sum.Eval["loss"])
		}
		want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
		if _, err := os.Stat(filepath.Join(ref, "plots", "loss.png")); err != nil {
			t.Fatalf("no loss plot: %v", err)
		}

		// Interrupt (cancellation) in the middle, then resume.
		dir := t.TempDir()
		c, cancel := stdctx.WithCancel(stdctx.Background())
		src := newLinSource(96, 8, 1)
		src.onBatch = func(e, i int) {
			if e == 1 && i == 3 {
				cancel()
			}
		}
		_, err = runLinLoop(t, dir, false, acc, src, c, 5)
		if !errors.Is(err, stdctx.Canceled) || !strings.Contains(err.Error(), filepath.Join(dir, "checkpoints", "step-")) {
			t.Fatalf("want a cancellation error naming the saved checkpoint, got %v", err)
		}
		// Add garbage after the checkpoint, as a killed process would leave.
		f, _ := os.OpenFile(filepath.Join(dir, "metrics.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString(`{"step":999}` + "\n")
		f.Close()
		if _, err := runLinLoop(t, dir, true, acc, newLinSource(96, 8, 1), stdctx.Background(), 5); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
		if !bytes.Equal(got, want) {
			t.Fatalf("acc %d: resumed metrics differ:\n%s\nwant:\n%s", acc, got, want)
		}
		m, _ := checkpoint.NewManager(filepath.Join(dir, "checkpoints"), 0)
		ld, err := m.Latest()
		if err != nil {
			t.Fatal(err)
		}
		if ld.TrainState.Has("/m/lin/weight") || !ld.Weights.Has("weight") || !ld.TrainState.Has("/optim/m/m/lin/weight_m1") {
			t.Errorf("the weights are not stored once: training state %v", ld.TrainState.Names())
		}
		ld.Close()
	}
}

func TestLoopStopsOnNaN(t *testing.T) {
	dir := t.TempDir()
	src := newLinSource(96, 8, 1)
	src.nanAt = 7
	_, err := runLinLoop(t, dir, false, 1, src, stdctx.Background(), 3)
	if err == nil || !strings.Contains(err.Error(), "step 8: loss is NaN") || !strings.Contains(err.Error(), "step-00000006") {
		t.Fatalf("want an error naming step 8, the loss and checkpoint step-00000006, got %v", err)
	}
	m, err := checkpoint.NewManager(filepath.Join(dir, "checkpoints"), 0)
	if err != nil {
		t.Fatal(err)
	}
	ld, err := m.Latest()
	if err != nil || ld.State.Step != 6 {
		t.Fatalf("latest checkpoint %v, want step 6 intact", err)
	}
	defer ld.Close()
	if err := checkpoint.RestoreContext(newLinearCtx([]float32{0, 0, 0}, 0), ld.TrainState); err != nil {
		t.Fatal(err)
	}
}

// TestLoopNeverSavesNonFiniteWeights: an update that makes the weights NaN
// while the step's own loss is still finite is not checkpointed, and the error
// names the last intact checkpoint.
func TestLoopNeverSavesNonFiniteWeights(t *testing.T) {
	dir := t.TempDir()
	_, err := runLinLoop(t, dir, false, 1, newLinSource(96, 8, 1), stdctx.Background(), 3, func(c *LoopConfig) {
		lr := c.LR
		c.LR = func(step int) float64 {
			if step == 5 { // the update of step 6
				return math.NaN()
			}
			return lr(step)
		}
	})
	var nf *checkpoint.NonFiniteError
	if !errors.As(err, &nf) || !strings.HasPrefix(nf.Quantity, "tensor ") || !strings.Contains(err.Error(), "step-00000003") {
		t.Fatalf("want a non-finite tensor error naming checkpoint step-00000003, got %v", err)
	}
	m, _ := checkpoint.NewManager(filepath.Join(dir, "checkpoints"), 0)
	if got := m.Steps(); len(got) != 1 || got[0] != 3 {
		t.Fatalf("checkpoints %v, want only step 3", got)
	}
}

// TestLoopResumeRefusals: --resume never starts afresh, never resumes another
// kind of run or a changed configuration, and a fresh run never overwrites checkpoints.
func TestLoopResumeRefusals(t *testing.T) {
	// Nothing to resume: an error, and the existing metrics file is left alone.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "metrics.jsonl"), []byte(`{"step":1}`+"\n"), 0o644)
	if _, err := runLinLoop(t, dir, true, 1, newLinSource(96, 8, 1), stdctx.Background(), 3); !errors.Is(err, checkpoint.ErrNoCheckpoint) {
		t.Fatalf("resume without a checkpoint: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "metrics.jsonl")); string(b) != `{"step":1}`+"\n" {
		t.Fatalf("metrics.jsonl changed to %q", b)
	}

	// A run interrupted after its first checkpoint.
	dir = t.TempDir()
	c, cancel := stdctx.WithCancel(stdctx.Background())
	src := newLinSource(96, 8, 1)
	src.onBatch = func(e, i int) {
		if i == 4 {
			cancel()
		}
	}
	if _, err := runLinLoop(t, dir, false, 1, src, c, 3); !errors.Is(err, stdctx.Canceled) {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		resume bool
		opt    func(*LoopConfig)
		err    string
	}{
		{"fresh run over checkpoints", false, func(*LoopConfig) {}, "already holds checkpoints"},
		{"other kind", true, func(c *LoopConfig) { c.Kind = "sft" }, `"lin" run, not "sft"`},
		{"other kind, allowed", true, func(c *LoopConfig) { c.Kind, c.AllowConfigChange = "sft", true }, `"lin" run, not "sft"`},
		{"lr changed", true, func(c *LoopConfig) { c.Meta = map[string]any{"lr": 0.2, "out": "x"} }, `setting "lr" changed`},
		{"lr changed, allowed", true, func(c *LoopConfig) { c.Meta, c.AllowConfigChange = map[string]any{"lr": 0.2, "out": "x"}, true }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runLinLoop(t, dir, tc.resume, 1, newLinSource(96, 8, 1), stdctx.Background(), 3, tc.opt)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
		})
	}
}

func TestLoopConfigErrors(t *testing.T) {
	if _, err := NewLoop(LoopConfig{}); err == nil {
		t.Error("empty LoopConfig accepted")
	}
}

func TestCombineRatios(t *testing.T) {
	m := map[string]float64{"acc_num": 3, "acc_den": 4, "none_num": 0, "none_den": 0, "loss": 1, "lonely_num": 2}
	CombineRatios(m)
	if m["acc"] != 0.75 || len(m) != 3 || m["lonely_num"] != 2 {
		t.Fatalf("CombineRatios gave %v", m)
	}
	if _, ok := m["none"]; ok {
		t.Fatal("a ratio with no denominator must be dropped")
	}
}
