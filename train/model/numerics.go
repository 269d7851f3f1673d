package model

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// RandomLogits builds cfg with RandomInto(seed) in dtype dt on be and
// returns the logits [b, t, V] of random token ids (seeded by seed too), for
// numerics checks across dtypes and backends (saferlhf bench --numerics).
func RandomLogits(be backends.Backend, cfg *Config, seed uint64, dt dtypes.DType, b, t int) (logits []float32, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	ctx := context.New()
	SetComputeDType(ctx, dt)
	m := ctx.In("m")
	if err := RandomInto(m, cfg, seed, Storage{DType: dt, Backend: be}); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(seed, 0x1d5))
	ids := make([]int32, b*t)
	mask := make([]float32, b*t)
	for i := range ids {
		ids[i] = int32(rng.IntN(cfg.VocabSize))
		mask[i] = 1
	}
	out, err := context.ExecOnce(be, m, func(ctx *context.Context, ids, mask *G.Node) *G.Node {
		return Logits(ctx, cfg, ids, mask)
	}, tensors.FromFlatDataAndDimensions(ids, b, t), tensors.FromFlatDataAndDimensions(mask, b, t))
	if err != nil {
		return nil, err
	}
	return tensors.CopyFlatData[float32](out)
}

// LogitsDiff compares logits got against want (both [rows, V]): the relative
// L2 error, the largest absolute difference, and the fraction of rows whose
// arg-max agrees.
type LogitsDiff struct {
	RelL2, MaxAbs, Top1 float64
}

// CompareLogits returns the LogitsDiff of got against want with vocabulary v.
func CompareLogits(got, want []float32, v int) LogitsDiff {
	var d LogitsDiff
	num, den := 0.0, 1e-30
	agree, rows := 0, len(want)/v
	for r := 0; r < rows; r++ {
		ga, wa := 0, 0
		for i := r * v; i < (r+1)*v; i++ {
			e := float64(got[i] - want[i])
			num += e * e
			den += float64(want[i]) * float64(want[i])
			d.MaxAbs = math.Max(d.MaxAbs, math.Abs(e))
			if got[i] > got[r*v+ga] {
				ga = i - r*v
			}
			if want[i] > want[r*v+wa] {
				wa = i - r*v
			}
		}
		if ga == wa {
			agree++
		}
	}
	d.RelL2 = math.Sqrt(num / den)
	d.Top1 = float64(agree) / float64(max(rows, 1))
	return d
}
