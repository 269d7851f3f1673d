package ppo

import (
	"fmt"

	"github.com/saferlhf/saferlhf/native/llama"
)

// nativeScore is Score on the native engine (backend "native"): the run's native models run
// the no-grad pass of graphScore, tape-less (llama.Infer), on row chunks of --micro-batch-size
// rows when set (as the graph path, so that activation memory is that of one micro-batch).
func (n *GraphNets) nativeScore(r *Rollout) error {
	if len(r.Seq) != r.B*r.T || len(r.Mask) != r.B*r.T {
		return fmt.Errorf("score: rollout has %d ids and %d mask values for B=%d T=%d", len(r.Seq), len(r.Mask), r.B, r.T)
	}
	rows := n.cfg.MicroBatchSize
	if rows <= 0 || rows >= r.B {
		return n.nativeScoreRows(r)
	}
	var out Rollout
	for lo := 0; lo < r.B; lo += rows {
		hi := min(lo+rows, r.B)
		c := &Rollout{B: hi - lo, T: r.T, S: r.S, Seq: r.Seq[lo*r.T : hi*r.T], Mask: r.Mask[lo*r.T : hi*r.T]}
		if err := n.nativeScoreRows(c); err != nil {
			return err
		}
		out.LogProbs, out.RefLogProbs = append(out.LogProbs, c.LogProbs...), append(out.RefLogProbs, c.RefLogProbs...)
		out.Reward, out.Cost = append(out.Reward, c.Reward...), append(out.Cost, c.Cost...)
		out.RewardValues, out.CostValues = append(out.RewardValues, c.RewardValues...), append(out.CostValues, c.CostValues...)
	}
	r.LogProbs, r.RefLogProbs, r.Reward, r.Cost = out.LogProbs, out.RefLogProbs, out.Reward, out.Cost
	r.RewardValues, r.CostValues = out.RewardValues, out.CostValues
	return nil
}

// nativeScoreRows is nativeScore on one chunk of rows.
func (n *GraphNets) nativeScoreRows(r *Rollout) error {
	nn, err := n.natives()
	if err != nil {
		return err
	}
	logProbs := func(scope string, m *llama.Model) ([]float32, error) {
		tp, err := m.Infer(r.B, r.T, r.Seq, r.Mask)
		if err != nil {
			return nil, fmt.Errorf("score %s: %w", scope, err)
		}
		return m.TokenLogProbs(tp)
	}
	// scores returns m's per-token scores of the b×t batch seq.
	scores := func(scope string, m *llama.Model, b, t int, seq []int32, mask []float32) ([]float32, error) {
		if m.Cfg.ScoreDim != 1 {
			return nil, fmt.Errorf("score %s: score dim %d, want 1", scope, m.Cfg.ScoreDim)
		}
		tp, err := m.Infer(b, t, seq, mask)
		if err != nil {
			return nil, fmt.Errorf("score %s: %w", scope, err)
		}
		s, err := m.Scores(tp)
		if err != nil {
			return nil, fmt.Errorf("score %s: %w", scope, err)
		}
		return s, nil
	}
	// endScores returns score model k's end scores; a score model on another vocabulary reads
	// the sequences re-tokenised for it.
	endScores := func(k int, scope string, m *llama.Model) ([]float32, error) {
		seq, mask, b, t := r.Seq, r.Mask, r.B, r.T
		if n.retok[k] != nil {
			seq, mask, t = n.retok[k].batch(r)
		}
		s, err := scores(scope, m, b, t, seq, mask)
		if err != nil {
			return nil, err
		}
		return llama.EndScores(b, t, mask, s), nil
	}
	if r.LogProbs, err = logProbs(ScopeActor, nn.actor.m); err != nil {
		return err
	}
	if r.RefLogProbs, err = logProbs(ScopeReference, nn.ref); err != nil {
		return err
	}
	if r.Reward, err = endScores(0, ScopeReward, nn.reward); err != nil {
		return err
	}
	s, err := scores(ScopeRewardCritic, nn.critics[0].m, r.B, r.T, r.Seq, r.Mask)
	if err != nil {
		return err
	}
	r.RewardValues = dropLastCol(s, r.B, r.T)
	if n.cCfg != nil {
		if r.Cost, err = endScores(1, ScopeCost, nn.cost); err != nil {
			return err
		}
	}
	if c := nn.critics[1]; c != nil {
		if s, err = scores(ScopeCostCritic, c.m, r.B, r.T, r.Seq, r.Mask); err != nil {
			return err
		}
		r.CostValues = dropLastCol(s, r.B, r.T)
	}
	return nil
}
