package ppo

import "math"

// LambdaState is the Lagrange multiplier's full state, saved in checkpoints for exact resume.
type LambdaState struct {
	LogLambda float64   `json:"log_lambda"`
	Window    []float64 `json:"episode_cost_window"` // oldest first, at most EpisodeCostWindowSize
	Integral  float64   `json:"pid_integral"`
	PrevError float64   `json:"pid_prev_error"`
	HasPrev   bool      `json:"pid_has_prev"`
}

// lagrange is the multiplier of spec §1.7 (log-λ SGD with window, delay and λ_max) or its PID
// variant (Stooke et al. 2020: λ = max(0, Kp·e + Ki·Σe + Kd·Δe) with e = J_c − d, here applied
// to λ directly and bounded by λ_max).
type lagrange struct {
	cfg   *Config
	State LambdaState
}

func newLagrange(cfg *Config) *lagrange {
	l := &lagrange{cfg: cfg}
	l.State.LogLambda = math.Log(cfg.LambdaInit)
	if cfg.Algorithm == PPOLagPID {
		// PID starts from λ_init through the integral term.
		if cfg.PIDKi > 0 {
			l.State.Integral = cfg.LambdaInit / cfg.PIDKi
		}
	}
	return l
}

// Lambda is exp(log λ).
func (l *lagrange) Lambda() float64 { return math.Exp(l.State.LogLambda) }

// AddCosts appends a rollout's end costs to the episode-cost window (post_rollout's deque.extend).
func (l *lagrange) AddCosts(cost []float32) {
	for _, c := range cost {
		l.State.Window = append(l.State.Window, float64(c))
	}
	if n := len(l.State.Window) - l.cfg.EpisodeCostWindowSize; n > 0 {
		l.State.Window = append(l.State.Window[:0], l.State.Window[n:]...)
	}
}

// Jc is the mean of the window.
func (l *lagrange) Jc() float64 {
	if len(l.State.Window) == 0 {
		return 0
	}
	s := 0.0
	for _, c := range l.State.Window {
		s += c
	}
	return s / float64(len(l.State.Window))
}

// Update runs the λ update at the start of an rl_step (spec §1.7). Only the Lagrangian variants move λ.
func (l *lagrange) Update(globalStep int) {
	switch l.cfg.Algorithm {
	case PPOLag:
		if globalStep < l.cfg.LambdaUpdateDelaySteps {
			return
		}
		gap := l.Jc() - l.cfg.Threshold
		// SGD on ℒ = −(J_c − d)·exp(log λ): ∂ℒ/∂logλ = −(J_c − d)·λ.
		l.State.LogLambda += l.cfg.LambdaLR * gap * l.Lambda()
		if l.cfg.LambdaMax > 0 {
			l.State.LogLambda = math.Min(l.State.LogLambda, math.Log(l.cfg.LambdaMax))
		}
	case PPOLagPID:
		if globalStep < l.cfg.LambdaUpdateDelaySteps {
			return
		}
		e := l.Jc() - l.cfg.Threshold
		l.State.Integral = math.Max(0, l.State.Integral+e)
		d := 0.0
		if l.State.HasPrev {
			d = e - l.State.PrevError
		}
		l.State.PrevError, l.State.HasPrev = e, true
		lam := l.cfg.PIDKp*e + l.cfg.PIDKi*l.State.Integral + l.cfg.PIDKd*d
		lam = math.Max(lam, 1e-8) // keep log λ finite; λ ≥ 0 in the PID formulation
		if l.cfg.LambdaMax > 0 {
			lam = math.Min(lam, l.cfg.LambdaMax)
		}
		l.State.LogLambda = math.Log(lam)
	}
}
