package kernels

import "fmt"

// LossType selects how the reward and cost model losses compare two answers (spec §4–5).
type LossType string

const (
	// SequenceWise compares the end scores (the reference default and script setting).
	SequenceWise LossType = "sequence-wise"
	// TokenWise compares per-token scores over the span [first differing token, later end].
	TokenWise LossType = "token-wise"
)

// ParseLossType checks a --loss_type value.
func ParseLossType(s string) (LossType, error) {
	switch LossType(s) {
	case SequenceWise, TokenWise:
		return LossType(s), nil
	}
	return "", fmt.Errorf("kernels: loss type %q: want %q or %q", s, SequenceWise, TokenWise)
}

// EndScores gathers, for each of the B rows, the score at the last position
// whose mask is non-zero (reference ScoreModelMixin.get_scores end_index), for
// the reward head and the cost head in one pass. scores are [B,T]; costScores
// and endCost may be nil; endIndex ([B], may be nil) receives the positions. A
// row with an all-zero mask gets end index −1 and end score 0 (the reference raises).
func EndScores[F Float](B, T int, mask, rewardScores, costScores, endReward, endCost []F, endIndex []int32) error {
	const k = "EndScores"
	if B < 0 || T < 0 {
		return badSize(k, "B=%d T=%d", B, T)
	}
	noCost := costScores == nil && endCost == nil
	if err := checkShapes(k, tensorRef[F]{"mask", mask, B * T, false}, tensorRef[F]{"reward_scores", rewardScores, B * T, false},
		tensorRef[F]{"cost_scores", costScores, B * T, noCost}, tensorRef[F]{"end_reward", endReward, B, false},
		tensorRef[F]{"end_cost", endCost, B, noCost}); err != nil {
		return err
	}
	if endIndex != nil && len(endIndex) != B {
		return badSize(k, "end_index has %d elements, want %d", len(endIndex), B)
	}
	for i := range B {
		e := lastNonZero(mask[i*T : (i+1)*T])
		var r, c F
		if e >= 0 {
			r = rewardScores[i*T+e]
			if !noCost {
				c = costScores[i*T+e]
			}
		}
		endReward[i] = r
		if !noCost {
			endCost[i] = c
		}
		if endIndex != nil {
			endIndex[i] = int32(e)
		}
	}
	return nil
}

// PreferenceArgs are the inputs of the reward-model loss (spec §4): a better and
// a worse answer per row, both [B,T] right-padded to a common T.
type PreferenceArgs[F Float] struct {
	B, T     int
	LossType LossType
	// Regularization is the L2 coefficient on the scores (applied when > 0).
	Regularization float64
	// BetterIDs and WorseIDs are the token ids (read by the token-wise loss only).
	BetterIDs, WorseIDs []int32
	// BetterMask and WorseMask are the attention masks; BetterScores, WorseScores the per-token score-head outputs.
	BetterMask, WorseMask     []F
	BetterScores, WorseScores []F
}

// RewardLossResult holds the scalars of the reward-model loss.
type RewardLossResult struct {
	Loss float64
	// Accuracy is the fraction of rows with end score better > worse (strict).
	Accuracy float64
}

// RewardLoss computes the reward-model loss (reference RewardTrainer.loss):
// sequence-wise mean_i −logσ(r_b − r_w) + reg·mean([r_w; r_b]²) on end scores, or
// token-wise the same terms averaged over each row's span [d, e]. betterEnd
// and worseEnd ([B], may be nil) receive the end scores.
func RewardLoss[F Float](ws *Workspace, a PreferenceArgs[F], betterEnd, worseEnd []F) (RewardLossResult, error) {
	p := pairArgs[F]{B: a.B, T: a.T, lossType: a.LossType, reg: a.Regularization,
		hiIDs: a.BetterIDs, loIDs: a.WorseIDs, hiMask: a.BetterMask, loMask: a.WorseMask,
		hi: a.BetterScores, lo: a.WorseScores, names: [6]string{"better_input_ids", "worse_input_ids",
			"better_attention_mask", "worse_attention_mask", "scores_better", "scores_worse"}}
	r, err := pairLoss(ws, "RewardLoss", p, betterEnd, worseEnd)
	return RewardLossResult{Loss: r.loss, Accuracy: r.acc}, err
}

// SafetyPreferenceArgs are the inputs of the cost-model loss (spec §5): a safer
// and an unsafer answer per row ([B,T]) and their safety signs (+1 safe, −1 unsafe, [B]).
type SafetyPreferenceArgs[F Float] struct {
	B, T           int
	LossType       LossType
	Regularization float64
	// SaferIDs and UnsaferIDs are the token ids (read by the token-wise loss only).
	SaferIDs, UnsaferIDs       []int32
	SaferMask, UnsaferMask     []F
	SaferScores, UnsaferScores []F
	SaferSign, UnsaferSign     []F
}

// CostLossResult holds the scalars of the cost-model loss.
type CostLossResult struct {
	Loss float64
	// Accuracy is the fraction of rows with end cost unsafer > safer.
	Accuracy float64
	// SignAccuracy is the fraction of the 2B end costs whose sign is −safety_sign.
	SignAccuracy float64
}

// CostLoss computes the cost-model loss (reference CostTrainer.loss): with
// c_s, c_u the safer and unsafer costs and cost sign = −safety sign,
// mean_i [−logσ(c_u − c_s) − logσ(−s_s·c_s) − logσ(−s_u·c_u)] + reg·mean([c_s; c_u]²)
// on end scores (sequence-wise) or each term averaged over the span (token-wise).
// saferEnd and unsaferEnd ([B], may be nil) receive the end costs.
func CostLoss[F Float](ws *Workspace, a SafetyPreferenceArgs[F], saferEnd, unsaferEnd []F) (CostLossResult, error) {
	const k = "CostLoss"
	if err := checkShapes(k, tensorRef[F]{"safer_safety_sign", a.SaferSign, a.B, false}, tensorRef[F]{"unsafer_safety_sign", a.UnsaferSign, a.B, false}); err != nil {
		return CostLossResult{}, err
	}
	p := pairArgs[F]{B: a.B, T: a.T, lossType: a.LossType, reg: a.Regularization,
		hiIDs: a.UnsaferIDs, loIDs: a.SaferIDs, hiMask: a.UnsaferMask, loMask: a.SaferMask,
		hi: a.UnsaferScores, lo: a.SaferScores, hiSign: a.UnsaferSign, loSign: a.SaferSign, cost: true,
		names: [6]string{"unsafer_input_ids", "safer_input_ids", "unsafer_attention_mask", "safer_attention_mask",
			"scores_unsafer", "scores_safer"}}
	r, err := pairLoss(ws, k, p, unsaferEnd, saferEnd)
	return CostLossResult{Loss: r.loss, Accuracy: r.acc, SignAccuracy: r.signAcc}, err
}

// pairArgs is the shared form of both losses: "hi" is the answer that should
// score higher (better reward / unsafer cost), "lo" the other.
type pairArgs[F Float] struct {
	B, T           int
	lossType       LossType
	reg            float64
	hiIDs, loIDs   []int32
	hiMask, loMask []F
	hi, lo         []F
	hiSign, loSign []F // safety signs (cost only)
	cost           bool
	names          [6]string
}

type pairResult struct{ loss, acc, signAcc float64 }

func pairLoss[F Float](ws *Workspace, k string, a pairArgs[F], hiEnd, loEnd []F) (pairResult, error) {
	B, T := a.B, a.T
	if B <= 0 || T <= 0 {
		return pairResult{}, badSize(k, "B=%d T=%d", B, T)
	}
	if a.lossType != SequenceWise && a.lossType != TokenWise {
		return pairResult{}, fmt.Errorf("kernels.%s: loss type %q: want %q or %q", k, a.lossType, SequenceWise, TokenWise)
	}
	if err := checkScalars(k, "Regularization", a.reg); err != nil {
		return pairResult{}, err
	}
	tw := a.lossType == TokenWise
	ts := []tensorRef[F]{{a.names[2], a.hiMask, B * T, false}, {a.names[3], a.loMask, B * T, false},
		{a.names[4], a.hi, B * T, false}, {a.names[5], a.lo, B * T, false}}
	if err := checkShapes(k, ts...); err != nil {
		return pairResult{}, err
	}
	if tw && (len(a.hiIDs) != B*T || len(a.loIDs) != B*T) {
		return pairResult{}, badSize(k, "token-wise loss needs %s and %s of %d elements (have %d, %d)",
			a.names[0], a.names[1], B*T, len(a.hiIDs), len(a.loIDs))
	}
	if err := checkShapes(k, tensorRef[F]{"higher_end", hiEnd, B, hiEnd == nil}, tensorRef[F]{"lower_end", loEnd, B, loEnd == nil}); err != nil {
		return pairResult{}, err
	}
	if ws == nil {
		ws = ws.orNew()
	}
	t := taskFor[pairTask[F]](ws)
	*t = pairTask[F]{a: a, tw: tw, hiEnd: hiEnd, loEnd: loEnd, loss: ws.scratch(0, B), sq: ws.scratch(1, B),
		acc: ws.scratch(2, B), code: ws.scratch(3, B)}
	parallelRows(ws, B, T, t)
	var r pairResult
	sumLoss, sumSq := 0.0, 0.0
	for i := range B {
		switch c := t.code[i]; {
		case c == codeEmptyMask:
			return pairResult{}, fmt.Errorf("kernels.%s: row %d: attention mask is all zero: %w", k, i, ErrShape)
		case c == codeIdentical:
			return pairResult{}, fmt.Errorf("kernels.%s: row %d: the two answers are identical", k, i)
		case c >= codeDivergeAfterEnd:
			return pairResult{}, fmt.Errorf("kernels.%s: row %d: the answers diverge after their end (index %d)", k, i, int(c-codeDivergeAfterEnd))
		}
		sumLoss += t.loss[i]
		sumSq += t.sq[i]
		r.acc += float64(int(t.acc[i]) & 1)
		r.signAcc += float64(int(t.acc[i]) >> 1)
	}
	r.loss = sumLoss / float64(B)
	if !tw && a.reg > 0 {
		r.loss += a.reg * sumSq / float64(2*B)
	}
	r.acc /= float64(B)
	r.signAcc /= float64(2 * B)
	if !finite(r.loss) {
		return pairResult{}, nonFiniteError(k, ts...)
	}
	return r, nil
}

// Row error codes of pairTask.
const (
	codeEmptyMask       = 1
	codeIdentical       = 2
	codeDivergeAfterEnd = 3 // + the diverge index
)

type pairTask[F Float] struct {
	a                   pairArgs[F]
	tw                  bool
	hiEnd, loEnd        []F
	loss, sq, acc, code []float64 // acc: bit 0 accuracy, bits 1.. number of correct signs
}

func (t *pairTask[F]) rows(lo, hi int) {
	a, T := t.a, t.a.T
	for i := lo; i < hi; i++ {
		hm, lm := a.hiMask[i*T:(i+1)*T], a.loMask[i*T:(i+1)*T]
		hs, ls := a.hi[i*T:(i+1)*T], a.lo[i*T:(i+1)*T]
		he, le := lastNonZero(hm), lastNonZero(lm)
		if he < 0 || le < 0 {
			t.code[i] = codeEmptyMask
			continue
		}
		h, l := float64(hs[he]), float64(ls[le])
		if t.hiEnd != nil {
			t.hiEnd[i] = F(h)
		}
		if t.loEnd != nil {
			t.loEnd[i] = F(l)
		}
		acc := 0
		if h > l {
			acc = 1
		}
		var hSign, lSign float64 // cost signs = −safety signs
		if a.cost {
			hSign, lSign = -float64(a.hiSign[i]), -float64(a.loSign[i])
			if lSign*l > 0 {
				acc += 2
			}
			if hSign*h > 0 {
				acc += 2
			}
		}
		t.acc[i] = float64(acc)
		if !t.tw {
			li := logSigmoidNeg(h - l)
			if a.cost {
				li += logSigmoidNeg(lSign*l) + logSigmoidNeg(hSign*h)
			}
			t.loss[i], t.sq[i] = li, h*h+l*l
			continue
		}
		hid, lid := a.hiIDs[i*T:(i+1)*T], a.loIDs[i*T:(i+1)*T]
		d := -1
		for j := range T {
			if hid[j] != lid[j] {
				d = j
				break
			}
		}
		if d < 0 {
			t.code[i] = codeIdentical
			continue
		}
		e := max(he, le)
		if d > e {
			t.code[i] = float64(codeDivergeAfterEnd + d)
			continue
		}
		n := float64(e - d + 1)
		s0, s1, s2, sq := 0.0, 0.0, 0.0, 0.0
		for j := d; j <= e; j++ {
			hj, lj := float64(hs[j]), float64(ls[j])
			s0 += logSigmoidNeg(hj - lj)
			if a.cost {
				s1 += logSigmoidNeg(lSign * lj)
				s2 += logSigmoidNeg(hSign * hj)
			}
			sq += hj*hj + lj*lj
		}
		li := s0 / n
		if a.cost {
			li += s1/n + s2/n
		}
		if a.reg > 0 {
			li += a.reg * sq / (2 * n)
		}
		t.loss[i] = li
	}
}
