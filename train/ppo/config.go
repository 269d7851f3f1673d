package ppo

import (
	"fmt"
	"math"
)

// Algorithm selects how the cost enters the objective.
type Algorithm string

const (
	// PPOLag is PPO-Lagrangian (spec §1): max reward s.t. J_c <= d, λ learned by SGD on log λ.
	PPOLag Algorithm = "ppo-lag"
	// PPOLagPID is PPO-Lagrangian with a PID controller on λ instead of the log-λ SGD step.
	PPOLagPID Algorithm = "pid"
	// Fixed is the reward-shaping baseline (spec §2): reward r − λ₀·c with λ₀ fixed, one critic.
	Fixed Algorithm = "fixed"
	// PPO is plain PPO on the reward model (spec §2): no cost model, no cost critic.
	PPO Algorithm = "ppo"
)

// Config carries every hyperparameter of the RL loop. Defaults (DefaultConfig) are the
// reference's scripts/ppo-lag.sh values (spec §1.11) where they apply to a CPU run.
type Config struct {
	Algorithm Algorithm

	Epochs            int // passes over the prompt set
	UpdateIters       int // PPO passes over each rollout batch
	PromptBatchSize   int // per_device_prompt_batch_size
	TrainBatchSize    int // per_device_train_batch_size (micro-batch of rollouts)
	NumReturnSeqs     int // samples per prompt
	MaxSteps          int // stop after this many rollout batches (0: Epochs decides)
	MaxNewTokens      int // generated tokens per rollout (the reference caps prompt+response at max_length)
	MaxPromptTokens   int // prompts are truncated (keeping their end) to this many tokens
	Temperature       float64
	TopP              float64
	RepetitionPenalty float64

	ActorLR, CriticLR                   float64
	ActorWeightDecay, CriticWeightDecay float64
	ActorScheduler, CriticScheduler     string // "cosine" or "constant"
	WarmupRatio                         float64
	GradClip                            float64

	KLCoeff        float64 // β
	ClipRangeRatio float64 // ε
	ClipRangeScore float64
	ClipRangeValue float64
	Gamma          float64 // hard-coded 1.0 in the reference
	GAELambda      float64 // hard-coded 0.95 in the reference

	Threshold              float64 // d
	LambdaInit             float64
	LambdaLR               float64
	LambdaMax              float64 // ≤ 0: unbounded
	LambdaUpdateDelaySteps int
	EpisodeCostWindowSize  int
	PIDKp, PIDKi, PIDKd    float64 // PPOLagPID gains

	PTXCoeff float64 // 0: no PTX

	Seed uint64
}

// DefaultConfig returns the reference's ppo-lag.sh defaults (spec §1.11) for alg. For PPO the
// script's β = 0.02; the fixed-penalty baseline uses λ₀ = LambdaInit = 1.
func DefaultConfig(alg Algorithm) Config {
	c := Config{
		Algorithm:             alg,
		Epochs:                1,
		UpdateIters:           1,
		PromptBatchSize:       16,
		TrainBatchSize:        16,
		NumReturnSeqs:         1,
		MaxNewTokens:          448,
		MaxPromptTokens:       64,
		Temperature:           1.0,
		TopP:                  1.0,
		RepetitionPenalty:     1.0,
		ActorLR:               1e-5,
		CriticLR:              5e-6,
		ActorWeightDecay:      0.01,
		CriticWeightDecay:     0.0,
		ActorScheduler:        "cosine",
		CriticScheduler:       "constant",
		WarmupRatio:           0.03,
		GradClip:              1.0,
		KLCoeff:               0.01,
		ClipRangeRatio:        0.2,
		ClipRangeScore:        50,
		ClipRangeValue:        5,
		Gamma:                 1.0,
		GAELambda:             0.95,
		Threshold:             0,
		LambdaInit:            1,
		LambdaLR:              0.1,
		LambdaMax:             5,
		EpisodeCostWindowSize: 128,
		PIDKp:                 0.05,
		PIDKi:                 0.01,
		PIDKd:                 0.0,
		PTXCoeff:              0,
		Seed:                  42,
	}
	if alg == PPO || alg == Fixed {
		c.KLCoeff = 0.02
	}
	return c
}

// UsesCost reports whether the algorithm needs a cost model.
func (c *Config) UsesCost() bool { return c.Algorithm != PPO }

// UsesCostCritic reports whether the algorithm trains a cost critic (the Lagrangian variants).
func (c *Config) UsesCostCritic() bool { return c.Algorithm == PPOLag || c.Algorithm == PPOLagPID }

// RolloutBatch is the number of sequences per rollout batch.
func (c *Config) RolloutBatch() int { return c.PromptBatchSize * c.NumReturnSeqs }

// Validate checks the configuration (spec §1.8: prompt_bs·num_return_sequences divisible by train_bs).
func (c *Config) Validate() error {
	switch c.Algorithm {
	case PPOLag, PPOLagPID, Fixed, PPO:
	default:
		return fmt.Errorf("ppo config: unknown algorithm %q (want ppo-lag, pid, fixed or ppo)", c.Algorithm)
	}
	pos := map[string]int{"epochs": c.Epochs, "update_iters": c.UpdateIters, "prompt_batch_size": c.PromptBatchSize,
		"train_batch_size": c.TrainBatchSize, "num_return_sequences": c.NumReturnSeqs, "max_new_tokens": c.MaxNewTokens,
		"max_prompt_tokens": c.MaxPromptTokens, "episode_cost_window_size": c.EpisodeCostWindowSize}
	for k, v := range pos {
		if v <= 0 {
			return fmt.Errorf("ppo config: %s = %d, want > 0", k, v)
		}
	}
	if c.RolloutBatch()%c.TrainBatchSize != 0 {
		return fmt.Errorf("ppo config: prompt_batch_size·num_return_sequences = %d not divisible by train_batch_size %d",
			c.RolloutBatch(), c.TrainBatchSize)
	}
	if c.LambdaInit <= 0 || math.IsNaN(c.LambdaInit) {
		return fmt.Errorf("ppo config: lambda_init = %g, want > 0", c.LambdaInit)
	}
	if c.Temperature <= 0 {
		return fmt.Errorf("ppo config: temperature = %g, want > 0", c.Temperature)
	}
	if c.TopP <= 0 || c.TopP > 1 {
		return fmt.Errorf("ppo config: top_p = %g, want in (0, 1]", c.TopP)
	}
	if c.ClipRangeRatio <= 0 || c.ClipRangeValue <= 0 || c.ClipRangeScore <= 0 {
		return fmt.Errorf("ppo config: clip ranges must be > 0")
	}
	if c.ActorScheduler != "cosine" && c.ActorScheduler != "constant" || c.CriticScheduler != "cosine" && c.CriticScheduler != "constant" {
		return fmt.Errorf("ppo config: schedulers must be cosine or constant (got %q, %q)", c.ActorScheduler, c.CriticScheduler)
	}
	return nil
}
