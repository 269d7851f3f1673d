package collectives

import (
	stdctx "context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes/bfloat16"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/dist"
)

// requireGPUEnv makes the GPU tests fail instead of skipping (bench/gpu/dist.sh sets it).
const requireGPUEnv = "SAFERLHF_REQUIRE_GPU"

// gpuReducerOrSkip starts xla:cuda and an NCCL Reducer of one rank, or skips
// (fails under SAFERLHF_REQUIRE_GPU) saying what is missing.
func gpuReducerOrSkip(t *testing.T) (backends.Backend, *Reducer) {
	t.Helper()
	skip := func(f string, a ...any) {
		if os.Getenv(requireGPUEnv) != "" {
			t.Fatalf("%s set but: "+f, append([]any{requireGPUEnv}, a...)...)
		}
		t.Skipf("needs a GPU with xla:cuda and NCCL: "+f, a...)
	}
	be, err := backend.New("xla:cuda")
	if err != nil {
		skip("%v", err)
	}
	t.Cleanup(be.Finalize)
	r, why, err := Select(stdctx.Background(), NCCL, "xla:cuda", be, dist.Self{}, time.Minute)
	if err != nil {
		skip("%v", err)
	}
	t.Cleanup(func() { r.Close() })
	t.Logf("reducer: %s", why)
	return be, r
}

// onDevice returns the tensors computed by XLA from host values (x + 0), so
// they live in PJRT buffers only.
func onDevice(t *testing.T, be backends.Backend, ts ...*tensors.Tensor) []*tensors.Tensor {
	t.Helper()
	out := make([]*tensors.Tensor, len(ts))
	for i, x := range ts {
		y, err := graph.ExecOnce(be, func(x *graph.Node) *graph.Node { return graph.AddScalar(x, 0) }, x)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = y
	}
	return out
}

// TestNCCLReducerGPU runs the Reducer through the real NCCL with one rank on
// XLA's buffers: the mean of one rank is the identity (in place, packed and
// alone, f32 and bf16), the owner's broadcast too, and a device-to-device
// write into a PJRT buffer in place is what XLA and the host read next (the
// assumption the in-place averaging rests on).
func TestNCCLReducerGPU(t *testing.T) {
	be, r := gpuReducerOrSkip(t)
	r.bucketBytes = 64 // small tensors staged together, the 80-byte one alone
	big := make([]float32, 20)
	for i := range big {
		big[i] = float32(i) - 7.5
	}
	in := []*tensors.Tensor{
		tensors.FromFlatDataAndDimensions([]float32{1, -2, 3}, 3),
		tensors.FromFlatDataAndDimensions([]float32{4, 5, 6.5, 7, 8}, 5),
		tensors.FromFlatDataAndDimensions(big, 4, 5),
		tensors.FromFlatDataAndDimensions([]bfloat16.BFloat16{bfloat16.FromFloat32(1.5), bfloat16.FromFloat32(-3)}, 2),
	}
	want := make([]string, len(in))
	for i, x := range in {
		x.MustConstFlatData(func(f any) { want[i] = fmt.Sprint(f) })
	}
	dev := onDevice(t, be, in...)
	out, err := r.Mean(dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.BroadcastOwned(out, make([]int, len(out))); err != nil {
		t.Fatal(err)
	}
	for i, o := range out {
		if o != dev[i] {
			t.Errorf("gradient %d: not averaged in place (one rank, ncclAvg %v)", i, r.dev.Avg())
		}
		var got string
		o.MustConstFlatData(func(f any) { got = fmt.Sprint(f) })
		if got != want[i] {
			t.Errorf("gradient %d after one rank's mean and broadcast: %s, want %s", i, got, want[i])
		}
	}

	// In place: copy a's buffer over b's, then XLA and the host must read a's values in b.
	ab := onDevice(t, be, tensors.FromFlatDataAndDimensions([]float32{10, 20, 30, 40}, 4), tensors.FromFlatDataAndDimensions([]float32{1, 2, 3, 4}, 4))
	ab[1].MustConstFlatData(func(any) {}) // a host copy that must not be read afterwards
	pa, err := r.dev.Pointer(ab[0])
	if err != nil {
		t.Fatal(err)
	}
	pb, err := r.dev.Pointer(ab[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := r.dev.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := r.dev.CopyDtoD(pb, pa, 16); err != nil {
		t.Fatal(err)
	}
	if err := r.dev.Sync(); err != nil {
		t.Fatal(err)
	}
	r.dev.Written(ab[1])
	sum, err := graph.ExecOnce(be, func(x *graph.Node) *graph.Node { return graph.ReduceAllSum(x) }, ab[1])
	if err != nil {
		t.Fatal(err)
	}
	if got := tensors.ToScalar[float32](sum); got != 100 {
		t.Errorf("XLA's sum of a buffer written in place: %v, want 100", got)
	}
	if got := tensors.MustCopyFlatData[float32](ab[1]); fmt.Sprint(got) != "[10 20 30 40]" {
		t.Errorf("host copy of a buffer written in place: %v", got)
	}
}
