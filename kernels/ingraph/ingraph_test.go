package ingraph_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/kernels/ingraph"
)

func newBackend(t *testing.T) backends.Backend {
	t.Helper()
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// run executes fn on float64 inputs (each with its dims) and returns the outputs as float64.
func run(t *testing.T, be backends.Backend, fn func(in []*graph.Node) []*graph.Node, ins ...any) [][]float64 {
	t.Helper()
	e, err := graph.NewExec(be, fn)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Finalize()
	res, err := e.Exec(ins...)
	if err != nil {
		t.Fatal(err)
	}
	out := make([][]float64, len(res))
	for i, r := range res {
		out[i] = tensors.MustCopyFlatData[float64](r)
	}
	return out
}

func tt(x []float64, dims ...int) *tensors.Tensor {
	return tensors.FromFlatDataAndDimensions(x, dims...)
}

func randn(rng *rand.Rand, n int, s float64) []float64 {
	x := make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64() * s
	}
	return x
}

// rollout builds a [B,L] sequence mask with left padding before start, a
// random response length and right padding; row 1 is made all zero.
func rollout(rng *rand.Rand, B, L, start int) []float64 {
	m := make([]float64, B*L)
	for i := range B {
		if i == 1 {
			continue
		}
		p := rng.IntN(start + 1)
		end := start + rng.IntN(L-start)
		for t := p; t <= end; t++ {
			m[i*L+t] = 1
		}
	}
	return m
}

func slice(x []float64, B, L, start int) []float64 {
	y := make([]float64, 0, B*(L-start))
	for i := range B {
		y = append(y, x[i*L+start:(i+1)*L]...)
	}
	return y
}

func near(t *testing.T, what string, got, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range got {
		if d := math.Abs(got[i] - want[i]); !(d <= tol*math.Max(1, math.Abs(want[i]))) {
			t.Fatalf("%s[%d] = %v, want %v (diff %.3g)", what, i, got[i], want[i], d)
		}
	}
}

// TestPPOLagEqualsCPU runs KL shaping, fused GAE, both actor losses and the
// critic loss as graphs and compares values and gradients with the CPU kernels,
// on rows that include an all-zero mask; the losses also run full-width with a ResponseMask.
func TestPPOLagEqualsCPU(t *testing.T) {
	be := newBackend(t)
	rng := rand.New(rand.NewPCG(7, 8))
	B, L, S := 5, 23, 6
	N := L - S
	m := rollout(rng, B, L, S)
	lp, ref, newLP := randn(rng, B*L, 0.5), randn(rng, B*L, 0.5), randn(rng, B*L, 0.5)
	vr, vc, nvr := randn(rng, B*L, 1), randn(rng, B*L, 1), randn(rng, B*L, 1)
	reward, cost := randn(rng, B, 2), randn(rng, B, 2)
	const beta, clipS, eps, clipV, lam = 0.3, 1.5, 0.2, 0.4, 0.8

	// CPU.
	rw, cs := make([]float64, B*L), make([]float64, B*L)
	st, err := kernels.KLShapedRewardsCosts(nil, kernels.KLArgs[float64]{B: B, L: L, KLCoeff: beta, ClipRangeScore: clipS, Start: S,
		Reward: reward, Cost: cost, LogProbs: lp, RefLogProbs: ref, SeqMask: m}, rw, cs)
	if err != nil {
		t.Fatal(err)
	}
	o := kernels.NewGAEOut[float64](B, N, true)
	if err := kernels.GAE(nil, kernels.GAEArgs[float64]{B: B, L: L, Start: S, Gamma: 0.99, Lambda: 0.95, RewardValues: vr, Rewards: rw,
		CostValues: vc, Costs: cs, SeqMask: m}, o); err != nil {
		t.Fatal(err)
	}
	ms := slice(m, B, L, S)
	ga, gp, gc := make([]float64, B*N), make([]float64, B*N), make([]float64, B*N)
	ar, err := kernels.ActorLossPPOLag(nil, kernels.ActorArgs[float64]{B: B, N: N, ClipRatio: eps, Lambda: lam, LogProbs: slice(newLP, B, L, S),
		OldLogProbs: slice(lp, B, L, S), RewardAdv: o.RewardAdv, CostAdv: o.CostAdv, Mask: ms}, ga)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := kernels.ActorLossPPO(nil, kernels.ActorArgs[float64]{B: B, N: N, ClipRatio: eps, LogProbs: slice(newLP, B, L, S),
		OldLogProbs: slice(lp, B, L, S), RewardAdv: o.RewardAdv, Mask: ms}, gp)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kernels.CriticLoss(nil, kernels.CriticArgs[float64]{B: B, N: N, ClipValue: clipV, Values: slice(nvr, B, L, S),
		OldValues: slice(vr, B, L, S), Returns: o.RewardRet, Mask: ms}, gc)
	if err != nil {
		t.Fatal(err)
	}

	// Graph, sliced inputs.
	g := run(t, be, func(in []*graph.Node) []*graph.Node {
		k := ingraph.KLShaped(in[0], in[1], in[2], in[3], in[4], beta, clipS, S)
		gae := ingraph.GAE(in[5], k.Rewards, in[6], k.Costs, in[2], S, 0.99, 0.95)
		newLPs, oldLPs, nv, ov, msk := in[7], in[8], in[9], in[10], in[11]
		a := ingraph.ActorLossPPOLag(newLPs, oldLPs, gae.RewardAdv, gae.CostAdv, msk, graph.Const(newLPs.Graph(), lam), eps)
		p := ingraph.ActorLossPPO(newLPs, oldLPs, gae.RewardAdv, msk, eps)
		c := ingraph.CriticLoss(nv, ov, gae.RewardRet, msk, clipV)
		grads := graph.Gradient(a.Loss, newLPs)
		grads = append(grads, graph.Gradient(p.Loss, newLPs)...)
		grads = append(grads, graph.Gradient(c, nv)...)
		return append([]*graph.Node{k.Rewards, k.Costs, k.KL, k.RewardWithKLPenalty, gae.RewardAdv, gae.RewardRet, gae.CostAdv, gae.CostRet,
			a.Loss, a.ClipFrac, a.ApproxKL, p.Loss, c}, grads...)
	}, tt(lp, B, L), tt(ref, B, L), tt(m, B, L), tt(reward, B), tt(cost, B), tt(vr, B, L), tt(vc, B, L),
		tt(slice(newLP, B, L, S), B, N), tt(slice(lp, B, L, S), B, N), tt(slice(nvr, B, L, S), B, N), tt(slice(vr, B, L, S), B, N), tt(ms, B, N))
	const tol = 1e-12
	near(t, "rewards", g[0], rw, tol)
	near(t, "costs", g[1], cs, tol)
	near(t, "kl", g[2], []float64{st.KL}, tol)
	near(t, "reward_with_kl_penalty", g[3], []float64{st.RewardWithKLPenalty}, tol)
	near(t, "reward_adv", g[4], o.RewardAdv, tol)
	near(t, "reward_ret", g[5], o.RewardRet, tol)
	near(t, "cost_adv", g[6], o.CostAdv, tol)
	near(t, "cost_ret", g[7], o.CostRet, tol)
	near(t, "actor lag loss/clipfrac/approxkl", []float64{g[8][0], g[9][0], g[10][0]}, []float64{ar.Loss, ar.ClipFrac, ar.ApproxKL}, tol)
	near(t, "actor ppo loss", g[11], []float64{pr.Loss}, tol)
	near(t, "critic loss", g[12], []float64{cl}, tol)
	near(t, "actor lag grad", g[13], ga, tol)
	near(t, "actor ppo grad", g[14], gp, tol)
	near(t, "critic grad", g[15], gc, tol)

	// Full width [B,L] with a ResponseMask: same losses, no Slice in the differentiated path.
	advFull := make([]float64, B*L)
	costFull := make([]float64, B*L)
	retFull := make([]float64, B*L)
	for i := range B {
		copy(advFull[i*L+S:(i+1)*L], o.RewardAdv[i*N:(i+1)*N])
		copy(costFull[i*L+S:(i+1)*L], o.CostAdv[i*N:(i+1)*N])
		copy(retFull[i*L+S:(i+1)*L], o.RewardRet[i*N:(i+1)*N])
	}
	f := run(t, be, func(in []*graph.Node) []*graph.Node {
		rm := ingraph.ResponseMask(in[2], S)
		a := ingraph.ActorLossPPOLag(in[0], in[1], in[3], in[4], rm, graph.Const(in[0].Graph(), lam), eps)
		c := ingraph.CriticLoss(in[5], in[6], in[7], rm, clipV)
		return []*graph.Node{a.Loss, c, graph.Gradient(a.Loss, in[0])[0], graph.Gradient(c, in[5])[0]}
	}, tt(newLP, B, L), tt(lp, B, L), tt(m, B, L), tt(advFull, B, L), tt(costFull, B, L), tt(nvr, B, L), tt(vr, B, L), tt(retFull, B, L))
	near(t, "full-width actor loss", f[0], []float64{ar.Loss}, tol)
	near(t, "full-width critic loss", f[1], []float64{cl}, tol)
	near(t, "full-width actor grad", slice(f[2], B, L, S), ga, tol)
	near(t, "full-width critic grad", slice(f[3], B, L, S), gc, tol)
	for i := range B {
		for j := range S {
			if f[2][i*L+j] != 0 || f[3][i*L+j] != 0 {
				t.Fatalf("gradient in the prompt region at [%d,%d]", i, j)
			}
		}
	}
}

// pairData builds a preference batch: a shared prompt prefix, then differing
// answers of different lengths, right padded with id 0.
func pairData(rng *rand.Rand, B, T int) (hiIDs, loIDs []int32, hiM, loM []float64) {
	hiIDs, loIDs = make([]int32, B*T), make([]int32, B*T)
	hiM, loM = make([]float64, B*T), make([]float64, B*T)
	for i := range B {
		p := 1 + rng.IntN(T/2)
		lh, ll := p+1+rng.IntN(T-p-1), p+1+rng.IntN(T-p-1)
		for t := range T {
			if t < lh {
				hiM[i*T+t] = 1
				hiIDs[i*T+t] = int32(1 + rng.IntN(50))
			}
			if t < ll {
				loM[i*T+t] = 1
				loIDs[i*T+t] = int32(1 + rng.IntN(50))
			}
			if t < p {
				loIDs[i*T+t] = hiIDs[i*T+t]
			}
		}
		loIDs[i*T+p] = hiIDs[i*T+p] + 100 // diverge exactly at p
	}
	return
}

// TestPairLossesEqualCPU compares the RM and CM losses (both loss types, with
// and without regularisation) with the CPU kernels, and their score gradients
// with central differences of the CPU loss.
func TestPairLossesEqualCPU(t *testing.T) {
	be := newBackend(t)
	rng := rand.New(rand.NewPCG(9, 10))
	B, T := 4, 12
	hiIDs, loIDs, hiM, loM := pairData(rng, B, T)
	hi, lo := randn(rng, B*T, 2), randn(rng, B*T, 2)
	hiSign, loSign := []float64{-1, -1, 1, -1}, []float64{1, -1, 1, 1}
	ti := func(x []int32) *tensors.Tensor { return tensors.FromFlatDataAndDimensions(x, B, T) }
	for _, cost := range []bool{false, true} {
		for _, lt := range []kernels.LossType{kernels.SequenceWise, kernels.TokenWise} {
			for _, reg := range []float64{0, 0.1} {
				cpu := func(hi, lo []float64) (loss, acc, sacc float64, he, le []float64) {
					he, le = make([]float64, B), make([]float64, B)
					var err error
					if cost {
						var r kernels.CostLossResult
						r, err = kernels.CostLoss(nil, kernels.SafetyPreferenceArgs[float64]{B: B, T: T, LossType: lt, Regularization: reg,
							SaferIDs: loIDs, UnsaferIDs: hiIDs, SaferMask: loM, UnsaferMask: hiM, SaferScores: lo, UnsaferScores: hi,
							SaferSign: loSign, UnsaferSign: hiSign}, le, he)
						loss, acc, sacc = r.Loss, r.Accuracy, r.SignAccuracy
					} else {
						var r kernels.RewardLossResult
						r, err = kernels.RewardLoss(nil, kernels.PreferenceArgs[float64]{B: B, T: T, LossType: lt, Regularization: reg,
							BetterIDs: hiIDs, WorseIDs: loIDs, BetterMask: hiM, WorseMask: loM, BetterScores: hi, WorseScores: lo}, he, le)
						loss, acc = r.Loss, r.Accuracy
					}
					if err != nil {
						t.Fatal(err)
					}
					return
				}
				g := run(t, be, func(in []*graph.Node) []*graph.Node {
					p := ingraph.PairInputs{HiIDs: in[0], LoIDs: in[1], HiMask: in[2], LoMask: in[3], HiScore: in[4], LoScore: in[5]}
					var o ingraph.PairOut
					if cost {
						o = ingraph.CostLoss(p, in[6], in[7], lt == kernels.TokenWise, reg)
					} else {
						o = ingraph.RewardLoss(p, lt == kernels.TokenWise, reg)
						o.SignAccuracy = o.Accuracy
					}
					gr := graph.Gradient(o.Loss, in[4], in[5])
					return []*graph.Node{o.Loss, o.Accuracy, o.SignAccuracy, o.HiEnd, o.LoEnd, gr[0], gr[1]}
				}, ti(hiIDs), ti(loIDs), tt(hiM, B, T), tt(loM, B, T), tt(hi, B, T), tt(lo, B, T), tt(hiSign, B), tt(loSign, B))
				loss, acc, sacc, he, le := cpu(hi, lo)
				name := func(s string) string {
					return s + " cost=" + map[bool]string{false: "0", true: "1"}[cost] + " " + string(lt)
				}
				near(t, name("loss"), g[0], []float64{loss}, 1e-12)
				near(t, name("accuracy"), g[1], []float64{acc}, 1e-12)
				if cost {
					near(t, name("sign accuracy"), g[2], []float64{sacc}, 1e-12)
				}
				near(t, name("hi end"), g[3], he, 1e-12)
				near(t, name("lo end"), g[4], le, 1e-12)
				for k, x := range [][]float64{hi, lo} {
					num := make([]float64, B*T)
					for i := range x {
						v, h := x[i], 1e-6
						x[i] = v + h
						p, _, _, _, _ := cpu(hi, lo)
						x[i] = v - h
						q, _, _, _, _ := cpu(hi, lo)
						x[i] = v
						num[i] = (p - q) / (2 * h)
					}
					near(t, name("score gradient"), g[5+k], num, 1e-6)
				}
			}
		}
	}
}

func TestMaskedMeanAndEndScores(t *testing.T) {
	be := newBackend(t)
	x := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9}
	m := []float64{1, 1, 0, 0, 0, 0, 0, 1, 1}
	g := run(t, be, func(in []*graph.Node) []*graph.Node {
		return []*graph.Node{ingraph.MaskedMean(in[0], in[1]), ingraph.EndScores(in[1], in[0]), ingraph.EndIndex(in[1])}
	}, tt(x, 3, 3), tt(m, 3, 3))
	want, _ := kernels.MaskedMean(nil, x, m, 3, 3)
	near(t, "masked mean", g[0], []float64{want}, 1e-15)
	near(t, "end scores", g[1], []float64{2, 0, 9}, 0)
	near(t, "end index", g[2], []float64{1, -1, 2}, 0)
}

func TestNegLogSigmoid(t *testing.T) {
	be := newBackend(t)
	xs := []float64{-800, -40, -30, -29.9, -1, 0, 1e-3, 3, 50, 800}
	g := run(t, be, func(in []*graph.Node) []*graph.Node {
		y := ingraph.NegLogSigmoid(in[0])
		return []*graph.Node{y, graph.Gradient(graph.ReduceAllSum(y), in[0])[0]}
	}, tt(xs, len(xs)))
	for i, x := range xs {
		want := -math.Min(x, 0) + math.Log1p(math.Exp(-math.Abs(x)))
		dwant := 1/(1+math.Exp(-x)) - 1
		if math.Abs(g[0][i]-want) > 1e-12*math.Max(1, want) || math.Abs(g[1][i]-dwant) > 1e-12 {
			t.Errorf("x=%v: −logσ = %v (want %v), gradient %v (want %v)", x, g[0][i], want, g[1][i], dwant)
		}
	}
}

// TestPPOLagStepComposite checks the one-graph step against the separate graph
// functions (sliced), including the gradients.
func TestPPOLagStepComposite(t *testing.T) {
	be := newBackend(t)
	rng := rand.New(rand.NewPCG(11, 12))
	B, L, S := 4, 17, 5
	N := L - S
	m := rollout(rng, B, L, S)
	ins := []any{tt(m, B, L), tt(randn(rng, B, 2), B), tt(randn(rng, B, 2), B)}
	for range 7 {
		ins = append(ins, tt(randn(rng, B*L, 0.5), B, L))
	}
	cfg := ingraph.RLStepConfig{KLCoeff: 0.1, ClipRangeScore: 3, ClipRatio: 0.2, ClipValue: 0.3, Gamma: 1, GAELambda: 0.95, Start: S}
	g := run(t, be, func(in []*graph.Node) []*graph.Node {
		lam := graph.Const(in[0].Graph(), 0.6)
		o := ingraph.PPOLagStep(ingraph.RLStepInputs{SeqMask: in[0], Reward: in[1], Cost: in[2], OldLogProbs: in[3], RefLogProbs: in[4], LogProbs: in[5],
			OldRewardValues: in[6], OldCostValues: in[7], RewardValues: in[8], CostValues: in[9], Lambda: lam}, cfg)
		total := graph.Add(o.Actor.Loss, graph.Add(o.RewardCriticLoss, o.CostCriticLoss))
		gr := graph.Gradient(total, in[5], in[8], in[9])
		// The same through the sliced functions.
		k := ingraph.KLShaped(in[3], in[4], in[0], in[1], in[2], cfg.KLCoeff, cfg.ClipRangeScore, S)
		ga := ingraph.GAE(in[6], k.Rewards, in[7], k.Costs, in[0], S, cfg.Gamma, cfg.GAELambda)
		sl := func(x *graph.Node) *graph.Node { return graph.SliceAxis(x, 1, graph.AxisRange(S)) }
		ms := sl(in[0])
		a := ingraph.ActorLossPPOLag(sl(in[5]), sl(in[3]), ga.RewardAdv, ga.CostAdv, ms, lam, cfg.ClipRatio)
		rc := ingraph.CriticLoss(sl(in[8]), sl(in[6]), ga.RewardRet, ms, cfg.ClipValue)
		cc := ingraph.CriticLoss(sl(in[9]), sl(in[7]), ga.CostRet, ms, cfg.ClipValue)
		return []*graph.Node{o.Actor.Loss, o.RewardCriticLoss, o.CostCriticLoss, sl(o.GAE.CostAdv), a.Loss, rc, cc, ga.CostAdv,
			gr[0], gr[1], gr[2]}
	}, ins...)
	near(t, "actor", g[0], g[4], 1e-12)
	near(t, "reward critic", g[1], g[5], 1e-12)
	near(t, "cost critic", g[2], g[6], 1e-12)
	near(t, "cost adv", g[3], g[7], 1e-12)
	for k := 8; k <= 10; k++ {
		nz := 0
		for i, v := range g[k] {
			if i%L < S && v != 0 {
				t.Fatalf("gradient %d non-zero in the prompt region", k)
			}
			if v != 0 {
				nz++
			}
		}
		if nz == 0 {
			t.Errorf("gradient %d is all zero", k)
		}
	}
	_ = N
}
