package ppo

import (
	"fmt"

	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/model"
)

// nativeScore is Score on the native engine (backend "native"): each model's
// live weights (LoRA merged, shared bases resolved) are read from the context
// into a native model that runs the no-grad pass of graphScore.
func (n *GraphNets) nativeScore(r *Rollout) error {
	if len(r.Seq) != r.B*r.T || len(r.Mask) != r.B*r.T {
		return fmt.Errorf("score: rollout has %d ids and %d mask values for B=%d T=%d", len(r.Seq), len(r.Mask), r.B, r.T)
	}
	forward := func(scope string, cfg *model.Config) (*llama.Model, *llama.Tape, error) {
		w, err := model.GetWeights(n.ctx.InAbsPath(scope), cfg)
		if err != nil {
			return nil, nil, err
		}
		m, err := llama.New(cfg, w, 1)
		if err != nil {
			return nil, nil, err
		}
		tp, err := m.Forward(r.B, r.T, r.Seq, r.Mask)
		return m, tp, err
	}
	logProbs := func(scope string) ([]float32, error) {
		m, tp, err := forward(scope, n.actorCfg)
		if err != nil {
			return nil, fmt.Errorf("score %s: %w", scope, err)
		}
		return m.TokenLogProbs(tp)
	}
	scores := func(scope string, cfg *model.Config) ([]float32, error) {
		if cfg.ScoreDim != 1 {
			return nil, fmt.Errorf("score %s: score dim %d, want 1", scope, cfg.ScoreDim)
		}
		m, tp, err := forward(scope, cfg)
		if err != nil {
			return nil, fmt.Errorf("score %s: %w", scope, err)
		}
		return m.Scores(tp)
	}
	ends := llama.EndIndex(r.B, r.T, r.Mask)
	atEnd := func(s []float32) []float32 {
		out := make([]float32, r.B)
		for i, e := range ends {
			out[i] = s[i*r.T+e]
		}
		return out
	}
	var err error
	if r.LogProbs, err = logProbs(ScopeActor); err != nil {
		return err
	}
	if r.RefLogProbs, err = logProbs(ScopeReference); err != nil {
		return err
	}
	// A score model on another vocabulary reads re-tokenised text (its GoMLX scorer).
	endScores := func(k int, scope string, cfg *model.Config) ([]float32, error) {
		if n.retok[k] != nil {
			return n.retok[k].score(r)
		}
		s, err := scores(scope, cfg)
		if err != nil {
			return nil, err
		}
		return atEnd(s), nil
	}
	if r.Reward, err = endScores(0, ScopeReward, n.rCfg); err != nil {
		return err
	}
	s, err := scores(ScopeRewardCritic, n.rcCfg)
	if err != nil {
		return err
	}
	r.RewardValues = dropLastCol(s, r.B, r.T)
	if n.cCfg != nil {
		if r.Cost, err = endScores(1, ScopeCost, n.cCfg); err != nil {
			return err
		}
	}
	if n.ccCfg != nil {
		if s, err = scores(ScopeCostCritic, n.ccCfg); err != nil {
			return err
		}
		r.CostValues = dropLastCol(s, r.B, r.T)
	}
	return nil
}
