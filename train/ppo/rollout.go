package ppo

import (
	"fmt"

	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// Rollout is one micro-batch of generated sequences and everything post_rollout computes from it
// (spec §1.2), row-major with explicit sizes. Per-token slices have width L = T−1; entry t refers to
// predicting token t+1.
type Rollout struct {
	B, T, S int       // rows, sequence width, prompt width after left padding (start = S−1)
	Seq     []int32   // [B*T] prompt (left padded) then response (right padded)
	Mask    []float32 // [B*T] attention mask: seq ≠ pad ∧ seq ≠ unk

	LogProbs     []float32 // [B*L] actor log π_old(seq[t+1])
	RefLogProbs  []float32 // [B*L] reference log π_ref(seq[t+1])
	Reward       []float32 // [B] reward model end scores
	Cost         []float32 // [B] cost model end scores (nil for PPO)
	RewardValues []float32 // [B*L] reward critic V_t
	CostValues   []float32 // [B*L] cost critic V_t (nil without a cost critic)

	// onDevice asks Score to keep the per-token tensors on the device (--rl-math graph): nets
	// that can (GraphNets on go and xla:*) fill dev instead of LogProbs, RefLogProbs,
	// RewardValues and CostValues; the others ignore it.
	onDevice bool
	dev      *rolloutDev
}

// rolloutDev is a rollout's per-token tensors on the device, from scoring to the updates.
type rolloutDev struct {
	seq, mask *tensors.Tensor // [B,T] ids (int32) and attention mask (float32)
	logp, ref *tensors.Tensor // [B,L] actor and reference log-probs
	rV, cV    *tensors.Tensor // [B,T] critic scores (the last column unused); cV nil without a cost critic
	// rl is the current rl_step's RL math outputs (set by the trainer, freed after the step).
	rl *rlDev
}

// free releases the rollout's device tensors.
func (r *Rollout) free() {
	if d := r.dev; d != nil {
		d.rl.free()
		freeTensors(d.seq, d.mask, d.logp, d.ref, d.rV, d.cV)
		r.dev = nil
	}
}

// L is the per-token width T−1.
func (r *Rollout) L() int { return r.T - 1 }

// Start is the first per-token index that belongs to the response (spec: start = S−1).
func (r *Rollout) Start() int { return r.S - 1 }

// SequenceMask returns attention_mask[:, 1:] as [B*L].
func (r *Rollout) SequenceMask() []float32 {
	L := r.L()
	m := make([]float32, r.B*L)
	for i := 0; i < r.B; i++ {
		copy(m[i*L:(i+1)*L], r.Mask[i*r.T+1:(i+1)*r.T])
	}
	return m
}

// ResponseMask returns sequence_mask with the prompt positions t < start zeroed: the mask under which
// the reference's [:, start:] slices are averaged, kept at full width L so graphs need no slicing.
func (r *Rollout) ResponseMask() []float32 {
	m := r.SequenceMask()
	L, start := r.L(), r.Start()
	for i := 0; i < r.B; i++ {
		for t := 0; t < start; t++ {
			m[i*L+t] = 0
		}
	}
	return m
}

// ResponseLengths returns the number of generated tokens of each row (sequence_mask ones at t ≥ start).
func (r *Rollout) ResponseLengths() []int {
	out := make([]int, r.B)
	for i := 0; i < r.B; i++ {
		for t := r.S; t < r.T; t++ {
			if r.Mask[i*r.T+t] != 0 {
				out[i]++
			}
		}
	}
	return out
}

// splitSamples splits a freshly generated rollout (Seq and Mask only) whose rows are nrs
// consecutive samples per prompt into nrs rollouts of B/nrs rows: rollout k holds each prompt's
// k-th sample, in prompt order (the reference's view(B, nrs, T).transpose(0, 1)).
func (r *Rollout) splitSamples(nrs int) []*Rollout {
	if nrs <= 1 {
		return []*Rollout{r}
	}
	B, T := r.B/nrs, r.T
	out := make([]*Rollout, nrs)
	for k := range out {
		o := &Rollout{B: B, T: T, S: r.S, Seq: make([]int32, B*T), Mask: make([]float32, B*T)}
		for i := 0; i < B; i++ {
			src := (i*nrs + k) * T
			copy(o.Seq[i*T:(i+1)*T], r.Seq[src:src+T])
			copy(o.Mask[i*T:(i+1)*T], r.Mask[src:src+T])
		}
		out[k] = o
	}
	return out
}

// check validates sizes of the filled fields.
func (r *Rollout) check(withCost, withCostCritic bool) error {
	L := r.L()
	if r.B <= 0 || r.T < 2 || r.S < 1 || r.S >= r.T {
		return fmt.Errorf("rollout: bad sizes B=%d T=%d S=%d", r.B, r.T, r.S)
	}
	want := map[string][2]int{
		"seq": {len(r.Seq), r.B * r.T}, "mask": {len(r.Mask), r.B * r.T}, "reward": {len(r.Reward), r.B},
	}
	if withCost {
		want["cost"] = [2]int{len(r.Cost), r.B}
	}
	if d := r.dev; d != nil {
		size := func(t *tensors.Tensor) int {
			if t == nil {
				return 0
			}
			return t.Shape().Size()
		}
		want["log_probs"], want["ref_log_probs"] = [2]int{size(d.logp), r.B * L}, [2]int{size(d.ref), r.B * L}
		want["reward_values"] = [2]int{size(d.rV), r.B * r.T}
		if withCostCritic {
			want["cost_values"] = [2]int{size(d.cV), r.B * r.T}
		}
	} else {
		want["log_probs"], want["ref_log_probs"] = [2]int{len(r.LogProbs), r.B * L}, [2]int{len(r.RefLogProbs), r.B * L}
		want["reward_values"] = [2]int{len(r.RewardValues), r.B * L}
		if withCostCritic {
			want["cost_values"] = [2]int{len(r.CostValues), r.B * L}
		}
	}
	for k, v := range want {
		if v[0] != v[1] {
			return fmt.Errorf("rollout: %s has %d entries, want %d (B=%d T=%d)", k, v[0], v[1], r.B, r.T)
		}
	}
	return nil
}
