package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/train/safetensors"
)

// TestDamagedCheckpointSkipped damages the newest checkpoint in ways that keep
// every header valid; Latest must skip it with a warning naming it and use the
// previous one.
func TestDamagedCheckpointSkipped(t *testing.T) {
	flip := func(name string) func(dir string) {
		return func(dir string) {
			p := filepath.Join(dir, name)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)-1] ^= 0x40 // last data byte: the header stays valid
			os.WriteFile(p, b, 0o644)
		}
	}
	for _, tc := range []struct {
		name   string
		damage func(dir string)
	}{
		{"weight byte flipped", flip(safetensors.SingleFile)},
		{"training state byte flipped", flip(TrainStateFile)},
		{"extra file changed", flip("tokenizer/tokenizer.model")},
		{"config changed", func(dir string) { os.WriteFile(filepath.Join(dir, ConfigFile), []byte(`{"hidden_size":5}`), 0o644) }},
		{"state changed", func(dir string) {
			os.WriteFile(filepath.Join(dir, StateFile), []byte(`{"step":2,"kind":"sft"}`), 0o644)
		}},
		{"file missing", func(dir string) { os.Remove(filepath.Join(dir, TrainStateFile)) }},
		{"manifest missing (incomplete)", func(dir string) { os.Remove(filepath.Join(dir, ManifestFile)) }},
		{"manifest garbage", func(dir string) { os.WriteFile(filepath.Join(dir, ManifestFile), []byte("{"), 0o644) }},
		{"manifest escapes", func(dir string) {
			os.WriteFile(filepath.Join(dir, ManifestFile), []byte(`{"files":{"state.json":{"size":1,"sha256":"x"},"../../etc/passwd":{"size":1,"sha256":"x"}}}`), 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			m, _ := NewManager(t.TempDir(), 0)
			m.Log = slog.New(slog.NewTextHandler(&logs, nil))
			for _, s := range []int{1, 2} {
				if _, err := m.Save(testCheckpoint(s, 16)); err != nil {
					t.Fatal(err)
				}
			}
			tc.damage(m.Dir(2))
			l, err := m.Latest()
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if l.State.Step != 1 {
				t.Fatalf("loaded step %d, want the intact step 1", l.State.Step)
			}
			if !strings.Contains(logs.String(), "step-00000002") {
				t.Errorf("no warning naming the damaged checkpoint:\n%s", logs.String())
			}
			if err := Verify(m.Dir(2)); err == nil {
				t.Error("Verify accepted the damaged checkpoint")
			}
			if got := m.Steps(); len(got) != 1 || got[0] != 1 {
				t.Errorf("Steps = %v", got)
			}
		})
	}
}

// TestLatestPointerIgnored: the latest file is never followed, whatever it holds.
func TestLatestPointerIgnored(t *testing.T) {
	root := t.TempDir()
	var logs bytes.Buffer
	m, _ := NewManager(filepath.Join(root, "run", "checkpoints"), 0)
	m.Log = slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := m.Save(testCheckpoint(3, 16)); err != nil {
		t.Fatal(err)
	}
	other, _ := NewManager(filepath.Join(root, "other"), 0)
	if _, err := other.Save(testCheckpoint(9, 16)); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(m.Root, LatestFile), []byte("../../other/step-00000009\n"), 0o644)
	l, err := m.Latest()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Dir != m.Dir(3) {
		t.Fatalf("loaded %s, want %s", l.Dir, m.Dir(3))
	}
	if !strings.Contains(logs.String(), "ignoring a latest pointer") {
		t.Errorf("no warning about the pointer:\n%s", logs.String())
	}
}

// streamOf returns a Stream writing b in chunks of n bytes (elements straddle writes).
func streamOf(b []byte, n int) func(io.Writer) error {
	return func(w io.Writer) error {
		for len(b) > 0 {
			k := min(n, len(b))
			if _, err := w.Write(b[:k]); err != nil {
				return err
			}
			b = b[k:]
		}
		return nil
	}
}

func bf16Bytes(vs ...float32) []byte {
	b := make([]byte, 2*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint16(b[2*i:], safetensors.Float32ToBF16(v))
	}
	return b
}

func f32Bytes(vs ...float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// TestSaveRefusesNonFinite: a tensor holding NaN or Inf, in any encoding, is never saved;
// the error names the tensor and the last intact checkpoint.
func TestSaveRefusesNonFinite(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	for _, tc := range []struct {
		name       string
		weights    []safetensors.Tensor
		trainState []safetensors.Tensor
		tensor     string
	}{
		{"F32 values", []safetensors.Tensor{{Name: "w", Shape: []int{3}, F32: []float32{1, nan, 2}}}, nil, "w"},
		{"BF16 from F32 values", []safetensors.Tensor{{Name: "w", DType: "BF16", Shape: []int{2}, F32: []float32{inf, 1}}}, nil, "w"},
		{"F32 bytes", nil, []safetensors.Tensor{{Name: "/optim/m1", DType: "F32", Shape: []int{2}, Data: f32Bytes(0, inf)}}, "/optim/m1"},
		{"streamed BF16 straddling writes", []safetensors.Tensor{{Name: "w", DType: "BF16", Shape: []int{4}, Stream: streamOf(bf16Bytes(1, 2, 3, nan), 3)}}, nil, "w"},
		{"streamed F64", nil, []safetensors.Tensor{{Name: "/optim/v", DType: "F64", Shape: []int{1}, Stream: streamOf(binary.LittleEndian.AppendUint64(nil, math.Float64bits(math.Inf(-1))), 5)}}, "/optim/v"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := NewManager(t.TempDir(), 0)
			good, err := m.Save(testCheckpoint(1, 16))
			if err != nil {
				t.Fatal(err)
			}
			c := testCheckpoint(2, 16)
			c.Weights = append(c.Weights, tc.weights...)
			c.TrainState = append(c.TrainState, tc.trainState...)
			_, err = m.Save(c)
			var nf *NonFiniteError
			if !errors.As(err, &nf) || nf.Quantity != "tensor "+tc.tensor || nf.Step != 2 {
				t.Fatalf("error %v, want a NonFiniteError for tensor %s", err, tc.tensor)
			}
			if !strings.Contains(err.Error(), good) {
				t.Errorf("error %q does not name the last intact checkpoint %s", err, good)
			}
			if _, err := os.Stat(m.Dir(2)); !os.IsNotExist(err) {
				t.Error("a step-2 directory exists")
			}
			if p, _ := os.ReadFile(filepath.Join(m.Root, LatestFile)); string(p) != "step-00000001\n" {
				t.Errorf("latest = %q", p)
			}
			// A fresh manager (a new process) names the intact one too.
			m2, _ := NewManager(m.Root, 0)
			if got := m2.LastIntact(); got != good {
				t.Errorf("LastIntact = %s, want %s", got, good)
			}
		})
	}
	// Finite streamed tensors of every float dtype, sharded, round-trip.
	m, _ := NewManager(t.TempDir(), 0)
	c := &Checkpoint{State: State{Step: 1}, MaxShardBytes: 8, Weights: []safetensors.Tensor{
		{Name: "a", DType: "BF16", Shape: []int{3}, Stream: streamOf(bf16Bytes(1, -2, 3), 1)},
		{Name: "b", DType: "F32", Shape: []int{2}, Stream: streamOf(f32Bytes(0.5, 7), 3)},
		{Name: "c", DType: "I32", Shape: []int{1}, Data: []byte{0xff, 0xff, 0xff, 0x7f}},
	}}
	dir, err := m.Save(c)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if len(l.Weights.Files()) < 2 {
		t.Errorf("%d weight files, want shards", len(l.Weights.Files()))
	}
	if b, _ := l.Weights.Bytes("a"); !bytes.Equal(b, bf16Bytes(1, -2, 3)) {
		t.Errorf("a = %v", b)
	}
	if dt, _, _ := l.Weights.Info("a"); dt != "BF16" {
		t.Errorf("a stored as %s, want its own dtype BF16", dt)
	}
}

func TestCompareConfig(t *testing.T) {
	stored := json.RawMessage(`{"lr":0.001,"out":"a","data":["x.json"],"opt":{"beta":0.9,"log":1},"seed":1}`)
	ignore := []string{"out", "opt.log"}
	for _, tc := range []struct {
		name, current, key string
	}{
		{"same", `{"seed":1,"out":"a","lr":0.001,"data":["x.json"],"opt":{"log":1,"beta":0.9}}`, ""},
		{"ignored keys differ", `{"lr":0.001,"out":"b","data":["x.json"],"opt":{"beta":0.9,"log":2},"seed":1}`, ""},
		{"lr", `{"lr":0.002,"out":"a","data":["x.json"],"opt":{"beta":0.9,"log":1},"seed":1}`, "lr"},
		{"data", `{"lr":0.001,"out":"a","data":["y.json"],"opt":{"beta":0.9,"log":1},"seed":1}`, "data"},
		{"nested", `{"lr":0.001,"out":"a","data":["x.json"],"opt":{"beta":0.8,"log":1},"seed":1}`, "opt.beta"},
		{"removed", `{"lr":0.001,"out":"a","data":["x.json"],"opt":{"beta":0.9,"log":1}}`, "seed"},
		{"added", `{"lr":0.001,"out":"a","data":["x.json"],"opt":{"beta":0.9,"log":1},"seed":1,"batch":2}`, "batch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CompareConfig(stored, json.RawMessage(tc.current), ignore)
			var ce *ConfigChangeError
			switch {
			case tc.key == "" && err != nil:
				t.Fatalf("unexpected %v", err)
			case tc.key != "" && (!errors.As(err, &ce) || ce.Key != tc.key || !strings.Contains(err.Error(), `"`+tc.key+`"`)):
				t.Fatalf("error %v, want one naming %q", err, tc.key)
			}
		})
	}
	if err := CompareConfig(json.RawMessage(`{"lr":`), json.RawMessage(`{}`), nil); err == nil {
		t.Error("invalid stored config accepted")
	}
}

func TestPrepareOutput(t *testing.T) {
	type setup func(t *testing.T, dir string)
	run := func(kind string) setup {
		return func(t *testing.T, dir string) {
			if err := PrepareOutput(dir, kind, false, false); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, "metrics.jsonl"), []byte("{}\n"), 0o644)
		}
	}
	other := func(t *testing.T, dir string) {
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "thesis.tex"), []byte("precious"), 0o644)
	}
	for _, tc := range []struct {
		name          string
		setup         setup
		resume, force bool
		err           string // "" means success
		kept          string // a file that must still exist afterwards
	}{
		{"missing dir", nil, false, false, "", ""},
		{"empty dir", func(t *testing.T, dir string) { os.MkdirAll(dir, 0o755) }, false, false, "", ""},
		{"previous run, no flag", run("sft"), false, false, "not empty", "metrics.jsonl"},
		{"previous run, --resume", run("sft"), true, false, "", "metrics.jsonl"},
		{"previous run, --force", run("sft"), false, true, "", ""},
		{"other stage, --resume", run("train-rm"), true, false, "not a sft run", "metrics.jsonl"},
		{"other stage, --force", run("train-rm"), false, true, "replaces only a previous sft run", "metrics.jsonl"},
		{"unrelated files, --force", other, false, true, "not a saferlhf run", "thesis.tex"},
		{"unrelated files, --resume", other, true, false, "not a sft run", "thesis.tex"},
		{"nothing to resume", nil, true, false, "no run to resume", ""},
		{"older run, --resume", func(t *testing.T, dir string) { os.MkdirAll(filepath.Join(dir, "checkpoints"), 0o755) }, true, false, "older saferlhf", "checkpoints"},
		{"a regular file", func(t *testing.T, dir string) { os.WriteFile(dir, []byte("x"), 0o644) }, false, true, "is a file", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			err := PrepareOutput(dir, "sft", tc.resume, tc.force)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
			if tc.kept != "" {
				if _, err := os.Stat(filepath.Join(dir, tc.kept)); err != nil {
					t.Errorf("%s lost: %v", tc.kept, err)
				}
			}
			if err == nil {
				if RunKind(dir) != "sft" {
					t.Errorf("run kind %q", RunKind(dir))
				}
				if tc.force {
					if _, err := os.Stat(filepath.Join(dir, "metrics.jsonl")); !os.IsNotExist(err) {
						t.Error("--force kept the previous run's files")
					}
				}
			}
		})
	}
}

func TestResumeChecks(t *testing.T) {
	modelDir := t.TempDir()
	os.WriteFile(filepath.Join(modelDir, "model.safetensors"), []byte("weights"), 0o644)
	frozen, err := FrozenModel("reward model", modelDir)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := NewManager(t.TempDir(), 0)
	m.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := m.Resume(ResumeOptions{Kind: "sft"}); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("resume without a checkpoint: %v", err)
	}
	c := testCheckpoint(5, 16)
	c.State.Frozen = []Frozen{frozen}
	if _, err := m.Save(c); err != nil {
		t.Fatal(err)
	}
	base := ResumeOptions{Kind: "sft", Config: json.RawMessage(`{"lr":0.001}`), Frozen: []Frozen{frozen}}
	for _, tc := range []struct {
		name   string
		change func(o *ResumeOptions)
		err    string
	}{
		{"same", func(o *ResumeOptions) {}, ""},
		{"other kind", func(o *ResumeOptions) { o.Kind = "train-rm" }, `"sft" run, not "train-rm"`},
		{"other kind, allowed", func(o *ResumeOptions) { o.Kind, o.AllowConfigChange = "train-rm", true }, `"sft" run, not "train-rm"`},
		{"lr changed", func(o *ResumeOptions) { o.Config = json.RawMessage(`{"lr":0.002}`) }, `setting "lr" changed`},
		{"lr changed, allowed", func(o *ResumeOptions) { o.Config, o.AllowConfigChange = json.RawMessage(`{"lr":0.002}`), true }, ""},
		{"lr ignored", func(o *ResumeOptions) { o.Config, o.Ignore = json.RawMessage(`{"lr":0.002}`), []string{"lr"} }, ""},
		{"frozen model changed", func(o *ResumeOptions) {
			f := frozen
			f.SHA256 = "0123456789abcdef"
			o.Frozen = []Frozen{f}
		}, "frozen reward model changed"},
		{"frozen model missing", func(o *ResumeOptions) { o.Frozen = nil }, "not used by the new run"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.change(&o)
			l, err := m.Resume(o)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				l.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
		})
	}
	// The hash follows the content.
	os.WriteFile(filepath.Join(modelDir, "model.safetensors"), []byte("weightz"), 0o644)
	if f2, _ := FrozenModel("reward model", modelDir); f2.SHA256 == frozen.SHA256 {
		t.Error("hash did not change with the content")
	}
}

// TestNoUsableCheckpointSaysWhy: when every checkpoint is damaged, Latest's error (which --resume
// reports) names each one's damaged file and checksums, not just "no usable checkpoint" (the
// reasons were only warnings in the log).
func TestNoUsableCheckpointSaysWhy(t *testing.T) {
	m, _ := NewManager(t.TempDir(), 0)
	m.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, s := range []int{1, 2} {
		if _, err := m.Save(testCheckpoint(s, 16)); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []int{1, 2} {
		p := filepath.Join(m.Dir(s), TrainStateFile)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-1] ^= 0x40
		os.WriteFile(p, b, 0o644)
	}
	_, err := m.Resume(ResumeOptions{Kind: "sft"})
	if !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("got %v, want ErrNoCheckpoint", err)
	}
	for _, want := range []string{"step-00000001", "step-00000002", TrainStateFile, "sha256", "manifest says"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
