//go:build cgo && linux && !noxla

package cuda

import (
	"math/rand/v2"
	"os"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native"
)

// TestPJRTInterop runs a GoMLX graph on xla:cuda, runs a CUDA kernel on its
// output buffer in place (no copy), then feeds the kernel's output back into
// a graph through a view of our device memory, and checks both steps.
func TestPJRTInterop(t *testing.T) {
	k := openOrSkip(t)
	be, err := backend.New("xla:cuda")
	if err != nil {
		if os.Getenv(requireGPUEnv) != "" {
			t.Fatalf("%s set but: %v", requireGPUEnv, err)
		}
		t.Skipf("no XLA CUDA backend: %v", err)
	}
	defer be.Finalize()
	const N, V = 16, 1000
	rng := rand.New(rand.NewPCG(9, 9))
	x := randn(rng, N*V, 2)
	tg := make([]int32, N)
	for i := range tg {
		tg[i] = int32(rng.IntN(V))
	}
	// 1. Graph output -> kernel input: logits = 3x − 1 computed by XLA.
	logits, err := graph.ExecOnce(be, func(x *graph.Node) *graph.Node {
		return graph.AddScalar(graph.MulScalar(x, 3.0), -1.0)
	}, tensors.FromFlatDataAndDimensions(x, N, V))
	if err != nil {
		t.Fatal(err)
	}
	defer logits.FinalizeAll()
	p, err := DevicePointer(be, logits)
	if err != nil {
		t.Fatal(err)
	}
	if !k.CUDA().IsDevicePtr(p) {
		t.Fatalf("PJRT buffer address %#x is not device memory of our context", uintptr(p))
	}
	dt, err := native.Upload(k.CUDA(), tg)
	if err != nil {
		t.Fatal(err)
	}
	defer k.CUDA().Free(dt)
	dout, err := k.CUDA().Alloc(4 * N)
	if err != nil {
		t.Fatal(err)
	}
	defer k.CUDA().Free(dout)
	if err := k.CUDA().Memset32(dout, poisonBits, N); err != nil {
		t.Fatal(err)
	}
	if err := k.TokenLogProbs(N, V, p, dt, dout, 0); err != nil {
		t.Fatal(err)
	}
	if err := k.Sync(); err != nil {
		t.Fatal(err)
	}
	got, err := native.Download[float32](k.CUDA(), dout, N)
	if err != nil {
		t.Fatal(err)
	}
	want3 := make([]float32, N*V)
	for i, v := range x {
		want3[i] = 3*v - 1
	}
	want := make([]float32, N)
	if err := TokenLogProbsCPU(N, V, want3, tg, want, nil); err != nil {
		t.Fatal(err)
	}
	checkClose(t, "log-probs of an XLA output", got, want)

	// 2. Kernel output -> graph input: a view of dout, summed by XLA.
	view, err := ViewTensor(be, dout, dtypes.Float32, N)
	if err != nil {
		t.Fatal(err)
	}
	defer view.FinalizeAll()
	sum, err := graph.ExecOnce(be, func(v *graph.Node) *graph.Node { return graph.ReduceAllSum(v) }, view)
	if err != nil {
		t.Fatal(err)
	}
	var ws float64
	for _, v := range want {
		ws += float64(v)
	}
	gs := float64(tensors.ToScalar[float32](sum))
	checkScalar(t, "XLA sum over a view of kernel output", gs, ws)
}
