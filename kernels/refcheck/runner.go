package refcheck

import (
	"github.com/saferlhf/saferlhf/kernels"
)

// Runner computes the kernels on float64 inputs and outputs through one
// implementation path (CPU float64, CPU float32, graph).
type Runner interface {
	// Name is the path's column title ("f64", "f32", "graph").
	Name() string
	// Tol is the largest acceptable relative error of the path.
	Tol() float64
	MaskedMean(x, mask []float64, B, N int) (float64, error)
	KLShape(a kernels.KLArgs[float64], lag bool) (rewards, costs []float64, st kernels.KLStats, err error)
	GAE(a kernels.GAEArgs[float64]) (kernels.GAEOut[float64], error)
	Actor(a kernels.ActorArgs[float64], lag bool) (kernels.ActorResult, error)
	Critic(a kernels.CriticArgs[float64]) (float64, error)
	RewardLoss(a kernels.PreferenceArgs[float64]) (r kernels.RewardLossResult, betterEnd, worseEnd []float64, err error)
	CostLoss(a kernels.SafetyPreferenceArgs[float64]) (r kernels.CostLossResult, saferEnd, unsaferEnd []float64, err error)
	// Lagrange replays a λ trajectory: per round, append the rollout costs to the
	// window, then perform the round's rl steps; it returns log λ after every
	// step and the episode cost (window mean) each step saw.
	Lagrange(cfg kernels.LagrangeConfig, initLogLambda float64, rounds []LambdaRound) (logLambda, episodeCost []float64, err error)
	// Normalizer feeds batch to n and returns the normalized probe.
	Normalizer(n *kernels.Normalizer, batch, probe []float64) ([]float64, error)
}

// CPU returns the CPU runner: float64 when f32 is false, else float32 with float64 accumulation.
func CPU(f32 bool) Runner {
	if f32 {
		return cpuRunner[float32]{ws: kernels.NewWorkspace(0)}
	}
	return cpuRunner[float64]{ws: kernels.NewWorkspace(0)}
}

type cpuRunner[F kernels.Float] struct{ ws *kernels.Workspace }

// LambdaRound is one round of lambda_update.json: the rollout costs appended
// to the window (one list per micro-batch), then the global steps of its rl steps.
type LambdaRound struct {
	Costs [][]float64
	Steps []int
}

func (r cpuRunner[F]) Name() string {
	var z F
	if _, ok := any(z).(float32); ok {
		return "f32"
	}
	return "f64"
}

func (r cpuRunner[F]) Tol() float64 {
	if r.Name() == "f32" {
		return 1e-4
	}
	return 1e-9
}

func conv[F, G kernels.Float](x []G) []F {
	if x == nil {
		return nil
	}
	y := make([]F, len(x))
	for i, v := range x {
		y[i] = F(v)
	}
	return y
}

func (r cpuRunner[F]) MaskedMean(x, mask []float64, B, N int) (float64, error) {
	return kernels.MaskedMean(r.ws, conv[F](x), conv[F](mask), B, N)
}

func (r cpuRunner[F]) KLShape(a kernels.KLArgs[float64], lag bool) ([]float64, []float64, kernels.KLStats, error) {
	b := kernels.KLArgs[F]{B: a.B, L: a.L, KLCoeff: a.KLCoeff, ClipRangeScore: a.ClipRangeScore, Start: a.Start,
		Reward: conv[F](a.Reward), Cost: conv[F](a.Cost), LogProbs: conv[F](a.LogProbs), RefLogProbs: conv[F](a.RefLogProbs), SeqMask: conv[F](a.SeqMask)}
	rw := make([]F, a.B*a.L)
	if !lag {
		st, err := kernels.KLShapedRewards(r.ws, b, rw)
		return conv[float64](rw), nil, st, err
	}
	cs := make([]F, a.B*a.L)
	st, err := kernels.KLShapedRewardsCosts(r.ws, b, rw, cs)
	return conv[float64](rw), conv[float64](cs), st, err
}

func (r cpuRunner[F]) GAE(a kernels.GAEArgs[float64]) (kernels.GAEOut[float64], error) {
	b := kernels.GAEArgs[F]{B: a.B, L: a.L, Start: a.Start, Gamma: a.Gamma, Lambda: a.Lambda,
		RewardValues: conv[F](a.RewardValues), Rewards: conv[F](a.Rewards), CostValues: conv[F](a.CostValues), Costs: conv[F](a.Costs), SeqMask: conv[F](a.SeqMask)}
	n := a.B * (a.L - a.Start)
	o := kernels.GAEOut[F]{RewardAdv: make([]F, n), RewardRet: make([]F, n)}
	if a.Costs != nil {
		o.CostAdv, o.CostRet = make([]F, n), make([]F, n)
	}
	err := kernels.GAE(r.ws, b, o)
	return kernels.GAEOut[float64]{RewardAdv: conv[float64](o.RewardAdv), RewardRet: conv[float64](o.RewardRet),
		CostAdv: conv[float64](o.CostAdv), CostRet: conv[float64](o.CostRet)}, err
}

func (r cpuRunner[F]) Actor(a kernels.ActorArgs[float64], lag bool) (kernels.ActorResult, error) {
	b := kernels.ActorArgs[F]{B: a.B, N: a.N, ClipRatio: a.ClipRatio, Lambda: a.Lambda, LogProbs: conv[F](a.LogProbs),
		OldLogProbs: conv[F](a.OldLogProbs), RewardAdv: conv[F](a.RewardAdv), CostAdv: conv[F](a.CostAdv), Mask: conv[F](a.Mask)}
	g := make([]F, a.B*a.N)
	if lag {
		return kernels.ActorLossPPOLag(r.ws, b, g)
	}
	return kernels.ActorLossPPO(r.ws, b, g)
}

func (r cpuRunner[F]) Critic(a kernels.CriticArgs[float64]) (float64, error) {
	b := kernels.CriticArgs[F]{B: a.B, N: a.N, ClipValue: a.ClipValue, Values: conv[F](a.Values), OldValues: conv[F](a.OldValues),
		Returns: conv[F](a.Returns), Mask: conv[F](a.Mask)}
	return kernels.CriticLoss(r.ws, b, make([]F, a.B*a.N))
}

func (r cpuRunner[F]) RewardLoss(a kernels.PreferenceArgs[float64]) (kernels.RewardLossResult, []float64, []float64, error) {
	b := kernels.PreferenceArgs[F]{B: a.B, T: a.T, LossType: a.LossType, Regularization: a.Regularization,
		BetterIDs: a.BetterIDs, WorseIDs: a.WorseIDs, BetterMask: conv[F](a.BetterMask), WorseMask: conv[F](a.WorseMask),
		BetterScores: conv[F](a.BetterScores), WorseScores: conv[F](a.WorseScores)}
	be, we := make([]F, a.B), make([]F, a.B)
	res, err := kernels.RewardLoss(r.ws, b, be, we)
	return res, conv[float64](be), conv[float64](we), err
}

func (r cpuRunner[F]) CostLoss(a kernels.SafetyPreferenceArgs[float64]) (kernels.CostLossResult, []float64, []float64, error) {
	b := kernels.SafetyPreferenceArgs[F]{B: a.B, T: a.T, LossType: a.LossType, Regularization: a.Regularization,
		SaferIDs: a.SaferIDs, UnsaferIDs: a.UnsaferIDs, SaferMask: conv[F](a.SaferMask), UnsaferMask: conv[F](a.UnsaferMask),
		SaferScores: conv[F](a.SaferScores), UnsaferScores: conv[F](a.UnsaferScores), SaferSign: conv[F](a.SaferSign), UnsaferSign: conv[F](a.UnsaferSign)}
	se, ue := make([]F, a.B), make([]F, a.B)
	res, err := kernels.CostLoss(r.ws, b, se, ue)
	return res, conv[float64](se), conv[float64](ue), err
}

func (r cpuRunner[F]) Lagrange(cfg kernels.LagrangeConfig, initLogLambda float64, rounds []LambdaRound) ([]float64, []float64, error) {
	l, err := kernels.NewLagrange(cfg)
	if err != nil {
		return nil, nil, err
	}
	st := l.State()
	st.LogLambda = initLogLambda
	if err := l.SetState(st); err != nil {
		return nil, nil, err
	}
	var out, jc []float64
	for _, rd := range rounds {
		for _, c := range rd.Costs {
			// The float32 path sees the costs as float32 end scores.
			if err := l.AddEpisodeCosts(conv[float64](conv[F](c))); err != nil {
				return nil, nil, err
			}
		}
		for _, gs := range rd.Steps {
			s := l.Update(gs)
			out, jc = append(out, l.LogLambda()), append(jc, s.EpisodeCost)
		}
	}
	return out, jc, nil
}

func (r cpuRunner[F]) Normalizer(n *kernels.Normalizer, batch, probe []float64) ([]float64, error) {
	if err := kernels.UpdateNormalizer(n, conv[F](batch)); err != nil {
		return nil, err
	}
	out := make([]F, len(probe))
	if err := kernels.NormalizeInto(n, conv[F](probe), out); err != nil {
		return nil, err
	}
	return conv[float64](out), nil
}
