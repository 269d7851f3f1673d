// Package cuda runs the RL hot spots of Safe RLHF as fused CUDA kernels:
// KL-shaped rewards and costs, GAE for the reward and cost streams in one
// pass, the PPO-Lag actor loss with its gradient, clip fraction and approximate
// KL, the clipped critic loss with its gradient, end-score gathering and
// vocabulary-wide token log-probabilities (with their backward pass).
//
// The kernels' CUDA C++ sources are embedded (rl.cu, logprobs.cu) and compiled
// by NVRTC for the device at hand the first time New is called; nothing CUDA is
// needed to build. Each kernel computes what the CPU function of the same name
// in package kernels computes (same argument structs, with device pointers in
// place of slices; the same deviations from the reference: empty rows skipped
// by masked means, end index −1 with score 0), which the parity tests check.
//
// The device-pointer methods work on any device memory of the context: memory
// from native.CUDA.Alloc, or the buffers of XLA's CUDA PJRT plugin between
// graph executions (see DevicePointer and ViewTensor, built with cgo and XLA).
// Work is queued on the legacy default stream; methods returning scalars wait
// for it. Call Sync before handing buffers written by a kernel back to XLA.
// The ...Host methods copy host slices in and out, for tests and small jobs.
package cuda

import (
	_ "embed"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/native"
)

//go:embed rl.cu
var rlSource string

//go:embed logprobs.cu
var logprobsSource string

// Thread-block sizes; gaeThreads and lpThreads must match GAE_THREADS and LP_THREADS in the sources.
const (
	rowThreads = 256
	gaeThreads = 256
	lpThreads  = 256
)

// Ptr is a device address (an alias of native.DevicePtr).
type Ptr = native.DevicePtr

// Kernels holds the compiled kernels for one GPU and a little scratch memory.
// Its methods are safe for concurrent use (they serialise on a mutex).
type Kernels struct {
	cu  *native.CUDA
	fns map[string]*native.Function

	mu      sync.Mutex
	rows    Ptr // [rowsCap][4] float64 per-row partial results
	rowsCap int
	stats   Ptr // [4] float32 batch statistics
}

var kernelNames = map[string][]string{
	"rl.cu":       {"kl_shape", "gae", "actor_loss_rows", "actor_loss_grad", "critic_loss_rows", "critic_loss_grad", "rows_mean", "end_scores"},
	"logprobs.cu": {"token_logprobs", "token_logprobs_grad"},
}

// New compiles the kernels for cu's device (cached per source and architecture).
func New(cu *native.CUDA) (*Kernels, error) {
	if cu == nil {
		return nil, errors.New("kernels/cuda: New(nil)")
	}
	k := &Kernels{cu: cu, fns: map[string]*native.Function{}}
	for file, src := range map[string]string{"rl.cu": rlSource, "logprobs.cu": logprobsSource} {
		m, err := cu.Compile(src, file, "")
		if err != nil {
			return nil, fmt.Errorf("kernels/cuda: %w", err)
		}
		for _, name := range kernelNames[file] {
			f, err := m.Function(name)
			if err != nil {
				return nil, fmt.Errorf("kernels/cuda: %s: %w", file, err)
			}
			k.fns[name] = f
		}
	}
	var err error
	if k.stats, err = cu.Alloc(16); err != nil {
		return nil, fmt.Errorf("kernels/cuda: %w", err)
	}
	return k, nil
}

// Open opens GPU 0 and compiles the kernels for it; Close releases both.
func Open() (*Kernels, error) {
	cu, err := native.Open()
	if err != nil {
		return nil, err
	}
	k, err := New(cu)
	if err != nil {
		cu.Close()
		return nil, err
	}
	return k, nil
}

// CUDA returns the device the kernels run on.
func (k *Kernels) CUDA() *native.CUDA { return k.cu }

// Sync waits until every queued kernel has finished (XLA's work on the device too).
func (k *Kernels) Sync() error { return k.cu.Synchronize() }

// Close frees the scratch memory. It does not close the native.CUDA given to New.
func (k *Kernels) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	err := errors.Join(k.cu.Free(k.rows), k.cu.Free(k.stats))
	k.rows, k.stats, k.rowsCap = 0, 0, 0
	return err
}

// rowScratch returns a [B][4] float64 buffer; k.mu must be held.
func (k *Kernels) rowScratch(B int) (Ptr, error) {
	if B <= k.rowsCap {
		return k.rows, nil
	}
	if err := k.cu.Free(k.rows); err != nil {
		return 0, err
	}
	k.rows, k.rowsCap = 0, 0
	n := max(B, 1024)
	p, err := k.cu.Alloc(n * 32)
	if err != nil {
		return 0, err
	}
	k.rows, k.rowsCap = p, n
	return p, nil
}

func (k *Kernels) launch(name string, grid, block int, args ...any) error {
	if err := k.cu.Launch(k.fns[name], native.D1(grid), native.D1(block), 0, args...); err != nil {
		return fmt.Errorf("kernels/cuda: %w", err)
	}
	return nil
}

// readStats waits for the queued work and returns the 4 batch statistics.
func (k *Kernels) readStats() ([4]float32, error) {
	var s [4]float32
	if err := native.CopyFromDevice(k.cu, s[:], k.stats); err != nil {
		return s, fmt.Errorf("kernels/cuda: %w", err)
	}
	return s, nil
}

func checkSizes(kernel string, kv ...any) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if v := kv[i+1].(int); v < 0 || v > math.MaxInt32 {
			return fmt.Errorf("kernels/cuda: %s: %s=%d out of range: %w", kernel, kv[i], v, kernels.ErrShape)
		}
	}
	return nil
}

func checkPtrs(kernel string, kv ...any) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1].(Ptr) == 0 {
			return fmt.Errorf("kernels/cuda: %s: %s is a null device pointer", kernel, kv[i])
		}
	}
	return nil
}

func nonFinite(kernel string, vals ...float32) error {
	for _, v := range vals {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("kernels/cuda: %s: result %v: an input holds NaN or Inf: %w", kernel, v, kernels.ErrNonFinite)
		}
	}
	return nil
}

// KLArgs are kernels.KLArgs with device pointers: per-token tensors [B,L]
// float32, Reward and Cost [B]; Cost may be 0 for plain PPO.
type KLArgs struct {
	B, L, Start             int
	KLCoeff, ClipRangeScore float64
	Reward, Cost            Ptr
	LogProbs, RefLogProbs   Ptr
	SeqMask                 Ptr
}

// KLShapedRewardsCosts writes the PPO-Lag per-token rewards and costs ([B,L])
// exactly as kernels.KLShapedRewardsCosts, and returns the logged statistics
// (it waits for the kernel). With costs == 0 it is kernels.KLShapedRewards.
func (k *Kernels) KLShapedRewardsCosts(a KLArgs, rewards, costs Ptr) (kernels.KLStats, error) {
	const name = "KLShapedRewardsCosts"
	if err := checkSizes(name, "B", a.B, "L", a.L, "Start", a.Start); err != nil {
		return kernels.KLStats{}, err
	}
	if a.Start > a.L {
		return kernels.KLStats{}, fmt.Errorf("kernels/cuda: %s: Start=%d > L=%d: %w", name, a.Start, a.L, kernels.ErrShape)
	}
	if err := checkPtrs(name, "Reward", a.Reward, "LogProbs", a.LogProbs, "RefLogProbs", a.RefLogProbs, "SeqMask", a.SeqMask, "rewards", rewards); err != nil {
		return kernels.KLStats{}, err
	}
	if (costs == 0) != (a.Cost == 0) {
		return kernels.KLStats{}, fmt.Errorf("kernels/cuda: %s: give both Cost and costs or neither", name)
	}
	if a.B == 0 {
		return kernels.KLStats{}, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	rows, err := k.rowScratch(a.B)
	if err != nil {
		return kernels.KLStats{}, err
	}
	if err := k.launch("kl_shape", a.B, rowThreads, rewards, costs, rows, a.LogProbs, a.RefLogProbs, a.SeqMask,
		a.Reward, a.Cost, a.L, a.Start, float32(a.KLCoeff), float32(a.ClipRangeScore)); err != nil {
		return kernels.KLStats{}, err
	}
	if err := k.launch("rows_mean", 1, rowThreads, k.stats, rows, a.B); err != nil {
		return kernels.KLStats{}, err
	}
	s, err := k.readStats()
	if err != nil {
		return kernels.KLStats{}, err
	}
	if err := nonFinite(name, s[0], s[1]); err != nil {
		return kernels.KLStats{}, err
	}
	return kernels.KLStats{KL: float64(s[0]), RewardWithKLPenalty: float64(s[1])}, nil
}

// GAEArgs are kernels.GAEArgs with device pointers ([B,L] float32); leave
// CostValues and Costs 0 for a single stream.
type GAEArgs struct {
	B, L, Start           int
	Gamma, Lambda         float64
	RewardValues, Rewards Ptr
	CostValues, Costs     Ptr
	SeqMask               Ptr
}

// GAEOut receives advantages and returns, each [B, L−Start] float32; the cost
// fields are required exactly when the cost inputs are given.
type GAEOut struct {
	RewardAdv, RewardRet Ptr
	CostAdv, CostRet     Ptr
}

// GAE queues the fused reward+cost advantage estimation of kernels.GAE: one
// block per row, the backward recurrence A_t = δ_t + γλA_{t+1} evaluated as a
// parallel scan with float64 accumulation. It does not wait.
func (k *Kernels) GAE(a GAEArgs, out GAEOut) error {
	const name = "GAE"
	if err := checkSizes(name, "B", a.B, "L", a.L, "Start", a.Start); err != nil {
		return err
	}
	if a.Start > a.L {
		return fmt.Errorf("kernels/cuda: %s: Start=%d > L=%d: %w", name, a.Start, a.L, kernels.ErrShape)
	}
	if err := checkPtrs(name, "RewardValues", a.RewardValues, "Rewards", a.Rewards, "SeqMask", a.SeqMask,
		"RewardAdv", out.RewardAdv, "RewardRet", out.RewardRet); err != nil {
		return err
	}
	cost := a.CostValues != 0 || a.Costs != 0 || out.CostAdv != 0 || out.CostRet != 0
	if cost {
		if err := checkPtrs(name, "CostValues", a.CostValues, "Costs", a.Costs, "CostAdv", out.CostAdv, "CostRet", out.CostRet); err != nil {
			return err
		}
	}
	if a.B == 0 || a.L == a.Start {
		return nil
	}
	return k.launch("gae", a.B, gaeThreads, out.RewardAdv, out.RewardRet, out.CostAdv, out.CostRet,
		a.Rewards, a.RewardValues, a.Costs, a.CostValues, a.SeqMask, a.L, a.Start, float32(a.Gamma), float32(a.Lambda))
}

// ActorArgs are kernels.ActorArgs with device pointers ([B,N] float32).
type ActorArgs struct {
	B, N                  int
	ClipRatio, Lambda     float64
	LogProbs, OldLogProbs Ptr
	RewardAdv, CostAdv    Ptr
	Mask                  Ptr
}

// ActorLossPPOLag computes kernels.ActorLossPPOLag on the GPU: the loss, clip
// fraction and approximate KL, and dLoss/dLogProbs into grad ([B,N], skipped if
// grad is 0). It waits for the result.
func (k *Kernels) ActorLossPPOLag(a ActorArgs, grad Ptr) (kernels.ActorResult, error) {
	if a.Lambda < 0 || math.IsNaN(a.Lambda) || math.IsInf(a.Lambda, 0) {
		return kernels.ActorResult{}, fmt.Errorf("kernels/cuda: ActorLossPPOLag: Lambda=%v: %w", a.Lambda, kernels.ErrShape)
	}
	if err := checkPtrs("ActorLossPPOLag", "CostAdv", a.CostAdv); err != nil {
		return kernels.ActorResult{}, err
	}
	return k.actorLoss("ActorLossPPOLag", a, grad)
}

// ActorLossPPO computes kernels.ActorLossPPO (A = RewardAdv; CostAdv and Lambda ignored).
func (k *Kernels) ActorLossPPO(a ActorArgs, grad Ptr) (kernels.ActorResult, error) {
	a.CostAdv, a.Lambda = 0, 0
	return k.actorLoss("ActorLossPPO", a, grad)
}

func (k *Kernels) actorLoss(name string, a ActorArgs, grad Ptr) (kernels.ActorResult, error) {
	if err := checkSizes(name, "B", a.B, "N", a.N); err != nil {
		return kernels.ActorResult{}, err
	}
	if err := checkPtrs(name, "LogProbs", a.LogProbs, "OldLogProbs", a.OldLogProbs, "RewardAdv", a.RewardAdv, "Mask", a.Mask); err != nil {
		return kernels.ActorResult{}, err
	}
	if a.B == 0 {
		return kernels.ActorResult{}, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	rows, err := k.rowScratch(a.B)
	if err != nil {
		return kernels.ActorResult{}, err
	}
	lam, eps := float32(a.Lambda), float32(a.ClipRatio)
	if err := k.launch("actor_loss_rows", a.B, rowThreads, rows, a.LogProbs, a.OldLogProbs, a.RewardAdv, a.CostAdv, a.Mask, a.N, lam, eps); err != nil {
		return kernels.ActorResult{}, err
	}
	if err := k.launch("rows_mean", 1, rowThreads, k.stats, rows, a.B); err != nil {
		return kernels.ActorResult{}, err
	}
	if grad != 0 {
		if err := k.launch("actor_loss_grad", a.B, rowThreads, grad, rows, k.stats, a.LogProbs, a.OldLogProbs, a.RewardAdv, a.CostAdv, a.Mask, a.N, lam, eps); err != nil {
			return kernels.ActorResult{}, err
		}
	}
	s, err := k.readStats()
	if err != nil {
		return kernels.ActorResult{}, err
	}
	if err := nonFinite(name, s[0], s[2]); err != nil {
		return kernels.ActorResult{}, err
	}
	return kernels.ActorResult{Loss: float64(s[0]), ClipFrac: float64(s[1]), ApproxKL: float64(s[2])}, nil
}

// CriticArgs are kernels.CriticArgs with device pointers ([B,N] float32).
type CriticArgs struct {
	B, N                             int
	ClipValue                        float64
	Values, OldValues, Returns, Mask Ptr
}

// CriticLoss computes kernels.CriticLoss on the GPU and dLoss/dValues into
// grad ([B,N], skipped if grad is 0). It waits for the result.
func (k *Kernels) CriticLoss(a CriticArgs, grad Ptr) (float64, error) {
	const name = "CriticLoss"
	if err := checkSizes(name, "B", a.B, "N", a.N); err != nil {
		return 0, err
	}
	if err := checkPtrs(name, "Values", a.Values, "OldValues", a.OldValues, "Returns", a.Returns, "Mask", a.Mask); err != nil {
		return 0, err
	}
	if a.B == 0 {
		return 0, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	rows, err := k.rowScratch(a.B)
	if err != nil {
		return 0, err
	}
	c := float32(a.ClipValue)
	if err := k.launch("critic_loss_rows", a.B, rowThreads, rows, a.Values, a.OldValues, a.Returns, a.Mask, a.N, c); err != nil {
		return 0, err
	}
	if err := k.launch("rows_mean", 1, rowThreads, k.stats, rows, a.B); err != nil {
		return 0, err
	}
	if grad != 0 {
		if err := k.launch("critic_loss_grad", a.B, rowThreads, grad, rows, k.stats, a.Values, a.OldValues, a.Returns, a.Mask, a.N, c); err != nil {
			return 0, err
		}
	}
	s, err := k.readStats()
	if err != nil {
		return 0, err
	}
	if err := nonFinite(name, s[0]); err != nil {
		return 0, err
	}
	return float64(s[0]), nil
}

// EndScores queues kernels.EndScores: for each row of the [B,T] mask the last
// non-zero position (endIndex, int32 [B], may be 0) and the scores there
// (endReward, endCost [B]); costScores and endCost may both be 0.
func (k *Kernels) EndScores(B, T int, mask, rewardScores, costScores, endReward, endCost, endIndex Ptr) error {
	const name = "EndScores"
	if err := checkSizes(name, "B", B, "T", T); err != nil {
		return err
	}
	if err := checkPtrs(name, "mask", mask, "rewardScores", rewardScores, "endReward", endReward); err != nil {
		return err
	}
	if (costScores == 0) != (endCost == 0) {
		return fmt.Errorf("kernels/cuda: %s: give both costScores and endCost or neither", name)
	}
	if B == 0 {
		return nil
	}
	return k.launch("end_scores", B, 128, endReward, endCost, endIndex, rewardScores, costScores, mask, T)
}

// TokenLogProbs queues out[n] = logits[n, targets[n]] − logsumexp(logits[n, :])
// for logits [N,V] float32 and targets [N] int32 (a target outside [0,V), such
// as −100, gives 0): the log-probabilities the reference gathers from
// log_softmax, in one read of the logits. lse ([N] float32, may be 0) keeps the
// log-sum-exp for TokenLogProbsGrad.
func (k *Kernels) TokenLogProbs(N, V int, logits, targets, out, lse Ptr) error {
	const name = "TokenLogProbs"
	if err := checkSizes(name, "N", N, "V", V); err != nil {
		return err
	}
	if err := checkPtrs(name, "logits", logits, "targets", targets, "out", out); err != nil {
		return err
	}
	if N == 0 {
		return nil
	}
	return k.launch("token_logprobs", N, lpThreads, out, lse, logits, targets, V)
}

// TokenLogProbsGrad queues dlogits[n,v] = g[n]·([v = targets[n]] − softmax(logits[n])_v),
// the gradient of Σ_n g[n]·logp[n] (g = 0 means all ones; g = −1/N gives the
// mean cross-entropy's gradient), from TokenLogProbs' lse. dlogits is [N,V].
func (k *Kernels) TokenLogProbsGrad(N, V int, logits, targets, lse, g, dlogits Ptr) error {
	const name = "TokenLogProbsGrad"
	if err := checkSizes(name, "N", N, "V", V); err != nil {
		return err
	}
	if err := checkPtrs(name, "logits", logits, "targets", targets, "lse", lse, "dlogits", dlogits); err != nil {
		return err
	}
	if N == 0 {
		return nil
	}
	return k.launch("token_logprobs_grad", N, lpThreads, dlogits, logits, targets, lse, g, V)
}
