package stages

import (
	"math"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/internal/backend"
)

// TestNegLogSigmoidGradient: −log σ(x) and its derivative −σ(−x), finite for
// large |x|, and −½ at exactly 0 (the old max/abs form gave −1 there, which made
// DPO's first step, where every margin is 0, depend on how the batch was split).
func TestNegLogSigmoidGradient(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	xs := []float32{-200, -30, -1, -1e-7, 0, 1e-7, 1, 30, 200}
	exec, err := graph.NewExec(be, func(x *graph.Node) []*graph.Node {
		y := negLogSigmoid(x)
		return []*graph.Node{y, graph.Gradient(graph.ReduceAllSum(y), x)[0]}
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Exec(xs)
	if err != nil {
		t.Fatal(err)
	}
	ys, gs := tensors.MustCopyFlatData[float32](out[0]), tensors.MustCopyFlatData[float32](out[1])
	for i, x := range xs {
		xf := float64(x)
		wantY := math.Max(-xf, 0) + math.Log1p(math.Exp(-math.Abs(xf)))
		wantG := -1 / (1 + math.Exp(xf)) // −σ(−x)
		if math.Abs(float64(ys[i])-wantY) > 1e-6*max(1, wantY) || math.Abs(float64(gs[i])-wantG) > 1e-6 {
			t.Errorf("x=%g: value %g, derivative %g; want %g, %g", x, ys[i], gs[i], wantY, wantG)
		}
	}
}
