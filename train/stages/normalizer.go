package stages

import (
	stdctx "context"
	"fmt"
	"math"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// The score normaliser tracked while a reward or cost model trains (spec §3): the reference's
// scripts train with normalizer_type ExponentialMovingAverage, momentum 0.9, and
// normalize_score_during_training False, so the statistics are tracked (on every training
// forward pass, over the 2B end scores) and written to config.json but never applied in training.
const (
	normScope          = "/score_normalizer"
	normalizerType     = "ExponentialMovingAverage"
	normalizerMomentum = 0.9
)

// initNormalizer creates the normaliser's statistics (mean 0, var 1, as the reference's
// Normalizer) as non-trainable float64 variables of ctx, so checkpoints carry them and a resumed
// run continues them exactly.
func initNormalizer(ctx *context.Context) {
	nc := ctx.InAbsPath(normScope).Checked(false)
	nc.VariableWithValue("mean", float64(0)).SetTrainable(false)
	nc.VariableWithValue("var", float64(1)).SetTrainable(false)
}

// trackNormalizer adds the EMA update of the normaliser with the batch's end scores to a
// training graph: μ ← p·μ + (1−p)·mean(x), σ² ← p·σ² + (1−p)·var(x) with the unbiased batch
// variance (kernels.UpdateNormalizer's ExponentialMovingAverage, in the graph).
func trackNormalizer(ctx *context.Context, ends *graph.Node) {
	g := ends.Graph()
	nc := ctx.InAbsPath(normScope)
	mv, vv := nc.GetVariable("mean"), nc.GetVariable("var")
	if mv == nil || vv == nil {
		panic(fmt.Errorf("stages: score normaliser variables missing (initNormalizer not called)"))
	}
	x := graph.ConvertDType(ends, dtypes.Float64)
	n := x.Shape().Size()
	bm := graph.ReduceAllMean(x)
	bv := graph.ZerosLike(bm)
	if n > 1 {
		bv = graph.DivScalar(graph.ReduceAllSum(graph.Square(graph.Sub(x, bm))), float64(n-1))
	}
	p := normalizerMomentum
	mv.SetValueGraph(graph.Add(graph.MulScalar(mv.ValueGraph(g), p), graph.MulScalar(bm, 1-p)))
	vv.SetValueGraph(graph.Add(graph.MulScalar(vv.ValueGraph(g), p), graph.MulScalar(bv, 1-p)))
}

// scoreConfig returns the score model's config.json normaliser keys from ctx's statistics.
func scoreConfig(ctx *context.Context, stage Stage) (model.ScoreConfig, error) {
	sc := model.ScoreConfig{Type: "reward", NormalizerType: normalizerType, Momentum: normalizerMomentum}
	if stage == CM {
		sc.Type = "cost"
	}
	nc := ctx.InAbsPath(normScope)
	for name, dst := range map[string]*[]float64{"mean": &sc.Mean, "var": &sc.Var} {
		v := nc.GetVariable(name)
		if v == nil {
			return sc, fmt.Errorf("stages: score normaliser %s missing", name)
		}
		t, err := v.Value()
		if err != nil {
			return sc, fmt.Errorf("stages: score normaliser %s: %w", name, err)
		}
		*dst = []float64{t.Value().(float64)}
	}
	return sc, nil
}

// rankedNormalizer tracks the score normaliser in a data-parallel run: as the reference updates
// it on all-gathered end scores (spec §3), after every training micro-step the ranks' batch
// statistics (count, mean and mean square of the end scores, from the loss metrics) are
// gathered and combined into the global batch's mean and unbiased variance, and every rank
// applies the same EMA update.
type rankedNormalizer struct {
	trainer.Steps
	ctx *context.Context
}

// Step implements trainer.Steps.
func (s rankedNormalizer) Step(lr float64, inputs ...any) (trainer.Result, error) {
	res, err := s.Steps.Step(lr, inputs...)
	if err != nil {
		return res, err
	}
	ids, ok := inputs[0].(*tensors.Tensor)
	if !ok || ids.Rank() != 2 {
		return res, fmt.Errorf("stages: score normaliser: batch ids %T, want a [2B, T] tensor", inputs[0])
	}
	n := float64(ids.Shape().Dimensions[0])
	all, err := dist.AllGatherFloat64(stdctx.Background(), s.Comm(), []float64{n, res.Metrics["score_mean"], res.Metrics["score_sq"]})
	if err != nil {
		return res, fmt.Errorf("stages: score normaliser across ranks: %w", err)
	}
	var total, sum, sumSq float64
	for r, a := range all {
		if len(a) != 3 {
			return res, fmt.Errorf("stages: score normaliser: rank %d sent a malformed record", r)
		}
		total += a[0]
		sum += a[0] * a[1]
		sumSq += a[0] * a[2]
	}
	mean, bv := sum/total, 0.0
	if total > 1 {
		bv = math.Max(0, sumSq-total*mean*mean) / (total - 1)
	}
	return res, updateNormalizer(s.ctx, mean, bv)
}

// updateNormalizer applies the EMA update μ ← p·μ + (1−p)·mean, σ² ← p·σ² + (1−p)·var to the
// normaliser variables of ctx.
func updateNormalizer(ctx *context.Context, mean, bv float64) error {
	nc := ctx.InAbsPath(normScope)
	p := normalizerMomentum
	for _, u := range []struct {
		name string
		x    float64
	}{{"mean", mean}, {"var", bv}} {
		v := nc.GetVariable(u.name)
		if v == nil {
			return fmt.Errorf("stages: score normaliser %s missing (initNormalizer not called)", u.name)
		}
		t, err := v.Value()
		if err != nil {
			return fmt.Errorf("stages: score normaliser: %w", err)
		}
		if err := v.SetValue(tensors.FromScalar(p*t.Value().(float64) + (1-p)*u.x)); err != nil {
			return fmt.Errorf("stages: score normaliser: %w", err)
		}
	}
	return nil
}
