package kernels

import (
	"fmt"
	"math"
)

// MaxLogLambda is the largest log λ the multiplier ever holds (λ ≈ 2.7e43), even
// when LambdaMax is unset: the reference's SGD step lr·(J_c−d)·λ is proportional
// to λ and overflows to Inf within a few dozen steps without λ_max (spec §1.7).
const MaxLogLambda = 100.0

// DefaultCostWindow is the reference's episode_cost_window_size.
const DefaultCostWindow = 128

// MaxCostWindow is the largest accepted episode-cost window.
const MaxCostWindow = 1 << 20

// LagrangeMethod selects how the multiplier is updated.
type LagrangeMethod string

const (
	// LagrangeSGD is the reference: one SGD step on log λ per rl_step (spec §1.7).
	LagrangeSGD LagrangeMethod = "sgd"
	// LagrangePID is the PID Lagrangian of Stooke, Achiam & Abbeel (ICML 2020, Algorithm 2).
	LagrangePID LagrangeMethod = "pid"
)

// LagrangeConfig configures a Lagrange multiplier. Zero values take the
// reference defaults where noted.
type LagrangeConfig struct {
	Method LagrangeMethod // "" = LagrangeSGD
	// LambdaInit is the initial λ (> 0 for SGD; ≥ 0 for PID).
	LambdaInit float64
	// LambdaLR is the SGD learning rate on log λ (reference lambda_lr).
	LambdaLR float64
	// LambdaMax caps λ; 0 means unset (λ is then capped at exp(MaxLogLambda)).
	LambdaMax float64
	// DelaySteps: no update while globalStep < DelaySteps (lambda_update_delay_steps).
	DelaySteps int
	// WindowSize is the episode-cost window length (0 = DefaultCostWindow).
	WindowSize int
	// Threshold is the cost limit d.
	Threshold float64
	// KP, KI, KD are the PID gains (PID only).
	KP, KI, KD float64
	// DerivEMA is the smoothing α ∈ [0,1) of the cost EMA whose rise feeds the D term (PID only; 0 = no smoothing).
	DerivEMA float64
}

// LagrangeState is the whole mutable state of a Lagrange multiplier, JSON-able,
// for exact checkpoint resume (all values are finite).
type LagrangeState struct {
	LogLambda float64   `json:"log_lambda"`
	Window    []float64 `json:"window"` // oldest first
	// PID state.
	Lambda    float64 `json:"lambda"`
	Integral  float64 `json:"pid_integral"`
	CostEMA   float64 `json:"pid_cost_ema"`
	HasPrev   bool    `json:"pid_has_prev"`
	PrevEMA   float64 `json:"pid_prev_ema"`
	StepCount int64   `json:"updates"`
}

// LagrangeStep reports one Update.
type LagrangeStep struct {
	// Applied is false when the window is empty or globalStep < DelaySteps.
	Applied bool
	// EpisodeCost is J_c, the window mean (0 if the window is empty).
	EpisodeCost float64
	// LogLambdaBefore, LogLambdaAfter and Lambda (after) describe the multiplier.
	LogLambdaBefore, LogLambdaAfter, Lambda float64
}

// Lagrange is the Safe RLHF Lagrange multiplier λ with its episode-cost window.
// It is not safe for concurrent use.
type Lagrange struct {
	cfg    LagrangeConfig
	window []float64 // ring buffer
	head   int       // index of the oldest element when full
	n      int
	st     LagrangeState
}

// NewLagrange validates cfg and returns a multiplier at λ = LambdaInit.
func NewLagrange(cfg LagrangeConfig) (*Lagrange, error) {
	if cfg.Method == "" {
		cfg.Method = LagrangeSGD
	}
	if cfg.WindowSize == 0 {
		cfg.WindowSize = DefaultCostWindow
	}
	for _, kv := range []struct {
		n string
		v float64
	}{{"LambdaInit", cfg.LambdaInit}, {"LambdaLR", cfg.LambdaLR}, {"LambdaMax", cfg.LambdaMax}, {"Threshold", cfg.Threshold},
		{"KP", cfg.KP}, {"KI", cfg.KI}, {"KD", cfg.KD}, {"DerivEMA", cfg.DerivEMA}} {
		if !finite(kv.v) {
			return nil, fmt.Errorf("kernels.NewLagrange: %s is %v: %w", kv.n, kv.v, ErrNonFinite)
		}
	}
	switch {
	case cfg.Method != LagrangeSGD && cfg.Method != LagrangePID:
		return nil, fmt.Errorf("kernels.NewLagrange: method %q: want %q or %q", cfg.Method, LagrangeSGD, LagrangePID)
	case cfg.WindowSize < 0 || cfg.WindowSize > MaxCostWindow:
		return nil, fmt.Errorf("kernels.NewLagrange: window size %d not in [0, %d]", cfg.WindowSize, MaxCostWindow)
	case cfg.LambdaMax < 0:
		return nil, fmt.Errorf("kernels.NewLagrange: lambda_max %v < 0", cfg.LambdaMax)
	case cfg.Method == LagrangeSGD && cfg.LambdaInit <= 0:
		return nil, fmt.Errorf("kernels.NewLagrange: lambda_init %v must be > 0 (log λ is the parameter)", cfg.LambdaInit)
	case cfg.LambdaInit < 0:
		return nil, fmt.Errorf("kernels.NewLagrange: lambda_init %v < 0", cfg.LambdaInit)
	case cfg.KP < 0 || cfg.KI < 0 || cfg.KD < 0 || cfg.DerivEMA < 0 || cfg.DerivEMA >= 1:
		return nil, fmt.Errorf("kernels.NewLagrange: PID gains must be ≥ 0 and DerivEMA in [0,1)")
	}
	l := &Lagrange{cfg: cfg, window: make([]float64, cfg.WindowSize)}
	l.st.Lambda = cfg.LambdaInit
	l.st.LogLambda = math.Min(math.Log(cfg.LambdaInit), MaxLogLambda)
	if cfg.LambdaInit == 0 {
		l.st.LogLambda = -MaxLogLambda // PID only: λ = 0 is reported through Lambda()
	}
	return l, nil
}

// Config returns the configuration (with defaults filled in).
func (l *Lagrange) Config() LagrangeConfig { return l.cfg }

// Lambda returns the current λ.
func (l *Lagrange) Lambda() float64 {
	if l.cfg.Method == LagrangePID {
		return l.st.Lambda
	}
	return math.Exp(l.st.LogLambda)
}

// LogLambda returns the current log λ (for PID with λ = 0: −MaxLogLambda).
func (l *Lagrange) LogLambda() float64 { return l.st.LogLambda }

// AddEpisodeCosts appends the end costs of a rollout batch to the window,
// dropping the oldest beyond WindowSize (the reference's deque.extend).
func (l *Lagrange) AddEpisodeCosts(costs []float64) error {
	for i, c := range costs {
		if !finite(c) {
			return fmt.Errorf("kernels.Lagrange.AddEpisodeCosts: cost %d is %v: %w", i, c, ErrNonFinite)
		}
	}
	W := len(l.window)
	if W == 0 {
		return nil
	}
	for _, c := range costs {
		if l.n < W {
			l.window[(l.head+l.n)%W] = c
			l.n++
		} else {
			l.window[l.head] = c
			l.head = (l.head + 1) % W
		}
	}
	return nil
}

// EpisodeCost returns J_c, the mean of the window (0 when empty).
func (l *Lagrange) EpisodeCost() float64 {
	if l.n == 0 {
		return 0
	}
	s := 0.0
	for i := range l.n {
		s += l.window[(l.head+i)%len(l.window)]
	}
	return s / float64(l.n)
}

// Update performs the multiplier update at the start of an rl_step (spec §1.7):
// if globalStep ≥ DelaySteps and the window is not empty, SGD does
// log λ ← min(log λ + lr·(J_c − d)·λ, log λ_max, MaxLogLambda), and PID does
// e = J_c − d, I ← clip(I + e, 0, λ_max/K_I), D = max(0, ema_t − ema_{t−1}),
// λ ← clip(K_P·e + K_I·I + K_D·D, 0, λ_max). With an empty window (the
// reference would take the mean of nothing: NaN) nothing changes.
func (l *Lagrange) Update(globalStep int) LagrangeStep {
	return l.UpdateWith(globalStep, l.EpisodeCost(), l.n > 0)
}

// WindowLen is the number of episode costs in the window.
func (l *Lagrange) WindowLen() int { return l.n }

// UpdateWith is Update with J_c given: the reference's data-parallel update,
// where J_c is the mean over ranks of each rank's window mean (dist.reduce AVG,
// spec §1.7) and every rank then applies the same step. have is false when no
// window holds a cost yet (nothing changes then).
func (l *Lagrange) UpdateWith(globalStep int, jc float64, have bool) LagrangeStep {
	s := LagrangeStep{EpisodeCost: jc, LogLambdaBefore: l.st.LogLambda}
	if globalStep >= l.cfg.DelaySteps && have {
		s.Applied = true
		l.st.StepCount++
		if l.cfg.Method == LagrangeSGD {
			ll := l.st.LogLambda
			// The reference's loss is −(J_c − d)·exp(log λ); its gradient step is
			// the Python expression log λ − lr·(−(J_c − d)·λ).
			ll = ll - l.cfg.LambdaLR*(-(jc-l.cfg.Threshold)*math.Exp(ll))
			if l.cfg.LambdaMax > 0 {
				ll = math.Min(ll, math.Log(l.cfg.LambdaMax))
			}
			if ll > MaxLogLambda || math.IsNaN(ll) {
				ll = MaxLogLambda
			}
			if ll < -math.MaxFloat64 {
				ll = -math.MaxFloat64
			}
			l.st.LogLambda = ll
		} else {
			l.pidStep(jc)
		}
	}
	s.LogLambdaAfter = l.st.LogLambda
	s.Lambda = l.Lambda()
	return s
}

func (l *Lagrange) pidStep(jc float64) {
	c := l.cfg
	lmax := c.LambdaMax
	if lmax == 0 {
		lmax = math.Exp(MaxLogLambda)
	}
	e := jc - c.Threshold
	l.st.Integral = math.Max(0, l.st.Integral+e)
	if c.KI > 0 { // anti-windup: the integral alone never asks for more than λ_max
		l.st.Integral = math.Min(l.st.Integral, lmax/c.KI)
	}
	ema := jc
	if l.st.HasPrev {
		ema = c.DerivEMA*l.st.CostEMA + (1-c.DerivEMA)*jc
	}
	d := 0.0
	if l.st.HasPrev {
		d = math.Max(0, ema-l.st.CostEMA)
	}
	l.st.PrevEMA, l.st.CostEMA, l.st.HasPrev = l.st.CostEMA, ema, true
	lam := math.Min(math.Max(0, c.KP*e+c.KI*l.st.Integral+c.KD*d), lmax)
	l.st.Lambda = lam
	if lam > 0 {
		l.st.LogLambda = math.Min(math.Log(lam), MaxLogLambda)
	} else {
		l.st.LogLambda = -MaxLogLambda
	}
}

// State returns a copy of the complete state (window included) for a checkpoint.
func (l *Lagrange) State() LagrangeState {
	s := l.st
	s.Window = make([]float64, l.n)
	for i := range l.n {
		s.Window[i] = l.window[(l.head+i)%len(l.window)]
	}
	return s
}

// SetState restores a state returned by State (for exact resume).
func (l *Lagrange) SetState(s LagrangeState) error {
	for _, v := range append([]float64{s.LogLambda, s.Lambda, s.Integral, s.CostEMA, s.PrevEMA}, s.Window...) {
		if !finite(v) {
			return fmt.Errorf("kernels.Lagrange.SetState: non-finite value %v: %w", v, ErrNonFinite)
		}
	}
	if s.LogLambda > MaxLogLambda || s.Lambda < 0 {
		return fmt.Errorf("kernels.Lagrange.SetState: log λ %v > %v or λ %v < 0", s.LogLambda, MaxLogLambda, s.Lambda)
	}
	w := s.Window
	l.st = s
	l.st.Window = nil
	l.head, l.n = 0, 0
	clear(l.window)
	if len(w) > len(l.window) {
		w = w[len(w)-len(l.window):]
	}
	return l.AddEpisodeCosts(w)
}
