package refcheck

import (
	"fmt"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/kernels/ingraph"
)

// Graph returns the runner of the kernels/ingraph path on the backend named by
// spec (see internal/backend; "" = default), in float32 (the training dtype).
func Graph(spec string) (Runner, error) { return newGraph(spec, dtypes.Float32) }

// Graph64 is Graph in float64 (used by the tests to check the formulas tightly).
func Graph64(spec string) (Runner, error) { return newGraph(spec, dtypes.Float64) }

func newGraph(spec string, dt dtypes.DType) (Runner, error) {
	be, err := backend.New(spec)
	if err != nil {
		return nil, fmt.Errorf("graph path: %w", err)
	}
	return &graphRunner{be: be, dt: dt}, nil
}

type graphRunner struct {
	be backends.Backend
	dt dtypes.DType
}

func (r *graphRunner) Name() string {
	if r.dt == dtypes.Float64 {
		return "graph64"
	}
	return "graph"
}

func (r *graphRunner) Tol() float64 {
	if r.dt == dtypes.Float64 {
		return 1e-9
	}
	return 1e-4
}

// arg is one graph input: float data (converted to the runner's dtype) or int32 ids.
type arg struct {
	f    []float64
	ids  []int32
	dims []int
	f64  bool // always float64 (state that the reference keeps in float64)
}

func fa(x []float64, dims ...int) arg { return arg{f: x, dims: dims} }

// exec builds and runs fn on the inputs and returns every output as float64.
func (r *graphRunner) exec(fn func(in []*graph.Node) []*graph.Node, args ...arg) (out [][]float64, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("graph: %v", p)
		}
	}()
	ins := make([]any, len(args))
	for i, a := range args {
		switch {
		case a.ids != nil:
			ins[i] = tensors.FromFlatDataAndDimensions(a.ids, a.dims...)
		case r.dt == dtypes.Float64 || a.f64:
			ins[i] = tensors.FromFlatDataAndDimensions(append([]float64(nil), a.f...), a.dims...)
		default:
			ins[i] = tensors.FromFlatDataAndDimensions(conv[float32](a.f), a.dims...)
		}
	}
	e, err := graph.NewExec(r.be, fn)
	if err != nil {
		return nil, err
	}
	defer e.Finalize()
	res, err := e.Exec(ins...)
	if err != nil {
		return nil, err
	}
	for _, t := range res {
		var v []float64
		if t.DType() == dtypes.Float64 {
			v, err = tensors.CopyFlatData[float64](t)
		} else {
			var w []float32
			w, err = tensors.CopyFlatData[float32](t)
			v = conv[float64](w)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (r *graphRunner) MaskedMean(x, mask []float64, B, N int) (float64, error) {
	if mask == nil {
		o, err := r.exec(func(in []*graph.Node) []*graph.Node { return []*graph.Node{ingraph.MaskedMean(in[0], nil)} }, fa(x, B, N))
		if err != nil {
			return 0, err
		}
		return o[0][0], nil
	}
	o, err := r.exec(func(in []*graph.Node) []*graph.Node { return []*graph.Node{ingraph.MaskedMean(in[0], in[1])} }, fa(x, B, N), fa(mask, B, N))
	if err != nil {
		return 0, err
	}
	return o[0][0], nil
}

func (r *graphRunner) KLShape(a kernels.KLArgs[float64], lag bool) ([]float64, []float64, kernels.KLStats, error) {
	args := []arg{fa(a.LogProbs, a.B, a.L), fa(a.RefLogProbs, a.B, a.L), fa(a.SeqMask, a.B, a.L), fa(a.Reward, a.B)}
	if lag {
		args = append(args, fa(a.Cost, a.B))
	}
	o, err := r.exec(func(in []*graph.Node) []*graph.Node {
		var cost *graph.Node
		if lag {
			cost = in[4]
		}
		k := ingraph.KLShaped(in[0], in[1], in[2], in[3], cost, a.KLCoeff, a.ClipRangeScore, a.Start)
		if !lag {
			k.Costs = k.Rewards
		}
		return []*graph.Node{k.Rewards, k.Costs, k.KL, k.RewardWithKLPenalty}
	}, args...)
	if err != nil {
		return nil, nil, kernels.KLStats{}, err
	}
	st := kernels.KLStats{KL: o[2][0], RewardWithKLPenalty: o[3][0]}
	if !lag {
		return o[0], nil, st, nil
	}
	return o[0], o[1], st, nil
}

func (r *graphRunner) GAE(a kernels.GAEArgs[float64]) (kernels.GAEOut[float64], error) {
	fused := a.CostValues != nil
	args := []arg{fa(a.RewardValues, a.B, a.L), fa(a.Rewards, a.B, a.L), fa(a.SeqMask, a.B, a.L)}
	if fused {
		args = append(args, fa(a.CostValues, a.B, a.L), fa(a.Costs, a.B, a.L))
	}
	o, err := r.exec(func(in []*graph.Node) []*graph.Node {
		var cv, cr *graph.Node
		if fused {
			cv, cr = in[3], in[4]
		}
		g := ingraph.GAE(in[0], in[1], cv, cr, in[2], a.Start, a.Gamma, a.Lambda)
		if !fused {
			return []*graph.Node{g.RewardAdv, g.RewardRet}
		}
		return []*graph.Node{g.RewardAdv, g.RewardRet, g.CostAdv, g.CostRet}
	}, args...)
	if err != nil {
		return kernels.GAEOut[float64]{}, err
	}
	out := kernels.GAEOut[float64]{RewardAdv: o[0], RewardRet: o[1]}
	if fused {
		out.CostAdv, out.CostRet = o[2], o[3]
	}
	return out, nil
}

func (r *graphRunner) Actor(a kernels.ActorArgs[float64], lag bool) (kernels.ActorResult, error) {
	args := []arg{fa(a.LogProbs, a.B, a.N), fa(a.OldLogProbs, a.B, a.N), fa(a.RewardAdv, a.B, a.N), fa(a.Mask, a.B, a.N)}
	if lag {
		args = append(args, fa(a.CostAdv, a.B, a.N), fa([]float64{a.Lambda}))
	}
	o, err := r.exec(func(in []*graph.Node) []*graph.Node {
		var ao ingraph.ActorOut
		if lag {
			ao = ingraph.ActorLossPPOLag(in[0], in[1], in[2], in[4], in[3], in[5], a.ClipRatio)
		} else {
			ao = ingraph.ActorLossPPO(in[0], in[1], in[2], in[3], a.ClipRatio)
		}
		return []*graph.Node{ao.Loss, ao.ClipFrac, ao.ApproxKL}
	}, args...)
	if err != nil {
		return kernels.ActorResult{}, err
	}
	return kernels.ActorResult{Loss: o[0][0], ClipFrac: o[1][0], ApproxKL: o[2][0]}, nil
}

func (r *graphRunner) Critic(a kernels.CriticArgs[float64]) (float64, error) {
	o, err := r.exec(func(in []*graph.Node) []*graph.Node {
		return []*graph.Node{ingraph.CriticLoss(in[0], in[1], in[2], in[3], a.ClipValue)}
	}, fa(a.Values, a.B, a.N), fa(a.OldValues, a.B, a.N), fa(a.Returns, a.B, a.N), fa(a.Mask, a.B, a.N))
	if err != nil {
		return 0, err
	}
	return o[0][0], nil
}

func (r *graphRunner) pair(B, T int, tw bool, reg float64, hiIDs, loIDs []int32, hiM, loM, hi, lo, hiSign, loSign []float64) ([][]float64, error) {
	args := []arg{{ids: hiIDs, dims: []int{B, T}}, {ids: loIDs, dims: []int{B, T}}, fa(hiM, B, T), fa(loM, B, T), fa(hi, B, T), fa(lo, B, T)}
	cost := hiSign != nil
	if cost {
		args = append(args, fa(hiSign, B), fa(loSign, B))
	}
	return r.exec(func(in []*graph.Node) []*graph.Node {
		p := ingraph.PairInputs{HiIDs: in[0], LoIDs: in[1], HiMask: in[2], LoMask: in[3], HiScore: in[4], LoScore: in[5]}
		var o ingraph.PairOut
		if cost {
			o = ingraph.CostLoss(p, in[6], in[7], tw, reg)
		} else {
			o = ingraph.RewardLoss(p, tw, reg)
			o.SignAccuracy = o.Accuracy
		}
		return []*graph.Node{o.Loss, o.Accuracy, o.SignAccuracy, o.HiEnd, o.LoEnd}
	}, args...)
}

func (r *graphRunner) RewardLoss(a kernels.PreferenceArgs[float64]) (kernels.RewardLossResult, []float64, []float64, error) {
	o, err := r.pair(a.B, a.T, a.LossType == kernels.TokenWise, a.Regularization, a.BetterIDs, a.WorseIDs,
		a.BetterMask, a.WorseMask, a.BetterScores, a.WorseScores, nil, nil)
	if err != nil {
		return kernels.RewardLossResult{}, nil, nil, err
	}
	return kernels.RewardLossResult{Loss: o[0][0], Accuracy: o[1][0]}, o[3], o[4], nil
}

func (r *graphRunner) CostLoss(a kernels.SafetyPreferenceArgs[float64]) (kernels.CostLossResult, []float64, []float64, error) {
	o, err := r.pair(a.B, a.T, a.LossType == kernels.TokenWise, a.Regularization, a.UnsaferIDs, a.SaferIDs,
		a.UnsaferMask, a.SaferMask, a.UnsaferScores, a.SaferScores, a.UnsaferSign, a.SaferSign)
	if err != nil {
		return kernels.CostLossResult{}, nil, nil, err
	}
	return kernels.CostLossResult{Loss: o[0][0], Accuracy: o[1][0], SignAccuracy: o[2][0]}, o[4], o[3], nil
}

// Lagrange keeps the window on the host (it is bookkeeping, not math) and runs
// each applied update as a graph.
func (r *graphRunner) Lagrange(cfg kernels.LagrangeConfig, initLogLambda float64, rounds []LambdaRound) ([]float64, []float64, error) {
	W := cfg.WindowSize
	if W == 0 {
		W = kernels.DefaultCostWindow
	}
	var window []float64
	ll := initLogLambda
	var out, jc []float64
	for _, rd := range rounds {
		for _, c := range rd.Costs {
			window = append(window, c...)
			if len(window) > W {
				window = window[len(window)-W:]
			}
		}
		for _, gs := range rd.Steps {
			mean := 0.0
			if len(window) > 0 {
				// log λ stays float64 (as the reference's parameter); the costs are in the runner's dtype.
				o, err := r.exec(func(in []*graph.Node) []*graph.Node {
					w := graph.ConvertDType(in[1], dtypes.Float64)
					return []*graph.Node{ingraph.LagrangeSGDStep(graph.ConvertDType(in[0], dtypes.Float64), w,
						cfg.LambdaLR, cfg.Threshold, cfg.LambdaMax, kernels.MaxLogLambda), graph.ReduceAllMean(w)}
				}, arg{f: []float64{ll}, f64: true}, fa(window, len(window)))
				if err != nil {
					return nil, nil, err
				}
				if gs >= cfg.DelaySteps {
					ll = o[0][0]
				}
				mean = o[1][0]
			}
			out, jc = append(out, ll), append(jc, mean)
		}
	}
	return out, jc, nil
}

func (r *graphRunner) Normalizer(n *kernels.Normalizer, batch, probe []float64) ([]float64, error) {
	o, err := r.exec(func(in []*graph.Node) []*graph.Node {
		s := ingraph.NormalizerState{Mean: in[0], Var: in[1], Count: in[2]}
		s = ingraph.NormalizerUpdate(s, in[3], string(n.Type), n.Momentum)
		return []*graph.Node{s.Mean, s.Var, s.Count, ingraph.Normalize(in[4], s, string(n.Function), n.Epsilon)}
	}, fa([]float64{n.Mean}), fa([]float64{n.Var}), fa([]float64{float64(n.Count)}), fa(batch, len(batch)), fa(probe, len(probe)))
	if err != nil {
		return nil, err
	}
	n.Mean, n.Var, n.Count = o[0][0], o[1][0], int64(o[2][0])
	return o[3], nil
}
