package cuda

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/native"
)

// poisonBits is a quiet NaN: outputs are filled with it before a kernel runs,
// so an element the kernel forgets to write shows up in any comparison.
const poisonBits = 0x7fc00000

// devScope uploads inputs and allocates outputs for one host call, and frees them all.
type devScope struct {
	cu   *native.CUDA
	ptrs []Ptr
	err  error
}

func (s *devScope) free() {
	for _, p := range s.ptrs {
		s.cu.Free(p)
	}
}

// in uploads x (nil: null pointer) after checking it holds n elements.
func in[T native.Elem](s *devScope, name string, x []T, n int) Ptr {
	if s.err != nil || x == nil {
		return 0
	}
	if len(x) != n {
		s.err = fmt.Errorf("kernels/cuda: %s has %d elements, want %d: %w", name, len(x), n, kernels.ErrShape)
		return 0
	}
	p, err := native.Upload(s.cu, x)
	if err != nil {
		s.err = err
		return 0
	}
	s.ptrs = append(s.ptrs, p)
	return p
}

// out allocates room for x (nil: null pointer) and fills it with NaN bits.
func out[T native.Elem](s *devScope, name string, x []T, n int) Ptr {
	if s.err != nil || x == nil {
		return 0
	}
	if len(x) != n {
		s.err = fmt.Errorf("kernels/cuda: %s has %d elements, want %d: %w", name, len(x), n, kernels.ErrShape)
		return 0
	}
	var z T
	words := (max(n, 1)*int(unsafe.Sizeof(z)) + 3) / 4
	p, err := s.cu.Alloc(words * 4)
	if err != nil {
		s.err = err
		return 0
	}
	s.ptrs = append(s.ptrs, p)
	if err := s.cu.Memset32(p, poisonBits, words); err != nil {
		s.err = err
	}
	return p
}

// back downloads device memory p into x (nothing if x is nil).
func back[T native.Elem](s *devScope, x []T, p Ptr) {
	if s.err != nil || x == nil {
		return
	}
	s.err = native.CopyFromDevice(s.cu, x, p)
}

// KLShapedRewardsCostsHost is KLShapedRewardsCosts on host slices, with the
// signature of kernels.KLShapedRewardsCosts; costs == nil gives KLShapedRewards.
func (k *Kernels) KLShapedRewardsCostsHost(a kernels.KLArgs[float32], rewards, costs []float32) (kernels.KLStats, error) {
	s := &devScope{cu: k.cu}
	defer s.free()
	B, L := a.B, a.L
	cost := a.Cost
	if costs == nil {
		cost = nil
	}
	d := KLArgs{B: B, L: L, Start: a.Start, KLCoeff: a.KLCoeff, ClipRangeScore: a.ClipRangeScore,
		Reward: in(s, "reward", a.Reward, B), Cost: in(s, "cost", cost, B),
		LogProbs: in(s, "log_probs", a.LogProbs, B*L), RefLogProbs: in(s, "ref_log_probs", a.RefLogProbs, B*L),
		SeqMask: in(s, "sequence_mask", a.SeqMask, B*L)}
	dr, dc := out(s, "rewards", rewards, B*L), out(s, "costs", costs, B*L)
	if s.err != nil {
		return kernels.KLStats{}, s.err
	}
	st, err := k.KLShapedRewardsCosts(d, dr, dc)
	if err != nil {
		return st, err
	}
	back(s, rewards, dr)
	back(s, costs, dc)
	return st, s.err
}

// GAEHost is GAE on host slices, with the signature of kernels.GAE.
func (k *Kernels) GAEHost(a kernels.GAEArgs[float32], o kernels.GAEOut[float32]) error {
	s := &devScope{cu: k.cu}
	defer s.free()
	B, L, N := a.B, a.L, a.L-a.Start
	if N < 0 || B < 0 {
		return fmt.Errorf("kernels/cuda: GAE: B=%d L=%d Start=%d: %w", B, L, a.Start, kernels.ErrShape)
	}
	d := GAEArgs{B: B, L: L, Start: a.Start, Gamma: a.Gamma, Lambda: a.Lambda,
		RewardValues: in(s, "reward_values", a.RewardValues, B*L), Rewards: in(s, "rewards", a.Rewards, B*L),
		CostValues: in(s, "cost_values", a.CostValues, B*L), Costs: in(s, "costs", a.Costs, B*L),
		SeqMask: in(s, "sequence_mask", a.SeqMask, B*L)}
	do := GAEOut{RewardAdv: out(s, "reward_advantages", o.RewardAdv, B*N), RewardRet: out(s, "reward_returns", o.RewardRet, B*N),
		CostAdv: out(s, "cost_advantages", o.CostAdv, B*N), CostRet: out(s, "cost_returns", o.CostRet, B*N)}
	if s.err != nil {
		return s.err
	}
	if err := k.GAE(d, do); err != nil {
		return err
	}
	back(s, o.RewardAdv, do.RewardAdv)
	back(s, o.RewardRet, do.RewardRet)
	back(s, o.CostAdv, do.CostAdv)
	back(s, o.CostRet, do.CostRet)
	return s.err
}

func (k *Kernels) actorHost(a kernels.ActorArgs[float32], grad []float32, lag bool) (kernels.ActorResult, error) {
	s := &devScope{cu: k.cu}
	defer s.free()
	n := a.B * a.N
	cadv := a.CostAdv
	if !lag {
		cadv = nil
	}
	d := ActorArgs{B: a.B, N: a.N, ClipRatio: a.ClipRatio, Lambda: a.Lambda,
		LogProbs: in(s, "log_probs", a.LogProbs, n), OldLogProbs: in(s, "old_log_probs", a.OldLogProbs, n),
		RewardAdv: in(s, "reward_advantages", a.RewardAdv, n), CostAdv: in(s, "cost_advantages", cadv, n),
		Mask: in(s, "mask", a.Mask, n)}
	dg := out(s, "grad", grad, n)
	if s.err != nil {
		return kernels.ActorResult{}, s.err
	}
	var r kernels.ActorResult
	var err error
	if lag {
		r, err = k.ActorLossPPOLag(d, dg)
	} else {
		r, err = k.ActorLossPPO(d, dg)
	}
	if err != nil {
		return r, err
	}
	back(s, grad, dg)
	return r, s.err
}

// ActorLossPPOLagHost is ActorLossPPOLag on host slices (signature of kernels.ActorLossPPOLag).
func (k *Kernels) ActorLossPPOLagHost(a kernels.ActorArgs[float32], grad []float32) (kernels.ActorResult, error) {
	return k.actorHost(a, grad, true)
}

// ActorLossPPOHost is ActorLossPPO on host slices (signature of kernels.ActorLossPPO).
func (k *Kernels) ActorLossPPOHost(a kernels.ActorArgs[float32], grad []float32) (kernels.ActorResult, error) {
	return k.actorHost(a, grad, false)
}

// CriticLossHost is CriticLoss on host slices (signature of kernels.CriticLoss).
func (k *Kernels) CriticLossHost(a kernels.CriticArgs[float32], grad []float32) (float64, error) {
	s := &devScope{cu: k.cu}
	defer s.free()
	n := a.B * a.N
	d := CriticArgs{B: a.B, N: a.N, ClipValue: a.ClipValue,
		Values: in(s, "values", a.Values, n), OldValues: in(s, "old_values", a.OldValues, n),
		Returns: in(s, "returns", a.Returns, n), Mask: in(s, "mask", a.Mask, n)}
	dg := out(s, "grad", grad, n)
	if s.err != nil {
		return 0, s.err
	}
	l, err := k.CriticLoss(d, dg)
	if err != nil {
		return 0, err
	}
	back(s, grad, dg)
	return l, s.err
}

// EndScoresHost is EndScores on host slices (signature of kernels.EndScores).
func (k *Kernels) EndScoresHost(B, T int, mask, rewardScores, costScores, endReward, endCost []float32, endIndex []int32) error {
	s := &devScope{cu: k.cu}
	defer s.free()
	dm, dr, dc := in(s, "mask", mask, B*T), in(s, "reward_scores", rewardScores, B*T), in(s, "cost_scores", costScores, B*T)
	er, ec, ei := out(s, "end_reward", endReward, B), out(s, "end_cost", endCost, B), out(s, "end_index", endIndex, B)
	if s.err != nil {
		return s.err
	}
	if err := k.EndScores(B, T, dm, dr, dc, er, ec, ei); err != nil {
		return err
	}
	back(s, endReward, er)
	back(s, endCost, ec)
	back(s, endIndex, ei)
	return s.err
}

// TokenLogProbsHost is TokenLogProbs on host slices; lse may be nil.
func (k *Kernels) TokenLogProbsHost(N, V int, logits []float32, targets []int32, logp, lse []float32) error {
	s := &devScope{cu: k.cu}
	defer s.free()
	dx, dt := in(s, "logits", logits, N*V), in(s, "targets", targets, N)
	do, dl := out(s, "out", logp, N), out(s, "lse", lse, N)
	if s.err != nil {
		return s.err
	}
	if err := k.TokenLogProbs(N, V, dx, dt, do, dl); err != nil {
		return err
	}
	back(s, logp, do)
	back(s, lse, dl)
	return s.err
}

// TokenLogProbsGradHost is TokenLogProbsGrad on host slices; g may be nil (all ones).
func (k *Kernels) TokenLogProbsGradHost(N, V int, logits []float32, targets []int32, lse, g, dlogits []float32) error {
	s := &devScope{cu: k.cu}
	defer s.free()
	dx, dt, dl, dg := in(s, "logits", logits, N*V), in(s, "targets", targets, N), in(s, "lse", lse, N), in(s, "g", g, N)
	dd := out(s, "dlogits", dlogits, N*V)
	if s.err != nil {
		return s.err
	}
	if err := k.TokenLogProbsGrad(N, V, dx, dt, dl, dg, dd); err != nil {
		return err
	}
	back(s, dlogits, dd)
	return s.err
}

// TokenLogProbsCPU is the float64-accumulated CPU reference of TokenLogProbs
// (package kernels has no vocabulary-wide log-prob kernel: on the CPU the
// model graph computes them). logits [N,V], targets [N]; lse may be nil.
func TokenLogProbsCPU(N, V int, logits []float32, targets []int32, logp, lse []float32) error {
	if len(logits) != N*V || len(targets) != N || len(logp) != N || (lse != nil && len(lse) != N) {
		return fmt.Errorf("kernels/cuda: TokenLogProbsCPU: lengths %d, %d, %d for N=%d V=%d: %w", len(logits), len(targets), len(logp), N, V, kernels.ErrShape)
	}
	for n := range N {
		row := logits[n*V : (n+1)*V]
		m := math.Inf(-1)
		for _, x := range row {
			m = math.Max(m, float64(x))
		}
		s := 0.0
		for _, x := range row {
			s += math.Exp(float64(x) - m)
		}
		l := m + math.Log(s)
		if lse != nil {
			lse[n] = float32(l)
		}
		y := int(targets[n])
		logp[n] = 0
		if y >= 0 && y < V {
			logp[n] = float32(float64(row[y]) - l)
		}
	}
	return nil
}
