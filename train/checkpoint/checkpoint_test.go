package checkpoint

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/safetensors"
)

func testCheckpoint(step int, size int) *Checkpoint {
	w := make([]float32, size)
	for i := range w {
		w[i] = float32(step) + float32(i)*1e-3
	}
	return &Checkpoint{
		State: State{
			Step: step, Epoch: 1, Data: json.RawMessage(`{"shard":3,"offset":17}`),
			RNG: json.RawMessage(`"AAECAw=="`), Lambda: json.RawMessage(`{"log_lambda":-0.5,"window":[1,2]}`),
			Kind: "sft", Config: json.RawMessage(`{"lr":0.001}`), Metrics: map[string]float64{"loss": 1.5},
		},
		Weights: []safetensors.Tensor{
			{Name: "model.embed_tokens.weight", Shape: []int{size / 4, 4}, F32: w},
			{Name: "model.norm.weight", Shape: []int{4}, F32: []float32{1, 1, 1, float32(step)}},
		},
		Config:     json.RawMessage(`{"hidden_size":4}`),
		TrainState: []safetensors.Tensor{{Name: "/optim/step", DType: "F32", Shape: []int{}, Data: []byte{0, 0, 128, 63}}},
		Files:      map[string][]byte{"tokenizer/tokenizer.model": []byte("spm")},
	}
}

// arrays returns the float32 weights of c by name, as Loaded.WeightsMap gives them.
func arrays(c *Checkpoint) map[string]Array {
	out := map[string]Array{}
	for _, t := range c.Weights {
		out[t.Name] = Array{Shape: t.Shape, Data: t.F32}
	}
	return out
}

func TestSaveLoadKeep(t *testing.T) {
	root := t.TempDir()
	m, err := NewManager(root, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Latest(); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("empty root: %v", err)
	}
	for _, s := range []int{10, 20, 30} {
		if _, err := m.Save(testCheckpoint(s, 16)); err != nil {
			t.Fatal(err)
		}
	}
	if got := m.Steps(); !reflect.DeepEqual(got, []int{20, 30}) {
		t.Fatalf("kept %v", got)
	}
	p, _ := os.ReadFile(filepath.Join(root, LatestFile))
	if string(p) != "step-00000030\n" {
		t.Errorf("latest = %q", p)
	}
	l, err := m.Latest()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	want := testCheckpoint(30, 16)
	st := l.State
	st.Saved = ""
	if !reflect.DeepEqual(st, want.State) {
		t.Errorf("state %+v\nwant %+v", st, want.State)
	}
	ws, err := l.WeightsMap()
	if err != nil || !reflect.DeepEqual(ws, arrays(want)) {
		t.Errorf("weights %v %v", ws, err)
	}
	if string(l.Config) != `{"hidden_size":4}` {
		t.Errorf("config %s", l.Config)
	}
	if b, _ := l.TrainState.Bytes("/optim/step"); !bytes.Equal(b, []byte{0, 0, 128, 63}) {
		t.Errorf("train state %v", b)
	}
	if b, _ := os.ReadFile(filepath.Join(l.Dir, "tokenizer/tokenizer.model")); string(b) != "spm" {
		t.Errorf("extra file %q", b)
	}
	// Saving the same step again replaces it.
	if _, err := m.Save(testCheckpoint(30, 8)); err != nil {
		t.Fatal(err)
	}
	l2, _ := m.Latest()
	if ws, _ := l2.WeightsMap(); len(ws["model.embed_tokens.weight"].Data) != 8 {
		t.Error("re-save of a step did not replace it")
	}
	l2.Close()
}

func TestShardedBF16(t *testing.T) {
	m, _ := NewManager(t.TempDir(), 0)
	c := testCheckpoint(1, 64)
	for i := range c.Weights {
		c.Weights[i].DType = "BF16"
	}
	c.MaxShardBytes = 64
	dir, err := m.Save(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors.index.json")); err != nil {
		t.Fatal("no index for sharded weights")
	}
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ws, _ := l.WeightsMap()
	got := ws["model.embed_tokens.weight"].Data
	for i, w := range arrays(c)["model.embed_tokens.weight"].Data {
		if math.Abs(float64(got[i]-w)) > 1e-2*math.Abs(float64(w))+1e-6 {
			t.Fatalf("[%d] %g vs %g", i, got[i], w)
		}
	}
}

func TestCorruptedSkipped(t *testing.T) {
	root := t.TempDir()
	var logs bytes.Buffer
	m, _ := NewManager(root, 0)
	m.Log = slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := m.Save(testCheckpoint(4, 16)); err != nil {
		t.Fatal(err)
	}
	// step 5: garbage state.json; step 6: truncated weights; step 7: state.json names another step;
	// .tmp-step-8: an interrupted save.
	for _, s := range []int{5, 6, 7} {
		if _, err := m.Save(testCheckpoint(s, 16)); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(m.Dir(5), StateFile), []byte("{trunc"), 0o644)
	wf := filepath.Join(m.Dir(6), "model.safetensors")
	b, _ := os.ReadFile(wf)
	os.WriteFile(wf, b[:len(b)-10], 0o644)
	os.WriteFile(filepath.Join(m.Dir(7), StateFile), []byte(`{"step":3}`), 0o644)
	os.MkdirAll(filepath.Join(root, ".tmp-step-8"), 0o755)

	l, err := m.Latest()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.State.Step != 4 {
		t.Fatalf("loaded step %d, want 4", l.State.Step)
	}
	for _, d := range []string{"step-00000005", "step-00000006", "step-00000007"} {
		if !strings.Contains(logs.String(), d) {
			t.Errorf("no warning for %s:\n%s", d, logs.String())
		}
	}
}

// TestCrashChild is the child process of TestKilledMidSave; it runs only when
// CKPT_CRASH_ROOT is set: it saves step 1, then starts saving step 2 and waits
// to be killed at the stage named by CKPT_CRASH_STAGE.
func TestCrashChild(t *testing.T) {
	root := os.Getenv("CKPT_CRASH_ROOT")
	if root == "" {
		t.Skip("child process of TestKilledMidSave")
	}
	m, err := NewManager(root, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Save(testCheckpoint(1, 1024)); err != nil {
		t.Fatal(err)
	}
	m.hook = func(stage string) {
		if stage == os.Getenv("CKPT_CRASH_STAGE") {
			fmt.Println("READY")
			time.Sleep(time.Minute)
		}
	}
	m.Save(testCheckpoint(2, 1024))
}

func TestKilledMidSave(t *testing.T) {
	for _, tc := range []struct {
		stage    string
		wantStep int
	}{
		{"weights", 1}, // killed while the step-2 directory is being written
		{"renamed", 2}, // killed after the rename, before the latest pointer update
	} {
		t.Run(tc.stage, func(t *testing.T) {
			root := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "CKPT_CRASH_ROOT="+root, "CKPT_CRASH_STAGE="+tc.stage)
			out, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(out)
			ready := false
			for sc.Scan() {
				if sc.Text() == "READY" {
					ready = true
					break
				}
			}
			cmd.Process.Signal(syscall.SIGKILL)
			err := cmd.Wait()
			if !ready {
				t.Fatalf("child never reached stage %s: %v", tc.stage, err)
			}
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child not killed by SIGKILL: %v", cmd.ProcessState)
			}
			m, _ := NewManager(root, 0)
			m.Log = slog.New(slog.NewTextHandler(new(bytes.Buffer), nil))
			l, err := m.Latest()
			if err != nil {
				t.Fatal(err)
			}
			if l.State.Step != tc.wantStep {
				t.Fatalf("latest step %d, want %d", l.State.Step, tc.wantStep)
			}
			ws, err := l.WeightsMap()
			if err != nil || !reflect.DeepEqual(ws, arrays(testCheckpoint(tc.wantStep, 1024))) {
				t.Fatalf("weights differ after crash: %v", err)
			}
			l.Close()
			// The next save cleans up and succeeds.
			if _, err := m.Save(testCheckpoint(3, 16)); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(root, ".tmp-step-2")); !os.IsNotExist(err) {
				t.Error("leftover .tmp-step-2 not removed")
			}
		})
	}
}

func TestContextRoundTrip(t *testing.T) {
	ctx := context.New()
	ctx.InAbsPath("/policy/layer").VariableWithValue("weight", [][]float32{{1, 2}, {3, float32(math.Inf(-1))}})
	ctx.InAbsPath("/optim/policy/layer").VariableWithValue("weight_m1", [][]float32{{0.1, 0.2}, {0.3, 0.4}}).SetTrainable(false)
	ctx.InAbsPath("/optim").VariableWithValue("step", float32(7)).SetTrainable(false)
	ctx.InAbsPath("/").VariableWithValue("rng", []uint64{1, 2, 3}).SetTrainable(false)
	ctx.InAbsPath("/x").VariableWithValue("count", int64(-5)).SetTrainable(false)
	bf := tensors.FromShape(shapes.Make(dtypes.BFloat16, 3))
	ctx.InAbsPath("/x").VariableWithValue("half", bf)

	ts, err := ContextTensors(ctx, func(v *context.Variable) bool { return !strings.HasPrefix(v.Scope(), "/policy") })
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, x := range ts {
		names = append(names, x.Name)
	}
	if !reflect.DeepEqual(names, []string{"/optim/policy/layer/weight_m1", "/optim/step", "/rng", "/x/count", "/x/half"}) {
		t.Fatalf("names %v", names)
	}
	m, _ := NewManager(t.TempDir(), 0)
	if _, err := m.Save(&Checkpoint{State: State{Step: 1}, TrainState: ts, TrainStateMeta: TrainableMetadata(ctx, ts)}); err != nil {
		t.Fatal(err)
	}
	l, err := m.Latest()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	// Into a context that has only the model: optimizer state is created.
	ctx2 := context.New()
	ctx2.InAbsPath("/x").VariableWithValue("count", int64(0)).SetTrainable(false)
	if err := RestoreContext(ctx2, l.TrainState); err != nil {
		t.Fatal(err)
	}
	ts2, _ := ContextTensors(ctx2, nil)
	if !reflect.DeepEqual(materialise(t, ts), materialise(t, ts2)) {
		t.Fatalf("restored variables differ:\n%v\n%v", ts, ts2)
	}
	if v := ctx2.GetVariableByScopeAndName("/x", "half"); v == nil || !v.Trainable {
		t.Error("trainable flag not restored")
	}
	if v := ctx2.GetVariableByScopeAndName("/optim", "step"); v == nil || v.Trainable {
		t.Error("non-trainable flag not restored")
	}
	// Shape mismatch is an error naming the variable.
	ctx3 := context.New()
	ctx3.InAbsPath("/optim").VariableWithValue("step", []float32{1, 2}).SetTrainable(false)
	if err := RestoreContext(ctx3, l.TrainState); err == nil || !strings.Contains(err.Error(), "/optim/step") {
		t.Errorf("shape mismatch error %v", err)
	}
}

func TestCheckFinite(t *testing.T) {
	if err := CheckFinite(3, map[string]float64{"loss": 1, "kl": -2}); err != nil {
		t.Fatal(err)
	}
	err := CheckFinite(12, map[string]float64{"loss": 1, "reward_critic_loss": math.Inf(1), "actor_loss": math.NaN()})
	var nf *NonFiniteError
	if !errors.As(err, &nf) || nf.Step != 12 || nf.Quantity != "actor_loss" || err.Error() != "step 12: actor_loss is NaN" {
		t.Fatalf("%v", err)
	}
}

// materialise reads the bytes of streamed tensors, so that tensors compare with DeepEqual.
func materialise(t *testing.T, ts []safetensors.Tensor) []safetensors.Tensor {
	out := make([]safetensors.Tensor, len(ts))
	for i, x := range ts {
		out[i] = x
		if x.Stream != nil {
			var b bytes.Buffer
			if err := x.Stream(&b); err != nil {
				t.Fatal(err)
			}
			out[i].Stream, out[i].Data = nil, b.Bytes()
		}
	}
	return out
}

// TestWeightsStoredOnce: with WeightsScope, a variable equal to its weight is stored only in the
// weights and restored from there bit for bit; one that differs (or has no weight) stays in the
// training state.
func TestWeightsStoredOnce(t *testing.T) {
	ctx := context.New()
	ctx.InAbsPath("/model").VariableWithValue("a.weight", [][]float32{{1, 2}, {3, -4.5}})
	ctx.InAbsPath("/model").VariableWithValue("b.weight", []float32{7, 8, 9})
	ctx.InAbsPath("/model").VariableWithValue("c.weight", tensors.FromShape(shapes.Make(dtypes.BFloat16, 2)))
	ctx.InAbsPath("/optim/model").VariableWithValue("a.weight_m1", [][]float32{{0.1, 0.2}, {0.3, 0.4}}).SetTrainable(false)
	ts, err := ContextTensors(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &Checkpoint{State: State{Step: 1}, TrainState: ts, TrainStateMeta: TrainableMetadata(ctx, ts), WeightsScope: "/model",
		Weights: []safetensors.Tensor{
			{Name: "a.weight", Shape: []int{2, 2}, F32: []float32{1, 2, 3, -4.5}}, // equal: stored once
			{Name: "b.weight", Shape: []int{3}, F32: []float32{7, 8, 9.5}},        // differs: kept in the state
			{Name: "lm_head.weight", Shape: []int{1}, F32: []float32{1}},          // no variable
		}}
	m, _ := NewManager(t.TempDir(), 0)
	dir, err := m.Save(c)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := l.TrainState.Names(); !slices.Equal(got, []string{"/model/b.weight", "/model/c.weight", "/optim/model/a.weight_m1"}) &&
		!slices.Equal(sorted(got), []string{"/model/b.weight", "/model/c.weight", "/optim/model/a.weight_m1"}) {
		t.Fatalf("training state holds %v", got)
	}
	ctx2 := context.New()
	ctx2.InAbsPath("/model").VariableWithValue("a.weight", [][]float32{{0, 0}, {0, 0}})
	ctx2.InAbsPath("/model").VariableWithValue("b.weight", []float32{0, 0, 0})
	ctx2.InAbsPath("/model").VariableWithValue("c.weight", tensors.FromShape(shapes.Make(dtypes.BFloat16, 2)))
	if err := l.RestoreContext(ctx2); err != nil {
		t.Fatal(err)
	}
	ts2, _ := ContextTensors(ctx2, nil)
	if !reflect.DeepEqual(materialise(t, ts), materialise(t, ts2)) {
		t.Fatal("restored variables differ")
	}
	// A context without the variable the weights hold is an error naming it.
	if err := l.RestoreContext(context.New()); err == nil || !strings.Contains(err.Error(), "/model/a.weight") {
		t.Errorf("missing variable: %v", err)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestWeightsStreamedOnce: with WeightsScope, a streamed weight is read once (written, and its
// bytes hashed on the way, for comparing with the training state), not once more to compare.
func TestWeightsStreamedOnce(t *testing.T) {
	ctx := context.New()
	ctx.InAbsPath("/model").VariableWithValue("a.weight", [][]float32{{1, 2}, {3, -4.5}})
	ctx.InAbsPath("/model").VariableWithValue("b.weight", []float32{7, 8, 9})
	ts, err := ContextTensors(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	reads := map[string]int{}
	streamed := func(name string, shape []int, v []float32) safetensors.Tensor {
		b, err := safetensors.AppendFloat32s(nil, v, safetensors.F32)
		if err != nil {
			t.Fatal(err)
		}
		return safetensors.Tensor{Name: name, Shape: shape, Stream: func(w io.Writer) error {
			reads[name]++
			_, err := w.Write(b)
			return err
		}}
	}
	c := &Checkpoint{State: State{Step: 1}, TrainState: ts, TrainStateMeta: TrainableMetadata(ctx, ts), WeightsScope: "/model",
		Weights: []safetensors.Tensor{streamed("a.weight", []int{2, 2}, []float32{1, 2, 3, -4.5}),
			streamed("b.weight", []int{3}, []float32{7, 8, 9.5})}}
	m, _ := NewManager(t.TempDir(), 0)
	dir, err := m.Save(c)
	if err != nil {
		t.Fatal(err)
	}
	if reads["a.weight"] != 1 || reads["b.weight"] != 1 {
		t.Errorf("weights streamed %v times, want once each", reads)
	}
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := sorted(l.TrainState.Names()); !slices.Equal(got, []string{"/model/b.weight"}) {
		t.Fatalf("training state holds %v, want only the variable that differs from its weight", got)
	}
}
