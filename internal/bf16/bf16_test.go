package bf16

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/dtypes/bfloat16"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// TestRoundToNearestEven: the in-graph float32→bf16 conversion (the compute cast
// of --dtype bf16) rounds as PyTorch and the host's safetensors.Float32ToBF16, not by truncation
// as the pure-Go backend's ConvertDType does: values whose truncation and rounding differ, ties
// to even both ways (the tie above every bf16 value and its neighbours), subnormals, the largest finite values (which round to Inf), ±0, ±Inf and NaN,
// and random values over the whole float32 range.
func TestRoundToNearestEven(t *testing.T) {
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	f := math.Float32frombits
	xs := []float32{
		0.1, -0.1, 1.0 / 3, 3.14159265, -65519.5, 1e-3, // truncation and rounding differ
		f(0x3f808000), f(0x3f818000), // ties: 1+2^-8 rounds down to even, 1+3·2^-8 up
		f(0xbf808000), f(0xbf818000), // the same, negative
		f(0x3f807fff), f(0x3f808001), // just below and above a tie
		f(0x00000001), f(0x00008000), f(0x00018000), f(0x007fffff), f(0x00800000), f(0x80408000), // subnormals
		f(0x80408001), f(0x8000ffff), f(0x80018000), f(0x807fffff), // negative subnormals
		f(0x7f7fffff), f(0xff7fffff), f(0x7f7f7fff), f(0x7f7f8000), // the largest finite: Inf, or stay finite
		f(0x72000001), f(0x0d000001), // huge and tiny exponents
		0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), 1, -2, 0.5,
	}
	// Every bf16 value's upper tie (ties go to even, both ways) and its neighbours: 2^18 values.
	for hi := range uint32(1 << 16) {
		for _, lo := range []uint32{0x8000, 0x7fff, 0x8001, 0xffff} {
			if x := f(hi<<16 | lo); !math.IsNaN(float64(x)) {
				xs = append(xs, x)
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		if x := f(rng.Uint32()); !math.IsNaN(float64(x)) {
			xs = append(xs, x)
		}
	}
	nans := []float32{float32(math.NaN()), f(0x7f800001), f(0xff800001), f(0x7fc00001)}
	in := append(append([]float32(nil), xs...), nans...)
	got := G.MustExecOnce(be, Round, in).Value().([]bfloat16.BFloat16)
	for i, x := range xs {
		if want := safetensors.Float32ToBF16(x); uint16(got[i]) != want {
			t.Errorf("bf16(%g = %#08x) = %#04x, want %#04x (truncation: %#04x)", x, math.Float32bits(x), uint16(got[i]), want, math.Float32bits(x)>>16)
		}
	}
	for i := range nans {
		if g := got[len(xs)+i].Float32(); !math.IsNaN(float64(g)) {
			t.Errorf("bf16(NaN %#08x) = %g, want NaN", math.Float32bits(nans[i]), g)
		}
	}
}

// BenchmarkConvert compares Round with the pure-Go backend's truncating ConvertDType on a
// 1024×1024 float32 activation (the --dtype bf16 compute cast of a hidden state or weight).
func BenchmarkConvert(b *testing.B) {
	be, err := backend.New("go")
	if err != nil {
		b.Fatal(err)
	}
	x := make([]float32, 1024*1024)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	in := tensors.FromFlatDataAndDimensions(x, 1024, 1024)
	for _, c := range []struct {
		name string
		f    func(*G.Node) *G.Node
	}{
		{"truncate", func(x *G.Node) *G.Node { return G.ConvertDType(x, dtypes.BFloat16) }},
		{"round", Round},
	} {
		b.Run(c.name, func(b *testing.B) {
			exec := G.MustNewExec(be, c.f)
			for b.Loop() {
				exec.MustExec(in)[0].FinalizeAll()
			}
		})
	}
}
