package trainer

import (
	stdctx "context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/dist"
)

// BenchmarkZeroStep times one update step (accumulate, all-reduce, AdamW, and with ZeRO-1 the
// owners' gather) on 2 in-process ranks of a stories260K-sized parameter set (3 models' worth,
// 12 tensors of 64K float32) with a trivial loss, so that the step is the optimiser's and the
// collectives' cost: stage 1 against stage 0 isolates the gather.
//
//	go test -tags noxla -run - -bench ZeroStep -cpuprofile cpu.out ./train/trainer/
func BenchmarkZeroStep(b *testing.B) {
	for _, zero := range []int{0, 1} {
		b.Run(fmt.Sprintf("stage%d", zero), func(b *testing.B) {
			comms, err := dist.NewLocalGroup(stdctx.Background(), 2, dist.Options{Timeout: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			const count, size = 12, 1 << 16
			steppers := make([]*Stepper, 2)
			for r := range steppers {
				ctx := context.New()
				for i := range count {
					ctx.InAbsPath("/m/p").VariableWithValue(fmt.Sprintf("w%02d", i), tensors.FromShape(shapes.Make(dtypes.Float32, size)))
				}
				steppers[r], err = NewStepper(testBackend(b), ctx, Config{Scope: "/m", Comm: comms[r], ZeroStage: zero,
					Loss: func(ctx *context.Context, in []*graph.Node) (*graph.Node, map[string]*graph.Node) {
						var loss *graph.Node
						for i := range count {
							w := ctx.In("p").VariableWithShape(fmt.Sprintf("w%02d", i), shapes.Make(dtypes.Float32, size)).ValueGraph(in[0].Graph())
							l := graph.ReduceAllMean(graph.Square(graph.Sub(w, in[0])))
							if loss == nil {
								loss = l
							} else {
								loss = graph.Add(loss, l)
							}
						}
						return loss, nil
					}})
				if err != nil {
					b.Fatal(err)
				}
			}
			flat := make([]float32, size)
			for i := range flat {
				flat[i] = float32(i%7) * 0.1
			}
			xs := []*tensors.Tensor{tensors.FromFlatDataAndDimensions(flat, size), tensors.FromFlatDataAndDimensions(flat, size)} // one per rank's backend
			step := func(n int) {
				var wg sync.WaitGroup
				for r, s := range steppers {
					wg.Go(func() {
						for range n {
							if _, err := s.Step(1e-3, xs[r]); err != nil {
								b.Errorf("rank %d: %v", r, err)
								return
							}
						}
					})
				}
				wg.Wait()
			}
			step(1) // compiles
			comm0 := steppers[0].CollectiveTime()
			b.ResetTimer()
			step(b.N)
			b.StopTimer()
			b.ReportMetric(float64(steppers[0].CollectiveTime()-comm0)/float64(b.N)/1e6, "rank0-collective-ms/op")
			for _, c := range comms {
				c.Close()
			}
		})
	}
}
