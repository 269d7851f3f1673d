package ppo

import (
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/optim"
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
// reference's scripts/ppo-lag.sh values (spec §1.11). The flag tags are the CLI flag names
// (config.Register); fields in group "cost" exist only for the algorithms with a cost model.
type Config struct {
	Algorithm Algorithm

	Epochs            int     `flag:"epochs" help:"passes over the prompts"`
	UpdateIters       int     `flag:"update-iters" help:"PPO passes over each rollout batch"`
	PromptBatchSize   int     `flag:"prompt-batch-size" help:"prompts per rollout batch"`
	TrainBatchSize    int     `flag:"train-batch-size" help:"prompts per rollout/update micro-batch"`
	NumReturnSeqs     int     `flag:"num-return-sequences" help:"samples per prompt"`
	MaxSteps          int     `flag:"max-steps" help:"stop after this many rollout batches (0: --epochs decide)"`
	MaxNewTokens      int     `flag:"max-new-tokens" help:"generated tokens per response (with --max-prompt-tokens: the reference's max_length 512)"`
	MaxPromptTokens   int     `flag:"max-prompt-tokens" help:"longer prompts keep BOS and their last tokens"`
	Temperature       float64 `flag:"temperature" help:"sampling temperature"`
	TopP              float64 `flag:"top-p" help:"nucleus sampling mass"`
	TopK              int     `flag:"top-k" help:"keep the K most likely tokens before top-p (HF generate's default 50; 0: off)"`
	RepetitionPenalty float64 `flag:"repetition-penalty" help:"HF repetition penalty (1: off)"`

	ActorLR           float64 `flag:"actor-lr" help:"actor learning rate"`
	CriticLR          float64 `flag:"critic-lr" help:"critic learning rate"`
	ActorWeightDecay  float64 `flag:"actor-weight-decay" help:"actor AdamW weight decay"`
	CriticWeightDecay float64 `flag:"critic-weight-decay" help:"critic AdamW weight decay"`
	ActorScheduler    string  `flag:"actor-lr-scheduler" help:"cosine, linear, constant or constant_with_warmup (constant ignores --warmup-ratio, as HF's does)"`
	CriticScheduler   string  `flag:"critic-lr-scheduler" help:"cosine, linear, constant or constant_with_warmup"`
	WarmupRatio       float64 `flag:"warmup-ratio" help:"LR warmup fraction of the rl steps"`
	GradClip          float64 `flag:"max-grad-norm" help:"global gradient-norm clip"`

	KLCoeff        float64 `flag:"kl-coeff" help:"KL penalty β (default: the algorithm's, 0.01 for ppo-lag, 0.02 for ppo and --lambda fixed)"`
	ClipRangeRatio float64 `flag:"clip-range-ratio" help:"PPO ratio clip ε"`
	ClipRangeScore float64 `flag:"clip-range-score" help:"clip of the shaped per-token rewards/costs"`
	ClipRangeValue float64 `flag:"clip-range-value" help:"critic value clip"`
	Gamma          float64 // hard-coded 1.0 in the reference
	GAELambda      float64 // hard-coded 0.95 in the reference

	Threshold              float64 `flag:"threshold" group:"cost" help:"cost threshold d"`
	LambdaInit             float64 `flag:"lambda-init" group:"cost" help:"initial λ (the fixed penalty with --lambda fixed)"`
	LambdaLR               float64 `flag:"lambda-lr" group:"cost" help:"log-λ SGD learning rate"`
	LambdaMax              float64 `flag:"lambda-max" group:"cost" help:"upper bound on λ (≤ 0: none)"`
	LambdaUpdateDelaySteps int     `flag:"lambda-update-delay-steps" group:"cost" help:"rl steps before λ starts moving"`
	EpisodeCostWindowSize  int     `flag:"episode-cost-window-size" group:"cost" help:"episode costs averaged into J_c"`
	PIDKp                  float64 `flag:"pid-kp" group:"cost" help:"PID proportional gain (--lambda pid)"`
	PIDKi                  float64 `flag:"pid-ki" group:"cost" help:"PID integral gain"`
	PIDKd                  float64 `flag:"pid-kd" group:"cost" help:"PID derivative gain"`

	// NormalizeReward and NormalizeCost normalise the reward model's end scores affinely,
	// (x − μ)/(σ + 1e-8), and the cost model's by scale, x/(σ + 1e-8), with the statistics in
	// their config.json (the reference's --normalize_reward / --normalize_cost; off in its scripts).
	NormalizeReward bool `flag:"normalize-reward" help:"normalise reward scores (x − μ)/σ with the reward model's config.json statistics"`
	NormalizeCost   bool `flag:"normalize-cost" group:"cost" help:"normalise cost scores x/σ with the cost model's config.json statistics"`

	PTXCoeff float64 `flag:"ptx-coeff" help:"PTX loss coefficient (spec §1.9), used with --ptx-data"`

	Seed uint64 `flag:"seed" help:"random seed (data order, sampling)"`

	// RLMath is where KL shaping, GAE and the logged means run: "host" (package kernels, float64,
	// bit-exact) or "graph" (one GoMLX program in float32 on the backend, Options.RLMath); empty
	// means DefaultRLMath of the backend.
	RLMath string `flag:"rl-math" help:"where KL shaping and GAE run: host (float64 kernels) or graph (a float32 program on the backend; default on xla:*)"`
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
		TopK:                  50,
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
		PTXCoeff:              16,
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

// Validate checks the configuration before any work; errors name the flags (spec §1.8:
// prompt_bs·num_return_sequences divisible by train_bs).
func (c *Config) Validate() error {
	var ck config.Checker
	ck.OneOf("lambda", string(c.Algorithm), string(PPOLag), string(PPOLagPID), string(Fixed), string(PPO))
	if c.RLMath != "" {
		ck.OneOf("rl-math", c.RLMath, RLMathHost, RLMathGraph)
	}
	ck.Finite(c)
	for _, f := range []struct {
		name string
		v    int
	}{{"epochs", c.Epochs}, {"update-iters", c.UpdateIters}, {"prompt-batch-size", c.PromptBatchSize},
		{"train-batch-size", c.TrainBatchSize}, {"num-return-sequences", c.NumReturnSeqs},
		{"max-new-tokens", c.MaxNewTokens}, {"max-prompt-tokens", c.MaxPromptTokens}} {
		ck.PositiveInt(f.name, f.v)
	}
	ck.NonNegativeInt("max-steps", c.MaxSteps)
	if c.TrainBatchSize > 0 && c.RolloutBatch()%c.TrainBatchSize != 0 {
		ck.Check(false, "--prompt-batch-size × --num-return-sequences = %d must be divisible by --train-batch-size %d",
			c.RolloutBatch(), c.TrainBatchSize)
	}
	ck.Positive("temperature", c.Temperature)
	ck.Fraction("top-p", c.TopP)
	ck.NonNegativeInt("top-k", c.TopK)
	ck.Positive("repetition-penalty", c.RepetitionPenalty)
	ck.Positive("actor-lr", c.ActorLR)
	ck.Positive("critic-lr", c.CriticLR)
	ck.NonNegative("actor-weight-decay", c.ActorWeightDecay)
	ck.NonNegative("critic-weight-decay", c.CriticWeightDecay)
	ck.OneOf("actor-lr-scheduler", c.ActorScheduler, optim.Cosine, optim.Linear, optim.Constant, optim.ConstantWithWarmup)
	ck.OneOf("critic-lr-scheduler", c.CriticScheduler, optim.Cosine, optim.Linear, optim.Constant, optim.ConstantWithWarmup)
	ck.Check(c.WarmupRatio >= 0 && c.WarmupRatio < 1, "--warmup-ratio must be in [0, 1), got %v", c.WarmupRatio)
	ck.Positive("max-grad-norm", c.GradClip)
	ck.NonNegative("kl-coeff", c.KLCoeff)
	ck.Positive("clip-range-ratio", c.ClipRangeRatio)
	ck.Positive("clip-range-score", c.ClipRangeScore)
	ck.Positive("clip-range-value", c.ClipRangeValue)
	ck.NonNegative("ptx-coeff", c.PTXCoeff)
	if c.UsesCost() {
		ck.Positive("lambda-init", c.LambdaInit)
		ck.NonNegative("lambda-lr", c.LambdaLR)
		ck.NonNegativeInt("lambda-update-delay-steps", c.LambdaUpdateDelaySteps)
		ck.PositiveInt("episode-cost-window-size", c.EpisodeCostWindowSize)
		ck.NonNegative("pid-kp", c.PIDKp)
		ck.NonNegative("pid-ki", c.PIDKi)
		ck.NonNegative("pid-kd", c.PIDKd)
	}
	return ck.Err()
}
