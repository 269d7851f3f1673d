package model

import (
	"bytes"
	"encoding/binary"
	"math"
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
		ts, err := StreamWeights(actor, cfg, be)
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
