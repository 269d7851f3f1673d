package llama

import (
	"fmt"
	"math"
	"sort"

	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/optim"
)

// AdamW is train/optim's AdamW on native parameters: global-norm clipping
// (min(1, clip/(‖g‖+1e-6))), decoupled weight decay skipped by NoDecay,
// float32 moments, bias corrections in float64. Gradients of several
// micro-batches accumulate in one Grads (the backward adds); Apply divides by
// the accumulation count.
type AdamW struct {
	cfg  optim.AdamWConfig
	M, U map[string][]float32
	// Step counts the updates made.
	Step int64
	// Owns, when set (ZeRO-1, see train/dist), reports whether this rank updates
	// a parameter: Apply still clips by the norm of every gradient but updates,
	// and keeps moments for, owned parameters only; LoadState reads only theirs.
	Owns func(name string) bool
}

// StateElements counts the moment elements (float32) o holds.
func (o *AdamW) StateElements() int64 {
	var n int64
	for name := range o.M {
		n += int64(len(o.M[name]) + len(o.U[name]))
	}
	return n
}

// NewAdamW validates cfg and fills in train/optim's defaults.
func NewAdamW(cfg optim.AdamWConfig) (*AdamW, error) {
	o, err := optim.NewAdamW(cfg)
	if err != nil {
		return nil, err
	}
	return &AdamW{cfg: o.Config(), M: map[string][]float32{}, U: map[string][]float32{}}, nil
}

// Config returns the configuration with defaults filled in.
func (o *AdamW) Config() optim.AdamWConfig { return o.cfg }

// Apply makes one update of m's parameters from the gradients g summed over
// cfg.Accumulation micro-batches, at learning rate lr, then zeroes g. It
// returns the global gradient norm before clipping.
func (o *AdamW) Apply(m *Model, g Grads, lr float64) (float64, error) {
	names := make([]string, 0, len(g))
	for n := range g {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return 0, fmt.Errorf("llama: adamw: no gradients")
	}
	inv := float32(1 / float64(o.cfg.Accumulation))
	sum := 0.0
	for _, n := range names {
		gr := g[n]
		if len(gr) != len(m.Params[n]) {
			return 0, fmt.Errorf("llama: adamw: gradient %q has %d values for %d parameters", n, len(gr), len(m.Params[n]))
		}
		if inv != 1 {
			for i := range gr {
				gr[i] *= inv
			}
		}
		sum += engine.SumSquares(gr)
	}
	norm := float32(math.Sqrt(sum))
	if math.IsNaN(float64(norm)) || math.IsInf(float64(norm), 0) {
		g.Zero()
		return float64(norm), fmt.Errorf("llama: adamw: non-finite gradient norm %g (step skipped)", norm)
	}
	coef := float32(1)
	if o.cfg.ClipNorm > 0 {
		coef = min(coef, float32(o.cfg.ClipNorm)/(norm+1e-6))
	}
	o.Step++
	step := float64(float32(o.Step))
	bc1 := 1 - math.Pow(o.cfg.Beta1, step)
	bc2 := 1 - math.Pow(o.cfg.Beta2, step)
	lr32 := float32(lr)
	stepSize := lr32 * float32(1/bc1)
	invBC2 := float32(1 / bc2)
	decay := lr32 * float32(o.cfg.WeightDecay)
	for _, n := range names {
		if o.Owns != nil && !o.Owns(n) {
			continue
		}
		p := m.Params[n]
		if o.M[n] == nil {
			o.M[n], o.U[n] = make([]float32, len(p)), make([]float32, len(p))
		}
		dec := decay
		if o.cfg.NoDecay(n) {
			dec = 0
		}
		if err := engine.AdamWStep(p, g[n], o.M[n], o.U[n], coef, float32(o.cfg.Beta1), float32(o.cfg.Beta2), stepSize, invBC2, float32(o.cfg.Epsilon), dec); err != nil {
			return 0, fmt.Errorf("llama: adamw %s: %w", n, err)
		}
	}
	g.Zero()
	return float64(norm), nil
}
