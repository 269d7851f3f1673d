package stages

import (
	"github.com/gomlx/gomlx/pkg/core/graph"
)

// negLogSigmoid is −log σ(x) = softplus(−x), computed stably, with the exact
// derivative −σ(−x) everywhere (−½ at 0, as PyTorch's logsigmoid).
func negLogSigmoid(x *graph.Node) *graph.Node {
	// Two branches, each evaluated only where it cannot overflow, joined by Where
	// (not Max/Abs, whose subgradient at exactly 0 would make the derivative −1
	// instead of −½ there: DPO's first step, policy = reference, has margins of
	// exactly 0): x < 0: log1p(exp(x)) − x; x ≥ 0: log1p(exp(−x)).
	zero := graph.ZerosLike(x)
	neg := graph.LessThan(x, zero)
	xa := graph.Where(neg, x, zero)
	xb := graph.Where(neg, zero, x)
	return graph.Where(neg, graph.Sub(graph.Log1p(graph.Exp(xa)), xa), graph.Log1p(graph.Exp(graph.Neg(xb))))
}

// signTerm is the cost model's sign loss −log σ(cost_sign·c), weighted by |cost_sign| so
// that a response without a safety label (sign 0) adds nothing.
func signTerm(sign, c *graph.Node) *graph.Node {
	return graph.Mul(graph.Abs(sign), negLogSigmoid(graph.Mul(sign, c)))
}

// SFTLoss is HF's causal-LM cross-entropy (spec §6): the mean of −log p(label) over
// the unmasked label tokens of the micro-batch. logp [B,T−1] holds log p(ids[t+1]),
// lossMask [B,T−1] is 1 where ids[t+1] is a label (labels ≠ −100), and the scalar den
// divides the sum: max(Σ lossMask, 1) in one process; with data parallelism the global
// micro-batch's label count over the world size, so the ranks' mean is its token mean.
func SFTLoss(logp, lossMask, den *graph.Node) *graph.Node {
	num := graph.ReduceAllSum(graph.Mul(logp, lossMask))
	return graph.Neg(graph.Div(num, graph.ConvertDType(den, num.DType())))
}

// PairLoss holds the outputs of PairwiseScoreLoss.
type PairLoss struct {
	Loss *graph.Node
	// Accuracy is mean 1[s_hi,end > s_lo,end] (strict, spec §4/§5).
	Accuracy *graph.Node
	// SignAccuracy is the cost model's mean over all 2B end costs of 1[cost_sign·c > 0] (nil without signs),
	// over the labelled responses only: SignCorrect / max(SignLabelled, 1).
	SignAccuracy              *graph.Node
	SignCorrect, SignLabelled *graph.Node
	// Hi and Lo are the end scores [B] of the rows that should score higher and lower.
	Hi, Lo *graph.Node
}

// PairwiseScoreLoss is the reward-model loss (spec §4) and, with costSigns, the
// cost-model loss (spec §5), on per-token scores of 2B rows: rows [0,B) should score
// higher (better response, or unsafer response for a cost model), rows [B,2B) lower.
//
//   - scores [2B,T] per-token score-head outputs;
//   - endOneHot [2B,T] is 1 at each row's last attention-mask index;
//   - span [B,T] (token-wise only, else nil) is 1 on [diverge index, max(end_hi,end_lo)];
//   - costSigns [2B] (cost model only, else nil) is cost_sign = −safety_sign of each row
//     (0 for a response without a safety label: its sign term is dropped).
//
// The L2 term is reg·mean of the squared scores involved (end scores, or the span's).
func PairwiseScoreLoss(scores, endOneHot, span, costSigns *graph.Node, reg float64) PairLoss {
	return WeightedPairwiseScoreLoss(scores, endOneHot, span, costSigns, reg, 1)
}

// WeightedPairwiseScoreLoss is PairwiseScoreLoss with the cost model's sign term scaled by
// signWeight (the reference's loss is signWeight 1).
func WeightedPairwiseScoreLoss(scores, endOneHot, span, costSigns *graph.Node, reg, signWeight float64) PairLoss {
	g := scores.Graph()
	dt := scores.DType()
	twoB, T := scores.Shape().Dim(0), scores.Shape().Dim(1)
	B := twoB / 2
	hiSel := graph.Const(g, [][]float32{{1}, {0}})
	loSel := graph.Const(g, [][]float32{{0}, {1}})
	if dt != hiSel.DType() {
		hiSel, loSel = graph.ConvertDType(hiSel, dt), graph.ConvertDType(loSel, dt)
	}
	// split [2B,...] into the first and second halves without Slice (which has no gradient on the Go backend).
	split := func(x *graph.Node) (*graph.Node, *graph.Node) {
		dims := append([]int{2, B}, x.Shape().Dimensions[1:]...)
		x2 := graph.Reshape(x, dims...)
		sel := func(s *graph.Node) *graph.Node {
			sd := append([]int{2, 1}, make([]int, len(dims)-2)...)
			for i := 2; i < len(sd); i++ {
				sd[i] = 1
			}
			return graph.ReduceSum(graph.Mul(x2, graph.Reshape(s, sd...)), 0)
		}
		return sel(hiSel), sel(loSel)
	}
	ends := graph.ReduceSum(graph.Mul(scores, endOneHot), 1) // [2B]
	hi, lo := split(ends)
	out := PairLoss{Hi: hi, Lo: lo}
	out.Accuracy = graph.ReduceAllMean(graph.ConvertDType(graph.GreaterThan(hi, lo), dt))
	var hiSign, loSign *graph.Node
	if costSigns != nil {
		hiSign, loSign = split(costSigns)
		// Rows with an unknown label (sign 0, e.g. hh-rlhf harmless pairs) never count as
		// correct and are left out of the denominator.
		signed := graph.Mul(ends, costSigns)
		correct := graph.ReduceAllSum(graph.ConvertDType(graph.GreaterThan(signed, graph.ZerosLike(signed)), dt))
		labelled := graph.ReduceAllSum(graph.Abs(costSigns))
		out.SignAccuracy = graph.Div(correct, graph.Max(labelled, graph.OnesLike(labelled)))
		out.SignCorrect, out.SignLabelled = correct, labelled
	}
	if span == nil {
		l := negLogSigmoid(graph.Sub(hi, lo))
		if costSigns != nil {
			l = graph.Add(l, graph.MulScalar(graph.Add(signTerm(hiSign, hi), signTerm(loSign, lo)), signWeight))
		}
		out.Loss = graph.ReduceAllMean(l)
		if reg > 0 {
			out.Loss = graph.Add(out.Loss, graph.MulScalar(graph.ReduceAllMean(graph.Square(ends)), reg))
		}
		return out
	}
	hiT, loT := split(scores)     // [B,T]
	n := graph.ReduceSum(span, 1) // [B]
	meanSpan := func(x *graph.Node) *graph.Node { return graph.Div(graph.ReduceSum(graph.Mul(x, span), 1), n) }
	l := meanSpan(negLogSigmoid(graph.Sub(hiT, loT)))
	if costSigns != nil {
		bc := func(s *graph.Node) *graph.Node { return graph.BroadcastToDims(graph.Reshape(s, B, 1), B, T) }
		l = graph.Add(l, graph.MulScalar(graph.Add(meanSpan(signTerm(bc(hiSign), hiT)), meanSpan(signTerm(bc(loSign), loT))), signWeight))
	}
	if reg > 0 {
		sq := graph.MulScalar(graph.Add(graph.Square(hiT), graph.Square(loT)), 0.5)
		l = graph.Add(l, graph.MulScalar(meanSpan(sq), reg))
	}
	out.Loss = graph.ReduceAllMean(l)
	return out
}
