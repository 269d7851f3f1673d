package optim

import (
	"fmt"
	"math"
)

// Schedule kinds, named as HF transformers' get_scheduler names them.
const (
	Constant           = "constant"
	ConstantWithWarmup = "constant_with_warmup"
	Linear             = "linear"
	Cosine             = "cosine"
)

// Schedule is a learning-rate schedule evaluated on the host, as HF
// get_scheduler builds it (spec §1.10). LR(step) is the rate used by the
// update that follows step completed updates (0 for the first), which is how a
// LambdaLR stepped after each optimizer.step() behaves: with warmup the first
// update has rate 0.
type Schedule struct {
	Kind   string
	Base   float64
	Warmup int // warmup steps
	Total  int // total optimizer steps (linear and cosine decay to 0 at Total)
}

// WarmupSteps returns int(ratio·total), the reference's warmup length.
func WarmupSteps(ratio float64, total int) int { return int(ratio * float64(total)) }

// NewSchedule validates and returns a schedule. "constant" ignores warmup, as
// HF's does.
func NewSchedule(kind string, base float64, warmup, total int) (Schedule, error) {
	s := Schedule{Kind: kind, Base: base, Warmup: warmup, Total: total}
	switch kind {
	case Constant, ConstantWithWarmup, Linear, Cosine:
	default:
		return s, fmt.Errorf("optim: unknown lr scheduler %q (want %s, %s, %s or %s)", kind, Constant, ConstantWithWarmup, Linear, Cosine)
	}
	if base < 0 || math.IsNaN(base) || math.IsInf(base, 0) {
		return s, fmt.Errorf("optim: learning rate must be finite and >= 0, got %g", base)
	}
	if warmup < 0 || total < 0 {
		return s, fmt.Errorf("optim: warmup %d and total %d steps must be >= 0", warmup, total)
	}
	return s, nil
}

// LR returns the learning rate for the update after step completed updates.
func (s Schedule) LR(step int) float64 { return s.Base * s.Factor(step) }

// Factor returns the multiplier of Base at step (HF's lr_lambda).
func (s Schedule) Factor(step int) float64 {
	if s.Kind == Constant {
		return 1
	}
	if step < s.Warmup {
		return float64(step) / float64(max(1, s.Warmup))
	}
	switch s.Kind {
	case Linear:
		return math.Max(0, float64(s.Total-step)/float64(max(1, s.Total-s.Warmup)))
	case Cosine: // get_cosine_schedule_with_warmup, num_cycles = 0.5
		progress := float64(step-s.Warmup) / float64(max(1, s.Total-s.Warmup))
		return math.Max(0, 0.5*(1+math.Cos(math.Pi*0.5*2*progress)))
	}
	return 1
}
