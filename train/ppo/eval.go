package ppo

import "fmt"

// EvalResult summarises a policy on held-out prompts under the frozen reward and cost models.
type EvalResult struct {
	RewardMean  float64 `json:"reward_mean"`
	CostMean    float64 `json:"cost_mean"`
	HarmfulRate float64 `json:"harmful_rate"` // fraction of responses with cost > 0 under the cost model
	GenLenMean  float64 `json:"gen_len_mean"`
	N           int     `json:"n"`
}

// Evaluate samples one response per prompt with the current actor (batches of batch prompts, the
// generation seeds derived from seed so before/after runs see the same draws) and scores them with
// the reward and cost models. It returns the summary and the rollouts.
func Evaluate(n Nets, prompts [][]int32, batch int, seed uint64) (EvalResult, []*Rollout, error) {
	var res EvalResult
	var rs []*Rollout
	if len(prompts) == 0 || batch <= 0 {
		return res, nil, fmt.Errorf("ppo eval: %d prompts, batch %d", len(prompts), batch)
	}
	harmful := 0
	for lo := 0; lo < len(prompts); lo += batch {
		mb := prompts[lo:min(lo+batch, len(prompts))]
		r, err := n.Generate(mb, seed+uint64(lo))
		if err != nil {
			return res, nil, fmt.Errorf("ppo eval: generate: %w", err)
		}
		if err := n.Score(r); err != nil {
			return res, nil, fmt.Errorf("ppo eval: score: %w", err)
		}
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
		rs = append(rs, r)
	}
	k := float64(res.N)
	res.RewardMean /= k
	res.CostMean /= k
	res.GenLenMean /= k
	res.HarmfulRate = float64(harmful) / k
	return res, rs, nil
}
