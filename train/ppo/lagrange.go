package ppo

import (
	"fmt"

	"github.com/saferlhf/saferlhf/kernels"
)

// LambdaState is the Lagrange multiplier's full state (log λ, PID terms, episode-cost window),
// saved in checkpoints for exact resume.
type LambdaState = kernels.LagrangeState

// lagrange adapts kernels.Lagrange (spec §1.7: log-λ SGD with window, delay and λ_max, or the PID
// variant) to the loop: only the Lagrangian algorithms move λ; the others only log the window.
type lagrange struct {
	cfg *Config
	k   *kernels.Lagrange
}

func newLagrange(cfg *Config) (*lagrange, error) {
	kc := kernels.LagrangeConfig{Method: kernels.LagrangeSGD, LambdaInit: cfg.LambdaInit, LambdaLR: cfg.LambdaLR,
		LambdaMax: max(cfg.LambdaMax, 0), DelaySteps: cfg.LambdaUpdateDelaySteps, WindowSize: cfg.EpisodeCostWindowSize,
		Threshold: cfg.Threshold, KP: cfg.PIDKp, KI: cfg.PIDKi, KD: cfg.PIDKd}
	if cfg.Algorithm == PPOLagPID {
		kc.Method = kernels.LagrangePID
	}
	k, err := kernels.NewLagrange(kc)
	if err != nil {
		return nil, fmt.Errorf("ppo: %w", err)
	}
	return &lagrange{cfg: cfg, k: k}, nil
}

// Lambda is the current λ (λ₀ for the fixed penalty; 0 for plain PPO, which has no cost term).
func (l *lagrange) Lambda() float64 {
	if l.cfg.Algorithm == PPO {
		return 0
	}
	return l.k.Lambda()
}

// AddCosts appends a rollout's end costs to the episode-cost window (post_rollout's deque.extend).
func (l *lagrange) AddCosts(cost []float32) error { return l.k.AddEpisodeCosts(to64(cost)) }

// Jc is the window mean.
func (l *lagrange) Jc() float64 { return l.k.EpisodeCost() }

// State and SetState move the whole state in and out of checkpoints.
func (l *lagrange) State() LambdaState { return l.k.State() }

func (l *lagrange) SetState(s LambdaState) error { return l.k.SetState(s) }
