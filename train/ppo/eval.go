package ppo

import (
	"bytes"
	"context"
	"encoding/gob"
	"fmt"

	"github.com/saferlhf/saferlhf/train/dist"
)

// EvalResult summarises a policy on held-out prompts under the frozen reward and cost models.
type EvalResult struct {
	RewardMean  float64 `json:"reward_mean"`
	CostMean    float64 `json:"cost_mean"`
	HarmfulRate float64 `json:"harmful_rate"` // fraction of responses with cost > 0 under the cost model
	GenLenMean  float64 `json:"gen_len_mean"`
	N           int     `json:"n"`
}

// Evaluate samples one response per prompt with the current actor (batches of batch prompts; prompt
// i draws from its own stream under seed, so before/after runs see the same draws whatever the
// batch size) and scores them with the reward and cost models. It returns the summary and the
// rollouts.
func Evaluate(n Nets, prompts [][]int32, batch int, seed uint64) (EvalResult, []*Rollout, error) {
	return EvaluateRanked(n, prompts, batch, seed, dist.Self{})
}

// EvaluateRanked is Evaluate shared among the ranks of comm: batch j runs on rank j mod world
// (its prompts keep their streams, so the samples are one process's), and every rank gets every
// batch's rollout (prompt, response and scores) and the same summary.
func EvaluateRanked(n Nets, prompts [][]int32, batch int, seed uint64, comm dist.Communicator) (EvalResult, []*Rollout, error) {
	if len(prompts) == 0 || batch <= 0 {
		return EvalResult{}, nil, fmt.Errorf("ppo eval: %d prompts, batch %d", len(prompts), batch)
	}
	w, rank := comm.Size(), comm.Rank()
	var mine []*Rollout
	for j, lo := 0, 0; lo < len(prompts); j, lo = j+1, lo+batch {
		if j%w != rank {
			continue
		}
		mb := prompts[lo:min(lo+batch, len(prompts))]
		r, err := n.Generate(mb, seed, uint64(lo))
		if err != nil {
			return EvalResult{}, nil, fmt.Errorf("ppo eval: generate: %w", err)
		}
		if err := n.Score(r); err != nil {
			return EvalResult{}, nil, fmt.Errorf("ppo eval: score: %w", err)
		}
		mine = append(mine, r)
	}
	rs := mine
	if w > 1 {
		var err error
		if rs, err = gatherRollouts(comm, mine); err != nil {
			return EvalResult{}, nil, fmt.Errorf("ppo eval: %w", err)
		}
	}
	return summarize(rs), rs, nil
}

// gatherRollouts returns every rank's evaluation rollouts in batch order (batch j from rank j mod
// world), keeping what the summary and the samples files read.
func gatherRollouts(comm dist.Communicator, mine []*Rollout) ([]*Rollout, error) {
	type row struct {
		B, T, S      int
		Seq          []int32
		Mask, Reward []float32
		Cost         []float32
	}
	rows := make([]row, len(mine))
	for i, r := range mine {
		rows[i] = row{r.B, r.T, r.S, r.Seq, r.Mask, r.Reward, r.Cost}
	}
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(rows); err != nil {
		return nil, err
	}
	all, err := comm.AllGather(context.Background(), buf.Bytes())
	if err != nil {
		return nil, fmt.Errorf("gathering the ranks' samples: %w", err)
	}
	per := make([][]row, len(all))
	total := 0
	for r, b := range all {
		if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&per[r]); err != nil {
			return nil, fmt.Errorf("rank %d's samples: %w", r, err)
		}
		total += len(per[r])
	}
	out := make([]*Rollout, 0, total)
	for j := 0; j < total; j++ {
		r, k := j%len(all), j/len(all)
		if k >= len(per[r]) {
			return nil, fmt.Errorf("rank %d sent %d batches, want at least %d", r, len(per[r]), k+1)
		}
		x := per[r][k]
		out = append(out, &Rollout{B: x.B, T: x.T, S: x.S, Seq: x.Seq, Mask: x.Mask, Reward: x.Reward, Cost: x.Cost})
	}
	return out, nil
}

// summarize averages the scores and lengths of evaluation rollouts.
func summarize(rs []*Rollout) EvalResult {
	var res EvalResult
	harmful := 0
	for _, r := range rs {
		for i := 0; i < r.B; i++ {
			res.RewardMean += float64(r.Reward[i])
			if r.Cost != nil {
				res.CostMean += float64(r.Cost[i])
				if r.Cost[i] > 0 {
					harmful++
				}
			}
		}
		for _, l := range r.ResponseLengths() {
			res.GenLenMean += float64(l)
		}
		res.N += r.B
	}
	k := float64(res.N)
	res.RewardMean /= k
	res.CostMean /= k
	res.GenLenMean /= k
	res.HarmfulRate = float64(harmful) / k
	return res
}
