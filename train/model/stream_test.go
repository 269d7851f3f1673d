package model

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/safetensors"
)

// TestStreamWeights: the streamed weights of a LoRA actor over a shared base (float32 and bf16
// bases, device-resident) are GetWeights' merged weights: bit for bit over a float32 base, and
// GetWeights rounded to bf16 (nearest even) over a bf16 base (merged in float32 on the device);
// unadapted tensors keep their variable's dtype.
func TestStreamWeights(t *testing.T) {
	be := getBackend(t)
	for _, dt := range []dtypes.DType{dtypes.Float32, dtypes.BFloat16} {
		cfg := tinyConfig()
		root := context.New()
		base, actor := root.In("base"), root.In("actor")
		if err := SetWeightsWith(base, cfg, RandomWeights(cfg, 4), Storage{DType: dt, Backend: be}); err != nil {
			t.Fatal(err)
		}
		ShareBase(actor, base)
		if err := AddLoRA(actor, cfg, LoRAConfig{Rank: 3, Alpha: 6, Targets: []string{"q_proj", "down_proj"}}, 2); err != nil {
			t.Fatal(err)
		}
		actor.EnumerateVariablesInScope(func(v *context.Variable) {
			if v.Shape().Dimensions[1] == 3 {
				d := make([]float32, v.Shape().Size())
				for i := range d {
					d[i] = 0.01 * float32(i%11-5)
				}
				v.MustSetValue(tensors.FromFlatDataAndDimensions(d, v.Shape().Dimensions...))
			}
		})
		want, err := GetWeights(actor, cfg)
		if err != nil {
			t.Fatal(err)
		}
		ts, err := StreamWeights(actor, cfg, be, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) != len(want) {
			t.Fatalf("%s: %d streamed tensors, GetWeights %d", dt, len(ts), len(want))
		}
		merged := 0
		for _, st := range ts {
			var buf bytes.Buffer
			if err := st.Stream(&buf); err != nil {
				t.Fatal(err)
			}
			w := want[st.Name]
			if w == nil {
				t.Fatalf("%s: unexpected tensor %s", dt, st.Name)
			}
			if st.DType != stDType[dt] {
				t.Fatalf("%s: %s streamed as %s", dt, st.Name, st.DType)
			}
			raw := buf.Bytes()
			if len(raw) != len(w.Data)*st.DType.Size() {
				t.Fatalf("%s: %s: %d bytes for %d values", dt, st.Name, len(raw), len(w.Data))
			}
			if _, _, ok := loraNames(st.Name); ok && actor.GetVariableByScopeAndName(actor.Scope(), st.Name[:len(st.Name)-len(".weight")]+".lora_A.weight") != nil {
				merged++
			}
			for i, x := range w.Data {
				var got uint32
				want := math.Float32bits(x)
				if dt == dtypes.BFloat16 {
					got, want = uint32(binary.LittleEndian.Uint16(raw[2*i:])), uint32(safetensors.Float32ToBF16(x))
				} else {
					got = binary.LittleEndian.Uint32(raw[4*i:])
				}
				if got != want {
					t.Fatalf("%s: %s[%d] = %#x, want %#x", dt, st.Name, i, got, want)
				}
			}
		}
		if merged != 2*cfg.NumLayers {
			t.Fatalf("%s: %d merged tensors, want %d", dt, merged, 2*cfg.NumLayers)
		}
	}
}

// TestSaveStreamedEqualsSaveAs: saving StreamWeights' tensors (merged in float32, converted as
// they stream) writes the same files as GetWeights then SaveAs, in bf16 and f32, from a bf16
// base with LoRA (so both the widening and the rounding conversions run).
func TestSaveStreamedEqualsSaveAs(t *testing.T) {
	be := getBackend(t)
	cfg := tinyConfig()
	cfg.ScoreDim = 0
	root := context.New()
	base, actor := root.In("base"), root.In("actor")
	if err := SetWeightsWith(base, cfg, RandomWeights(cfg, 8), Storage{DType: dtypes.BFloat16, Backend: be}); err != nil {
		t.Fatal(err)
	}
	ShareBase(actor, base)
	if err := AddLoRA(actor, cfg, LoRAConfig{Rank: 2, Alpha: 4, Targets: []string{"v_proj", "up_proj"}}, 5); err != nil {
		t.Fatal(err)
	}
	actor.EnumerateVariablesInScope(func(v *context.Variable) {
		if v.Shape().Dimensions[1] == 2 {
			d := make([]float32, v.Shape().Size())
			for i := range d {
				d[i] = 0.03 * float32(i%7-3)
			}
			v.MustSetValue(tensors.FromFlatDataAndDimensions(d, v.Shape().Dimensions...))
		}
	})
	w, err := GetWeights(actor, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F32} {
		old, streamed := t.TempDir(), t.TempDir()
		if err := SaveAs(old, cfg, w, dt); err != nil {
			t.Fatal(err)
		}
		ts, err := StreamWeights(actor, cfg, be, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := SaveTensorsAs(streamed, cfg, ts, dt); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"model.safetensors", "config.json"} {
			a, err1 := os.ReadFile(filepath.Join(old, f))
			b, err2 := os.ReadFile(filepath.Join(streamed, f))
			if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
				t.Fatalf("%s: %s differs between SaveAs and the streamed save (%v, %v)", dt, f, err1, err2)
			}
		}
	}
}
