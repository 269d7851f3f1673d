// Package ingraph holds the Safe RLHF math of package kernels as GoMLX graph
// functions, so that a whole PPO-Lag update (or an RM/CM step) can run as one
// compiled graph on any backend. Every function takes and returns *graph.Node
// of any float dtype and follows the shapes and conventions of package kernels
// (row-major [B, width], 0/1 masks of the same dtype); the results agree with
// the CPU kernels (tested on the pure-Go backend).
//
// The actor, critic, reward-model and cost-model losses are differentiable with
// respect to the log-probs, values and scores. They use no Slice (whose
// gradient needs Pad, which the pure-Go backend lacks): pass either tensors
// already sliced to [:, start:] or full-width [B,L] tensors with a mask that is
// zero before start (ResponseMask) — the masked means are the same.
//
// Functions (x of shape [B,N] or [B,L], scalars as *Node where they vary per step):
//
//	MaskedMean(x, mask); ResponseMask(seqMask, start); EndOneHot(mask); EndIndex(mask); EndScores(mask, scores)
//	KLShaped(logProbs, refLogProbs, seqMask, reward, cost, klCoeff, clipRangeScore, start) KLOut
//	GAE(rewardValues, rewards, costValues, costs, seqMask, start, gamma, lambda) GAEOut   ([B, L−start])
//	GAEFullWidth(...) GAEOut                                                          ([B, L], zero before start)
//	ActorLossPPOLag(logProbs, oldLogProbs, rewardAdv, costAdv, mask, lambda, clipRatio) ActorOut
//	ActorLossPPO(logProbs, oldLogProbs, adv, mask, clipRatio) ActorOut
//	CriticLoss(values, oldValues, returns, mask, clipValue)
//	PPOLagStep(RLStepInputs, RLStepConfig) RLStepOut      one whole rl_step without the networks
//	RewardLoss(PairInputs, tokenWise, reg) PairOut; CostLoss(PairInputs, hiSign, loSign, tokenWise, reg) PairOut
//	NegLogSigmoid(x); LagrangeSGDStep(logLambda, window, lr, threshold, lambdaMax, maxLogLambda)
//	NormalizerUpdate(NormalizerState, batch, typ, momentum); Normalize(x, NormalizerState, function, eps)
//
// Like package kernels, masked means skip rows whose mask is all zero, and a
// row without any non-zero mask entry has no end position (end score 0).
// Graph functions cannot return errors: non-finite inputs propagate NaN.
// Like GoMLX, these functions panic on shape errors while the graph is built.
package ingraph

import (
	"math"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	. "github.com/gomlx/gomlx/pkg/core/graph" //nolint:revive // graph code reads like math
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// scalar returns a constant of x's dtype.
func scalar(x *Node, v float64) *Node { return Scalar(x.Graph(), x.DType(), v) }

// col turns a [B] vector into a [B,1] column.
func col(x *Node) *Node { return ExpandAxes(x, -1) }

// positions returns the float positions 0..T−1 of a [B,T] tensor, as a [B,T] constant.
func positions(x *Node) *Node {
	return Iota(x.Graph(), shapes.Make(x.DType(), x.Shape().Dimensions...), 1)
}

// MaskedMean is the reference masked_mean (spec §1.5) of x over [B,N] with the
// given mask: the mean over non-empty rows of Σ_t x·m / Σ_t m (0 if all rows are empty).
// A nil mask gives the plain mean.
func MaskedMean(x, mask *Node) *Node {
	if mask == nil {
		return ReduceAllMean(x)
	}
	n := ReduceSum(mask, 1)
	rows := Div(ReduceSum(Mul(x, mask), 1), MaxScalar(n, 1))
	nonEmpty := ConvertDType(GreaterThan(n, ZerosLike(n)), x.DType())
	return Div(ReduceAllSum(rows), MaxScalar(ReduceAllSum(nonEmpty), 1))
}

// ResponseMask returns seqMask·1[t ≥ start] for a [B,L] sequence mask, the mask
// to use with full-width tensors in place of slicing [:, start:].
func ResponseMask(seqMask *Node, start int) *Node {
	pos := positions(seqMask)
	return Mul(seqMask, ConvertDType(GreaterOrEqual(pos, scalar(pos, float64(start))), seqMask.DType()))
}

// EndOneHot returns the [B,T] one-hot of the last position whose mask is
// non-zero in each row (all zero for an empty row): the reference's end_index.
func EndOneHot(mask *Node) *Node {
	pos1 := AddScalar(positions(mask), 1)
	nz := ConvertDType(NotEqual(mask, ZerosLike(mask)), mask.DType())
	e := ReduceMax(Mul(pos1, nz), 1) // end+1, or 0
	return StopGradient(ConvertDType(Equal(pos1, col(e)), mask.DType()))
}

// EndIndex returns the [B] end positions as floats (−1 for an empty row).
func EndIndex(mask *Node) *Node {
	pos1 := AddScalar(positions(mask), 1)
	nz := ConvertDType(NotEqual(mask, ZerosLike(mask)), mask.DType())
	return StopGradient(AddScalar(ReduceMax(Mul(pos1, nz), 1), -1))
}

// EndScores gathers each row's score at its end position ([B,T] → [B]); it is
// differentiable with respect to scores.
func EndScores(mask, scores *Node) *Node {
	return ReduceSum(Mul(EndOneHot(mask), scores), 1)
}

// NegLogSigmoid returns −log σ(x), smooth everywhere (its gradient is σ(x)−1
// also at x = 0) and without overflow: log1p(exp(−x)) for x > −30, −x below.
func NegLogSigmoid(x *Node) *Node {
	safe := MaxScalar(x, -30)
	return Where(GreaterThan(x, scalar(x, -30)), Log1p(Exp(Neg(safe))), Neg(x))
}

// KLOut are the outputs of KLShaped.
type KLOut struct {
	// Rewards and Costs are the shaped per-token values [B,L] (Costs nil for PPO).
	Rewards, Costs *Node
	// KL and RewardWithKLPenalty are the logged scalars (spec §1.8) over t ≥ start.
	KL, RewardWithKLPenalty *Node
}

// KLShaped computes the per-token rewards (and, if cost is not nil, costs) of
// spec §1.3: clip(∓β·(logπ−logπ_ref) + 1[t=end]·score, ±clipRangeScore).
// logProbs, refLogProbs, seqMask are [B,L]; reward and cost are [B].
func KLShaped(logProbs, refLogProbs, seqMask, reward, cost *Node, klCoeff, clipRangeScore float64, start int) KLOut {
	k := Sub(logProbs, refLogProbs)
	pen := MulScalar(k, -klCoeff)
	oh := EndOneHot(seqMask)
	clip := func(x *Node) *Node { return MinScalar(MaxScalar(x, -clipRangeScore), clipRangeScore) }
	var o KLOut
	o.Rewards = clip(Add(pen, Mul(oh, col(reward))))
	if cost != nil {
		o.Costs = clip(Add(Neg(pen), Mul(oh, col(cost))))
	}
	rm := ResponseMask(seqMask, start)
	o.KL = ReduceAllMean(ReduceSum(Mul(k, rm), 1))
	o.RewardWithKLPenalty = ReduceAllMean(ReduceSum(Mul(o.Rewards, rm), 1))
	return o
}

// discountMatrix returns the [L, L−start] constant D[k, t'] = (γλ)^{k−t} for
// k ≥ t = start + t', 0 otherwise: A = δ·D is the GAE recursion unrolled. With
// full, D is [L, L] with zero columns before start (advantages 0 there).
func discountMatrix(g *Graph, dtype dtypes.DType, L, start int, gl float64, full bool) *Node {
	N, off := L-start, start
	if full {
		N, off = L, 0
	}
	d := make([]float64, L*N)
	for tp := range N {
		t := off + tp
		if t < start {
			continue
		}
		p := 1.0
		for k := t; k < L; k++ {
			d[k*N+tp] = p
			p *= gl
		}
	}
	c := Const(g, d)
	return ConvertDType(Reshape(c, L, N), dtype)
}

// GAEOut are the outputs of GAE, each [B, L−start] (the cost pair nil for a single stream).
type GAEOut struct {
	RewardAdv, RewardRet, CostAdv, CostRet *Node
}

// GAE computes advantages and returns (spec §1.4) for the reward stream and,
// if costValues is not nil, the cost stream, as one matrix product with a
// constant discount matrix (no loop): δ = r·m + γ·V_{t+1} − V·m, A = δ·D,
// R = A + V·m. Inputs are [B,L]; no gradient flows through GAE. The sum runs
// in float64 whatever the input dtype (a float32 sum over L terms loses ~L·2⁻²⁴),
// and the outputs have the input dtype.
func GAE(rewardValues, rewards, costValues, costs, seqMask *Node, start int, gamma, lambda float64) GAEOut {
	return gae(rewardValues, rewards, costValues, costs, seqMask, start, gamma, lambda, false)
}

// GAEFullWidth is GAE with [B,L] outputs: advantages are 0 before start and
// returns there equal the masked values (use them with a ResponseMask).
func GAEFullWidth(rewardValues, rewards, costValues, costs, seqMask *Node, start int, gamma, lambda float64) GAEOut {
	return gae(rewardValues, rewards, costValues, costs, seqMask, start, gamma, lambda, true)
}

func gae(rewardValues, rewards, costValues, costs, seqMask *Node, start int, gamma, lambda float64, full bool) GAEOut {
	B, L := rewardValues.Shape().Dimensions[0], rewardValues.Shape().Dimensions[1]
	dt := rewardValues.DType()
	f64 := func(x *Node) *Node { return ConvertDType(StopGradient(x), dtypes.Float64) }
	vals, rews, masks := f64(rewardValues), f64(rewards), f64(seqMask)
	if costValues != nil {
		vals = Concatenate([]*Node{vals, f64(costValues)}, 0)
		rews = Concatenate([]*Node{rews, f64(costs)}, 0)
		masks = Concatenate([]*Node{masks, masks}, 0)
	}
	vals, rews = Mul(vals, masks), Mul(rews, masks)
	rows := vals.Shape().Dimensions[0]
	next := Zeros(vals.Graph(), shapes.Make(vals.DType(), rows, 1)) // V_L = 0
	if L > 1 {
		next = Concatenate([]*Node{SliceAxis(vals, 1, AxisRange(1)), next}, 1)
	}
	delta := Sub(Add(rews, MulScalar(next, gamma)), vals)
	adv := MatMul(delta, discountMatrix(vals.Graph(), vals.DType(), L, start, gamma*lambda, full))
	vs := vals
	if start > 0 && !full {
		vs = SliceAxis(vals, 1, AxisRange(start))
	}
	ret := ConvertDType(Add(adv, vs), dt)
	adv = ConvertDType(adv, dt)
	if costValues == nil {
		return GAEOut{RewardAdv: adv, RewardRet: ret}
	}
	top, bot := AxisRange(0, B), AxisRange(B)
	return GAEOut{RewardAdv: SliceAxis(adv, 0, top), RewardRet: SliceAxis(ret, 0, top),
		CostAdv: SliceAxis(adv, 0, bot), CostRet: SliceAxis(ret, 0, bot)}
}

// RLStepConfig are the hyper-parameters of one PPO-Lag step (spec §1.11 defaults:
// KLCoeff 0.01, ClipRangeScore 50, ClipRatio 0.2, ClipValue 5, Gamma 1, GAELambda 0.95).
type RLStepConfig struct {
	KLCoeff, ClipRangeScore, ClipRatio, ClipValue, Gamma, GAELambda float64
	// Start is the first response position S−1.
	Start int
}

// RLStepInputs are the tensors of one rl_step, all [B,L] except Reward and
// Cost ([B]) and Lambda (scalar). The losses are differentiable with respect to
// LogProbs, RewardValues and CostValues (which the actor and critics compute in
// the same graph); everything else is rollout data.
type RLStepInputs struct {
	SeqMask                            *Node
	Reward, Cost                       *Node
	OldLogProbs, RefLogProbs, LogProbs *Node
	OldRewardValues, OldCostValues     *Node
	RewardValues, CostValues           *Node
	Lambda                             *Node
}

// RLStepOut are the outputs of PPOLagStep (advantages and returns full width [B,L]).
type RLStepOut struct {
	KL                               KLOut
	GAE                              GAEOut
	Actor                            ActorOut
	RewardCriticLoss, CostCriticLoss *Node
}

// PPOLagStep composes one PPOLagTrainer.rl_step without the networks (spec
// §1.8): KL shaping and fused GAE on the rollout, then the actor loss and both
// critic losses on the new log-probs and values, all in one graph and without
// Slice, so that gradients flow to LogProbs, RewardValues and CostValues.
func PPOLagStep(in RLStepInputs, c RLStepConfig) RLStepOut {
	var o RLStepOut
	o.KL = KLShaped(StopGradient(in.OldLogProbs), StopGradient(in.RefLogProbs), in.SeqMask, in.Reward, in.Cost, c.KLCoeff, c.ClipRangeScore, c.Start)
	o.GAE = GAEFullWidth(in.OldRewardValues, o.KL.Rewards, in.OldCostValues, o.KL.Costs, in.SeqMask, c.Start, c.Gamma, c.GAELambda)
	rm := ResponseMask(in.SeqMask, c.Start)
	o.Actor = ActorLossPPOLag(in.LogProbs, in.OldLogProbs, o.GAE.RewardAdv, o.GAE.CostAdv, rm, in.Lambda, c.ClipRatio)
	o.RewardCriticLoss = CriticLoss(in.RewardValues, in.OldRewardValues, o.GAE.RewardRet, rm, c.ClipValue)
	o.CostCriticLoss = CriticLoss(in.CostValues, in.OldCostValues, o.GAE.CostRet, rm, c.ClipValue)
	return o
}

// ActorOut are the outputs of the actor losses.
type ActorOut struct {
	// Loss is differentiable with respect to the new log-probs.
	Loss *Node
	// ClipFrac (masked mean of 1[|ρ−1|>ε]) and ApproxKL (masked mean of ρ−1−log ρ) carry no gradient.
	ClipFrac, ApproxKL *Node
}

// ActorLossPPOLag is the PPO-Lagrangian actor loss (spec §1.5) with
// Â = (A^r − λA^c)/(1+λ); lambda is a scalar node (no gradient flows into it),
// the other inputs share one shape ([B,N], or [B,L] with a ResponseMask).
func ActorLossPPOLag(logProbs, oldLogProbs, rewardAdv, costAdv, mask, lambda *Node, clipRatio float64) ActorOut {
	lam := StopGradient(ConvertDType(lambda, rewardAdv.DType()))
	adv := Div(Sub(rewardAdv, Mul(lam, costAdv)), OnePlus(lam))
	return surrogate(logProbs, oldLogProbs, adv, mask, clipRatio)
}

// ActorLossPPO is the plain PPO clipped-surrogate loss (spec §2).
func ActorLossPPO(logProbs, oldLogProbs, adv, mask *Node, clipRatio float64) ActorOut {
	return surrogate(logProbs, oldLogProbs, adv, mask, clipRatio)
}

func surrogate(logProbs, oldLogProbs, adv, mask *Node, eps float64) ActorOut {
	adv, old := StopGradient(adv), StopGradient(oldLogProbs)
	d := Sub(logProbs, old)
	ratio := Exp(d)
	s1 := Mul(adv, ratio)
	s2 := Mul(adv, MinScalar(MaxScalar(ratio, 1.0-eps), 1.0+eps))
	loss := Neg(MaskedMean(Min(s1, s2), mask))
	r := StopGradient(ratio)
	dd := StopGradient(d)
	clipped := ConvertDType(GreaterThan(Abs(AddScalar(r, -1)), scalar(r, eps)), r.DType())
	return ActorOut{
		Loss:     loss,
		ClipFrac: MaskedMean(clipped, mask),
		ApproxKL: MaskedMean(Sub(AddScalar(r, -1), dd), mask),
	}
}

// CriticLoss is the clipped value loss (spec §1.6),
// 0.5·masked_mean(max((V−R)², (clip(V, V_old±c)−R)²)), differentiable with respect to values.
func CriticLoss(values, oldValues, returns, mask *Node, clipValue float64) *Node {
	old, ret := StopGradient(oldValues), StopGradient(returns)
	vc := Min(Max(values, AddScalar(old, -clipValue)), AddScalar(old, clipValue))
	l1, l2 := Square(Sub(values, ret)), Square(Sub(vc, ret))
	return MulScalar(MaskedMean(Max(l1, l2), mask), 0.5)
}

// PairInputs are the two answers of a preference pair, each [B,T]: "Hi" is
// the answer that should score higher (the better one for the reward model,
// the unsafer one for the cost model). IDs (int32) are read by the token-wise loss only.
type PairInputs struct {
	HiIDs, LoIDs     *Node
	HiMask, LoMask   *Node
	HiScore, LoScore *Node
}

// PairOut are the outputs of RewardLoss and CostLoss.
type PairOut struct {
	// Loss is differentiable with respect to both score tensors.
	Loss *Node
	// Accuracy (fraction of rows with hi end score > lo end score) and
	// SignAccuracy (cost model only) carry no gradient.
	Accuracy, SignAccuracy *Node
	// HiEnd and LoEnd are the end scores [B].
	HiEnd, LoEnd *Node
}

// span returns the [B,T] 0/1 mask of the token-wise span [d, e]: d the first
// position where the ids differ, e the later of the two end positions.
func span(p PairInputs) *Node {
	pos := positions(p.HiScore)
	T := float64(p.HiScore.Shape().Dimensions[1])
	same := ConvertDType(Equal(p.HiIDs, p.LoIDs), pos.DType())
	d := ReduceMin(Add(pos, MulScalar(same, T)), 1)
	e := Max(EndIndex(p.HiMask), EndIndex(p.LoMask))
	in := And(GreaterOrEqual(pos, col(d)), LessOrEqual(pos, col(e)))
	return StopGradient(ConvertDType(in, pos.DType()))
}

// spanMean averages x over each row's span ([B]); empty spans give 0.
func spanMean(x, sp, n *Node) *Node { return Div(ReduceSum(Mul(x, sp), 1), MaxScalar(n, 1)) }

// RewardLoss is the reward-model loss (spec §4): sequence-wise
// mean −logσ(r_b,end − r_w,end) + reg·mean([r_w; r_b]²), or token-wise the same
// averaged over each row's span. p.Hi is the better answer.
func RewardLoss(p PairInputs, tokenWise bool, reg float64) PairOut {
	return pairLoss(p, nil, nil, tokenWise, reg)
}

// CostLoss is the cost-model loss (spec §5) with p.Hi the unsafer answer and
// p.Lo the safer one; hiSign and loSign are their safety signs [B] (+1 safe, −1 unsafe).
func CostLoss(p PairInputs, hiSign, loSign *Node, tokenWise bool, reg float64) PairOut {
	return pairLoss(p, hiSign, loSign, tokenWise, reg)
}

func pairLoss(p PairInputs, hiSign, loSign *Node, tokenWise bool, reg float64) PairOut {
	var o PairOut
	o.HiEnd, o.LoEnd = EndScores(p.HiMask, p.HiScore), EndScores(p.LoMask, p.LoScore)
	dt := o.HiEnd.DType()
	o.Accuracy = StopGradient(ReduceAllMean(ConvertDType(GreaterThan(o.HiEnd, o.LoEnd), dt)))
	cost := hiSign != nil
	var hs, ls *Node // cost signs = −safety signs
	if cost {
		hs, ls = Neg(ConvertDType(hiSign, dt)), Neg(ConvertDType(loSign, dt))
		pos := func(x *Node) *Node { return ConvertDType(GreaterThan(x, ZerosLike(x)), dt) }
		o.SignAccuracy = StopGradient(MulScalar(Add(ReduceAllMean(pos(Mul(ls, o.LoEnd))), ReduceAllMean(pos(Mul(hs, o.HiEnd)))), 0.5))
	}
	if !tokenWise {
		l := NegLogSigmoid(Sub(o.HiEnd, o.LoEnd))
		if cost {
			l = Add(l, Add(NegLogSigmoid(Mul(ls, o.LoEnd)), NegLogSigmoid(Mul(hs, o.HiEnd))))
		}
		o.Loss = ReduceAllMean(l)
		if reg > 0 {
			sq := Add(ReduceAllMean(Square(o.HiEnd)), ReduceAllMean(Square(o.LoEnd)))
			o.Loss = Add(o.Loss, MulScalar(sq, reg*0.5))
		}
		return o
	}
	sp := span(p)
	n := ReduceSum(sp, 1)
	l := spanMean(NegLogSigmoid(Sub(p.HiScore, p.LoScore)), sp, n)
	if cost {
		l = Add(l, spanMean(NegLogSigmoid(Mul(col(ls), p.LoScore)), sp, n))
		l = Add(l, spanMean(NegLogSigmoid(Mul(col(hs), p.HiScore)), sp, n))
	}
	if reg > 0 {
		sq := Add(Square(p.HiScore), Square(p.LoScore))
		l = Add(l, MulScalar(spanMean(sq, sp, n), reg*0.5))
	}
	o.Loss = ReduceAllMean(l)
	return o
}

// LagrangeSGDStep is the reference's multiplier update (spec §1.7) on a scalar
// log λ given the [n] episode-cost window: log λ + lr·(mean(window) − d)·λ,
// capped at log λ_max (if lambdaMax > 0) and at maxLogLambda.
func LagrangeSGDStep(logLambda, window *Node, lr, threshold, lambdaMax, maxLogLambda float64) *Node {
	jc := ReduceAllMean(window)
	ll := Add(logLambda, Mul(MulScalar(AddScalar(jc, -threshold), lr), Exp(logLambda)))
	limit := maxLogLambda
	if lambdaMax > 0 {
		limit = math.Min(limit, math.Log(lambdaMax))
	}
	return MinScalar(ll, limit)
}

// NormalizerState is the state of a score normalizer as scalar nodes.
type NormalizerState struct{ Mean, Var, Count *Node }

// NormalizerUpdate merges a [n] batch into the state (reference
// RunningMeanStd / ExponentialMovingAverage .update; typ "" only counts), with
// the unbiased batch variance (0 when n = 1).
func NormalizerUpdate(s NormalizerState, batch *Node, typ string, momentum float64) NormalizerState {
	n := float64(batch.Shape().Size())
	bm := ReduceAllMean(batch)
	bv := ZerosLike(bm)
	if n > 1 {
		bv = DivScalar(ReduceAllSum(Square(Sub(batch, bm))), n-1)
	}
	out := NormalizerState{Mean: s.Mean, Var: s.Var, Count: AddScalar(s.Count, n)}
	switch typ {
	case "RunningMeanStd":
		delta := Sub(bm, s.Mean)
		tot := out.Count
		out.Mean = Add(s.Mean, Div(MulScalar(delta, n), tot))
		m2 := Add(Add(Mul(s.Var, s.Count), MulScalar(bv, n)), Mul(Square(delta), Div(MulScalar(s.Count, n), tot)))
		out.Var = Div(m2, tot)
	case "ExponentialMovingAverage":
		out.Mean = Add(MulScalar(s.Mean, momentum), MulScalar(bm, 1.0-momentum))
		out.Var = Add(MulScalar(s.Var, momentum), MulScalar(bv, 1.0-momentum))
	}
	return out
}

// Normalize applies a normalize function ("affine", "scale", "translate",
// "identity") with the state's μ and σ = sqrt(var).
func Normalize(x *Node, s NormalizerState, function string, epsilon float64) *Node {
	sd := AddScalar(Sqrt(s.Var), epsilon)
	switch function {
	case "affine":
		return Div(Sub(x, s.Mean), sd)
	case "scale":
		return Div(x, sd)
	case "translate":
		return Sub(x, s.Mean)
	}
	return x
}
