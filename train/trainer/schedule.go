package trainer

import (
	"fmt"
	"math"
)

// NewSchedule returns HF get_scheduler's schedule ("cosine" or "constant", with
// linear warmup over int(warmupRatio·total) steps; spec §1.10) for base rate lr.
// The step argument counts the optimizer updates already made, as HF's LambdaLR does.
func NewSchedule(kind string, lr, warmupRatio float64, total int) (Schedule, error) {
	if lr <= 0 || math.IsNaN(lr) || math.IsInf(lr, 0) {
		return nil, fmt.Errorf("learning rate %g must be > 0", lr)
	}
	if warmupRatio < 0 || warmupRatio >= 1 {
		return nil, fmt.Errorf("warmup ratio %g must lie in [0, 1)", warmupRatio)
	}
	warm := int(warmupRatio * float64(total))
	warmup := func(step int) (float64, bool) {
		if step < warm {
			return lr * float64(step) / float64(max(1, warm)), true
		}
		return 0, false
	}
	switch kind {
	case "constant":
		return func(step int) float64 {
			if v, ok := warmup(step); ok {
				return v
			}
			return lr
		}, nil
	case "cosine":
		return func(step int) float64 {
			if v, ok := warmup(step); ok {
				return v
			}
			p := float64(step-warm) / float64(max(1, total-warm))
			return lr * math.Max(0, 0.5*(1+math.Cos(math.Pi*p)))
		}, nil
	}
	return nil, fmt.Errorf("unknown lr schedule %q (want cosine or constant)", kind)
}
