package trainer

import (
	stdctx "context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/metrics"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// sameRun reports whether a and b end with the same weights, bit for bit.
func sameRun(a, b dpRun) bool {
	return slices.Equal(a.weights, b.weights) && a.bias == b.bias
}

// TestZeroOneEquivalence: with the optimiser state sharded (ZeRO-1), 2 ranks
// end bit for bit where 2 ranks with replicated state end (which follow 1 rank
// within 2e-6, TestDataParallelEquivalence), with identical weights on both
// ranks, while each rank holds only the moments of the variables it owns: the
// weight (3 elements, rank 0) and the bias (1, rank 1), 2 moments each. The
// clip (ClipNorm 2) is active in the first steps, so a clip by a rank's own
// share of the gradient norm would change the trajectory; a rank updating a
// variable it does not own would hold its moments.
func TestZeroOneEquivalence(t *testing.T) {
	for _, acc := range []int{1, 2} {
		d0, d1 := t.TempDir(), t.TempDir()
		one := runDPZero(t, t.TempDir(), 1, 0, acc, 6, false, nil)
		rep := runDPZero(t, d0, 2, 0, acc, 6, false, nil)
		sh := runDPZero(t, d1, 2, 1, acc, 6, false, nil)
		for r, run := range append(append(one, rep...), sh...) {
			if run.err != nil {
				t.Fatalf("acc %d: run %d: %v", acc, r, run.err)
			}
		}
		if !sameRun(sh[0], sh[1]) {
			t.Errorf("acc %d: ZeRO-1 ranks diverged: %v %v vs %v %v", acc, sh[0].weights, sh[0].bias, sh[1].weights, sh[1].bias)
		}
		if !sameRun(sh[0], rep[0]) {
			t.Errorf("acc %d: ZeRO-1 %v %v, replicated %v %v", acc, sh[0].weights, sh[0].bias, rep[0].weights, rep[0].bias)
		}
		for i := range 3 {
			if d := math.Abs(float64(one[0].weights[i] - sh[0].weights[i])); d > 2e-6*max(1, math.Abs(float64(one[0].weights[i]))) {
				t.Errorf("acc %d: weight %d: 1 rank %v, ZeRO-1 %v", acc, i, one[0].weights[i], sh[0].weights[i])
			}
		}
		if one[0].moments != 8 || rep[0].moments != 8 || rep[1].moments != 8 || sh[0].moments != 6 || sh[1].moments != 2 {
			t.Errorf("acc %d: moment elements: 1 rank %d, replicated %d+%d, ZeRO-1 %d+%d (want 8; 8, 8; 6, 2)", acc,
				one[0].moments, rep[0].moments, rep[1].moments, sh[0].moments, sh[1].moments)
		}
		clipped := false
		r0, r1 := trainRecords(t, d0), trainRecords(t, d1)
		for i := range r0 {
			clipped = clipped || r0[i].Values["grad_norm"] > 2
			if !mapsEqual(r0[i].Values, r1[i].Values) {
				t.Errorf("acc %d: record %d: replicated %v, ZeRO-1 %v", acc, i, r0[i].Values, r1[i].Values)
			}
		}
		if !clipped {
			t.Errorf("acc %d: no step clipped: the test cannot see the clip", acc)
		}
		// The checkpoint holds the full state (both ranks' moments), as one process writes it.
		f, err := safetensors.Open(filepath.Join(d1, "checkpoints", "step-00000006", checkpoint.TrainStateFile))
		if err != nil {
			t.Fatal(err)
		}
		var moments []string
		for _, n := range f.Names() {
			if strings.HasSuffix(n, "_m1") || strings.HasSuffix(n, "_m2") {
				moments = append(moments, n)
			}
		}
		f.Close()
		if len(moments) != 4 {
			t.Errorf("acc %d: checkpoint moments %v, want the 4 of weight and bias", acc, moments)
		}
	}
}

func mapsEqual(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestZeroOneResume: a 2-rank ZeRO-1 run stopped after 2 steps resumes to 6 bit
// for bit where the uninterrupted run ends, and its checkpoint (full state)
// also resumes with replicated state on 2 ranks and on 1 rank, and a replicated
// run's checkpoint resumes with ZeRO-1 (2e-6 across world sizes).
func TestZeroOneResume(t *testing.T) {
	full := runDPZero(t, t.TempDir(), 2, 1, 2, 6, false, nil)
	for _, c := range []struct{ world0, zero0, world1, zero1 int }{{2, 1, 2, 1}, {2, 1, 2, 0}, {2, 1, 1, 0}, {2, 0, 2, 1}, {1, 0, 2, 1}} {
		dir := t.TempDir()
		part := runDPZero(t, dir, c.world0, c.zero0, 2, 2, false, nil)
		resumed := runDPZero(t, dir, c.world1, c.zero1, 2, 6, true, nil)
		for _, r := range append(part, resumed...) {
			if r.err != nil {
				t.Fatalf("%+v: %v", c, r.err)
			}
		}
		if c.world0 == c.world1 {
			if !sameRun(full[0], resumed[0]) {
				t.Errorf("%+v: resumed %v %v, uninterrupted %v %v", c, resumed[0].weights, resumed[0].bias, full[0].weights, full[0].bias)
			}
		} else {
			for i := range 3 {
				if d := math.Abs(float64(full[0].weights[i] - resumed[0].weights[i])); d > 2e-6*max(1, math.Abs(float64(full[0].weights[i]))) {
					t.Errorf("%+v: weight %d: %v, uninterrupted %v", c, i, resumed[0].weights[i], full[0].weights[i])
				}
			}
		}
		if c.zero1 == 1 && (resumed[0].moments != 6 || resumed[1].moments != 2) {
			t.Errorf("%+v: moment elements per rank %d, %d after resuming (want 6, 2)", c, resumed[0].moments, resumed[1].moments)
		}
	}
}

// TestZeroOneRestoreLoadsOwnedOnly: right after a ZeRO-1 rank restores a
// checkpoint (full state, written by ZeRO-1 or by one replicated process), and
// before any step, its context holds the moments of the variables it owns
// only: the weight's on rank 0 (3 elements, 2 moments), the bias's on rank 1;
// the others' moments are never read into it.
func TestZeroOneRestoreLoadsOwnedOnly(t *testing.T) {
	for _, c := range []struct{ world0, zero0 int }{{2, 1}, {1, 0}} {
		dir := t.TempDir()
		for _, r := range runDPZero(t, dir, c.world0, c.zero0, 2, 2, false, nil) {
			if r.err != nil {
				t.Fatalf("%+v: %v", c, r.err)
			}
		}
		cs, err := dist.NewLocalGroup(stdctx.Background(), 2, dist.Options{Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		want := []struct {
			elements int64
			has      string
		}{{6, "weight"}, {2, "bias"}}
		for r, comm := range cs {
			defer comm.Close()
			mctx := newLinearCtx([]float32{0, 0, 0}, 0)
			s, err := NewStepper(testBackend(t), mctx, Config{Scope: "/m", Loss: linearLoss, WeightDecay: 0.01, Accumulation: 2,
				ClipNorm: 2, Comm: comm, ZeroStage: 1})
			if err != nil {
				t.Fatal(err)
			}
			l, err := NewLoop(LoopConfig{Stepper: s, Train: newLinSource(64, 8, 5), Steps: 6,
				LR: mustSchedule(t, "cosine", 0.3, 0.1, 6), CheckpointEvery: 2, Dir: dir, Resume: true,
				Plot: func(string, string) error { return nil }})
			if err != nil {
				t.Fatal(err)
			}
			if l.ckpts, err = checkpoint.NewManager(l.ckptRoot(), 0); err != nil {
				t.Fatal(err)
			}
			if step, _, err := l.restore(); err != nil || step != 2 {
				t.Fatalf("%+v: rank %d: restore: step %d, %v", c, r, step, err)
			}
			var moments []string
			for v := range mctx.IterVariables() {
				if isMoment(v, s.Config().OptimScope) {
					moments = append(moments, v.ScopeAndName())
				}
			}
			if got := s.OptimizerStateElements(); got != want[r].elements || len(moments) != 2 ||
				!strings.Contains(moments[0], want[r].has) || !strings.Contains(moments[1], want[r].has) {
				t.Errorf("%+v: rank %d holds %d moment elements %v after restoring (want %d, the %s's)", c, r, got, moments, want[r].elements, want[r].has)
			}
		}
	}
}

// TestZeroOneCheckpointRightAfterRestore: a 2-rank ZeRO-1 run that restores a checkpoint
// and writes one before any step (when the Stepper has not yet learnt from a graph which
// variables it trains) writes the whole state it restored: every moment, the ones rank 1
// owns too, bit for bit. Without the restored partition rank 0 wrote its own share alone.
func TestZeroOneCheckpointRightAfterRestore(t *testing.T) {
	dir := t.TempDir()
	for _, r := range runDPZero(t, dir, 2, 1, 2, 2, false, nil) {
		if r.err != nil {
			t.Fatal(r.err)
		}
	}
	errs := onLocalRanks(t, 2, func(r int, comm dist.Communicator) error {
		s, err := NewStepper(testBackend(t), newLinearCtx([]float32{0, 0, 0}, 0), Config{Scope: "/m", Loss: linearLoss,
			WeightDecay: 0.01, Accumulation: 2, ClipNorm: 2, Comm: comm, ZeroStage: 1})
		if err != nil {
			return err
		}
		l, err := NewLoop(LoopConfig{Stepper: s, Train: newLinSource(64, 8, 5), Steps: 6,
			LR: mustSchedule(t, "cosine", 0.3, 0.1, 6), CheckpointEvery: 2, Dir: dir, Resume: true,
			Plot: func(string, string) error { return nil }})
		if err != nil {
			return err
		}
		if l.ckpts, err = checkpoint.NewManager(l.ckptRoot(), 0); err != nil {
			return err
		}
		step, pos, err := l.restore()
		if err != nil {
			return err
		}
		if r == 0 {
			if l.metrics, err = metrics.Resume(filepath.Join(dir, "metrics.jsonl"), step); err != nil {
				return err
			}
			defer l.metrics.Close()
		}
		_, err = l.checkpoint(step+1, pos)
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	open := func(step int) *safetensors.File {
		f, err := safetensors.Open(filepath.Join(dir, "checkpoints", fmt.Sprintf("step-%08d", step), checkpoint.TrainStateFile))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	restored, written := open(2), open(3)
	if got, want := written.Names(), restored.Names(); !slices.Equal(got, want) {
		t.Fatalf("written right after the restore: %v, restored %v", got, want)
	}
	for _, n := range restored.Names() {
		a, _ := restored.Bytes(n)
		b, _ := written.Bytes(n)
		if !slices.Equal(a, b) {
			t.Errorf("%s differs from the restored checkpoint's", n)
		}
	}
}

// TestZeroOneForeignMomentRefused: a ZeRO-1 rank whose context holds a moment of a variable
// another rank owns (a checkpoint partitioned otherwise) fails its first update with an error
// naming the moment and both ranks, said once (it read "trainer: trainer: ZeRO-1: ...").
func TestZeroOneForeignMomentRefused(t *testing.T) {
	// Each rank closes its communicator when done: the other then fails instead of waiting.
	errs := onLocalRanks(t, 2, func(r int, comm dist.Communicator) error {
		mctx := newLinearCtx([]float32{0, 0, 0}, 0)
		s, err := NewStepper(testBackend(t), mctx, Config{Scope: "/m", Loss: linearLoss, Accumulation: 1, Comm: comm, ZeroStage: 1})
		if err != nil {
			return err
		}
		if r == 0 { // the bias (1 element) is rank 1's; the weight (3) rank 0's
			p := momentPaths(s.Config().OptimScope, mctx.GetVariableByScopeAndName("/m/lin", "bias"))[0]
			i := strings.LastIndex(p, context.ScopeSeparator)
			mctx.InAbsPath(p[:i]).VariableWithValue(p[i+1:], []float32{0}).SetTrainable(false)
		}
		_, err = s.Step(0.1, [][]float32{{1, 2, 3}}, []float32{1})
		return err
	})
	if e := errs[0]; e == nil || !strings.HasPrefix(e.Error(), "trainer: ZeRO-1: rank 0 holds /optim/") ||
		!strings.Contains(e.Error(), "/lin/bias_m1, owned by rank 1") {
		t.Errorf("rank 0: %v, want trainer: ZeRO-1: rank 0 holds the bias's moment, owned by rank 1", e)
	}
	if errs[1] == nil {
		t.Error("rank 1 went on alone")
	}
}

// TestZeroOneGatherKeepsNoHostCopy: after a ZeRO-1 update every trained variable
// (the owners' gathered ones too) is a device buffer of the backend with no host
// copy attached: the gather writes received weights once into a device buffer
// instead of into a host tensor uploaded (and kept) at the next step.
func TestZeroOneGatherKeepsNoHostCopy(t *testing.T) {
	errs := onLocalRanks(t, 2, func(r int, comm dist.Communicator) error {
		mctx := newLinearCtx([]float32{0.1, 0.2, 0.3}, 0)
		s, err := NewStepper(testBackend(t), mctx, Config{Scope: "/m", Loss: linearLoss, Comm: comm, ZeroStage: 1})
		if err != nil {
			return err
		}
		x := []float32{1, 2, 3, 4, 5, 6}
		for range 2 {
			if _, err := s.Step(0.1, tensors.FromFlatDataAndDimensions(x, 2, 3), []float32{1, 2}); err != nil {
				return err
			}
		}
		for _, v := range s.TrainedVariables() {
			val := v.MustValue()
			if val.IsLocal() || !val.IsOnAnyDevice() {
				err = fmt.Errorf("rank %d: %s: host copy %v, on the device %v", r, v.ScopeAndName(), val.IsLocal(), val.IsOnAnyDevice())
			}
		}
		return err
	})
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// onLocalRanks runs one on every rank of an in-process group of world ranks and returns their
// errors by rank; each rank closes its communicator when one returns, so a rank that fails ends
// the others' collectives instead of leaving them waiting.
func onLocalRanks(t *testing.T, world int, one func(rank int, comm dist.Communicator) error) []error {
	t.Helper()
	cs, err := dist.NewLocalGroup(stdctx.Background(), world, dist.Options{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, world)
	var wg sync.WaitGroup
	for r, comm := range cs {
		wg.Go(func() {
			defer comm.Close()
			errs[r] = one(r, comm)
		})
	}
	wg.Wait()
	return errs
}
