package collectives

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// linearLoss is mean((x·w + b − y)²) over a [n, 3] batch.
func linearLoss(ctx *context.Context, in []*graph.Node) (*graph.Node, map[string]*graph.Node) {
	x, y := in[0], in[1]
	w := ctx.In("lin").VariableWithShape("weight", shapes.Make(dtypes.Float32, 3, 1)).ValueGraph(x.Graph())
	b := ctx.In("lin").VariableWithShape("bias", shapes.Make(dtypes.Float32, 1)).ValueGraph(x.Graph())
	e := graph.Sub(graph.Add(graph.Reshape(graph.Dot(x, w), y.Shape().Dimensions...), b), y)
	return graph.ReduceAllMean(graph.Square(e)), nil
}

// trainLinear runs steps optimizer steps (2 micro-batches each) of a global
// batch of 8 rows on world ranks, each rank averaging through reducer(rank,
// comm) (nil: the Stepper's default), and returns every rank's weights and bias.
func trainLinear(t *testing.T, world, steps, zero int, reducer func(r int, c dist.Communicator, be backends.Backend) trainer.GradientReducer) [][]float32 {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	x := make([][]float32, 8*2*steps)
	y := make([]float32, len(x))
	for i := range x {
		x[i] = []float32{float32(rng.NormFloat64()), float32(rng.NormFloat64()), float32(rng.NormFloat64())}
		y[i] = 2*x[i][0] - x[i][1] + 0.5*x[i][2] + 1
	}
	comms := localGroup(t, world)
	be := goBackend(t)
	out := make([][]float32, world)
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Go(func() {
			ctx := context.New()
			ctx.InAbsPath("/m/lin").VariableWithValue("weight", tensors.FromFlatDataAndDimensions([]float32{0, 0, 0}, 3, 1))
			ctx.InAbsPath("/m/lin").VariableWithValue("bias", []float32{0})
			cfg := trainer.Config{Scope: "/m", Loss: linearLoss, WeightDecay: 0.01, ClipNorm: 2, Accumulation: 2, Comm: c, ZeroStage: zero}
			if reducer != nil {
				cfg.Reducer = reducer(r, c, be)
			}
			s, err := trainer.NewStepper(be, ctx, cfg)
			if err != nil {
				t.Error(err)
				return
			}
			per := 8 / world
			for i := 0; i < 2*steps; i++ {
				lo := 8*i + r*per
				if _, err := s.Step(0.1, x[lo:lo+per], y[lo:lo+per]); err != nil {
					t.Errorf("rank %d, micro-step %d: %v", r, i, err)
					return
				}
			}
			w := tensors.MustCopyFlatData[float32](ctx.GetVariableByScopeAndName("/m/lin", "weight").MustValue())
			b := tensors.MustCopyFlatData[float32](ctx.GetVariableByScopeAndName("/m/lin", "bias").MustValue())
			out[r] = append(w, b...)
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// TestStepperThroughReducer: the Stepper averaging its accumulators in place
// through Reducer (on a device whose memory is host memory) ends where the
// host path does, bit for bit, with ncclAvg and with ncclSum and a scale; with
// one rank and an explicit Reducer (NCCL with one rank) it follows the
// single-process run.
func TestStepperThroughReducer(t *testing.T) {
	const steps = 4
	host := trainLinear(t, 2, steps, 0, nil)
	for _, avg := range []bool{true, false} {
		devs := make([]*hostDevice, 2)
		got := trainLinear(t, 2, steps, 0, func(r int, c dist.Communicator, be backends.Backend) trainer.GradientReducer {
			devs[r] = newHostDevice(c, avg)
			return newReducer(devs[r], be, 8) // weight (12 bytes) in place, bias alone too
		})
		for r := range got {
			if fmt.Sprint(got[r]) != fmt.Sprint(host[r]) {
				t.Errorf("avg=%v, rank %d: %v, host path %v", avg, r, got[r], host[r])
			}
			if len(devs[r].calls) != 2*steps {
				t.Errorf("avg=%v, rank %d: %d all-reduces in %d steps: %q", avg, r, len(devs[r].calls), steps, devs[r].calls)
			}
		}
	}
	one := trainLinear(t, 1, steps, 0, nil)
	oneDev := trainLinear(t, 1, steps, 0, func(_ int, _ dist.Communicator, be backends.Backend) trainer.GradientReducer {
		return newReducer(newHostDevice(dist.Self{}, true), be, DefaultBucketBytes)
	})
	for i := range one[0] {
		if d := math.Abs(float64(one[0][i] - oneDev[0][i])); d > 1e-6*max(1, math.Abs(float64(one[0][i]))) {
			t.Errorf("one rank through the reducer: %v, without %v", oneDev[0], one[0])
			break
		}
	}
	if fmt.Sprint(one[0]) == fmt.Sprint([]float32{0, 0, 0, 0}) {
		t.Error("nothing trained")
	}
}

// TestZeroStepperThroughReducer: with ZeRO-1 the Stepper also gathers the owners'
// weights through Reducer (one in-place broadcast per trained tensor from its
// owner) and ends where ZeRO-1 through the host does, bit for bit.
func TestZeroStepperThroughReducer(t *testing.T) {
	const steps = 3
	host := trainLinear(t, 2, steps, 1, nil)
	devs := make([]*hostDevice, 2)
	got := trainLinear(t, 2, steps, 1, func(r int, c dist.Communicator, be backends.Backend) trainer.GradientReducer {
		devs[r] = newHostDevice(c, true)
		return newReducer(devs[r], be, DefaultBucketBytes)
	})
	for r := range got {
		if fmt.Sprint(got[r]) != fmt.Sprint(host[r]) {
			t.Errorf("rank %d: %v, ZeRO-1 through the host %v", r, got[r], host[r])
		}
		bcast := 0
		for _, c := range devs[r].calls {
			if strings.HasPrefix(c, "broadcast ") {
				bcast++
			}
		}
		if bcast != 2*steps { // weight and bias, from their owners, every step
			t.Errorf("rank %d: %d broadcasts in %d steps: %q", r, bcast, steps, devs[r].calls)
		}
	}
	if fmt.Sprint(got[0]) != fmt.Sprint(got[1]) {
		t.Errorf("ranks differ: %v, %v", got[0], got[1])
	}
}
