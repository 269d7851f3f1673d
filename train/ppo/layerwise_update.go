package ppo

import (
	"fmt"
	"sort"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels/ingraph"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// UpdatePrograms selects how the actor and critic updates compile.
type UpdatePrograms int

const (
	// UpdatesAuto: layer by layer on XLA backends, whole-model graphs on the others.
	UpdatesAuto UpdatePrograms = iota
	// UpdatesFused: one graph per update (loss, gradients and AdamW), every layer unrolled.
	UpdatesFused
	// UpdatesLayerwise: model.Layerwise.Backward (one loss program and one per-layer backward
	// program per model shape, called per layer; the layer forward recomputed in the backward)
	// accumulating gradients, then the Stepper's AdamW update from the accumulators. XLA's
	// compile time then no longer grows with the depth. PTX steps stay fused.
	UpdatesLayerwise
)

func (u UpdatePrograms) String() string {
	switch u {
	case UpdatesFused:
		return "fused"
	case UpdatesLayerwise:
		return "layerwise"
	}
	return "auto"
}

// ParseUpdatePrograms reads auto, fused or layerwise.
func ParseUpdatePrograms(s string) (UpdatePrograms, error) {
	for _, u := range []UpdatePrograms{UpdatesAuto, UpdatesFused, UpdatesLayerwise} {
		if s == u.String() {
			return u, nil
		}
	}
	return UpdatesAuto, fmt.Errorf("update programs %q: want auto, fused or layerwise", s)
}

// layerwiseUpdates reports whether the updates run layer by layer.
func (n *GraphNets) layerwiseUpdates() bool {
	switch n.cfg.Updates {
	case UpdatesLayerwise:
		return true
	case UpdatesFused:
		return false
	}
	return !model.PureGo(n.cfg.Backend) && !backend.IsNative(n.cfg.Backend)
}

// trainedSet is a model's trained variables (sorted by path) and their accumulators by HF name.
type trainedSet struct {
	vars  []*context.Variable
	accum map[string]*context.Variable
}

// trained returns the trained variables of scope and their Stepper accumulators.
func (n *GraphNets) trained(scope string, s *trainer.Stepper) trainedSet {
	ts := trainedSet{accum: map[string]*context.Variable{}}
	n.ctx.InAbsPath(scope).EnumerateVariablesInScope(func(v *context.Variable) {
		if v.Trainable && v.Scope() == scope {
			ts.vars = append(ts.vars, v)
		}
	})
	sort.Slice(ts.vars, func(i, j int) bool { return ts.vars[i].ScopeAndName() < ts.vars[j].ScopeAndName() })
	for _, v := range ts.vars {
		ts.accum[v.Name()] = s.Accumulator(v)
	}
	return ts
}

// actorLossFn is the actor's loss from the last activations: inputs ids, old log-probs,
// reward advantages, response mask, then (PPO-Lag) cost advantages and λ.
func (n *GraphNets) actorLossFn(ctx *context.Context, cfg *model.Config, h *G.Node, in []*G.Node) (*G.Node, []*G.Node) {
	logp := model.HeadTokenLogProbs(ctx, cfg, h, in[0])
	var out ingraph.ActorOut
	if len(in) > 4 {
		out = ingraph.ActorLossPPOLag(logp, in[1], in[2], in[4], in[3], in[5], n.clipRatio)
	} else {
		out = ingraph.ActorLossPPO(logp, in[1], in[2], in[3], n.clipRatio)
	}
	return out.Loss, []*G.Node{out.ClipFrac, out.ApproxKL}
}

// criticLossFn is a critic's loss from the last activations: inputs old values, returns and
// response mask, padded to width T.
func (n *GraphNets) criticLossFn(ctx *context.Context, cfg *model.Config, h *G.Node, in []*G.Node) (*G.Node, []*G.Node) {
	return ingraph.CriticLoss(model.HeadScores(ctx, cfg, h), in[0], in[1], in[2], n.clipValue), nil
}

// updateActorLayerwise is UpdateActor (without PTX) layer by layer, over n.accum micro-batches.
func (n *GraphNets) updateActorLayerwise(b ActorBatch) (ActorStats, error) {
	r := b.Rollout
	if r.B%n.accum != 0 {
		return ActorStats{}, fmt.Errorf("actor: batch %d not divisible into %d micro-batches", r.B, n.accum)
	}
	if n.actorTrained.vars == nil {
		n.actorTrained = n.trained(ScopeActor, n.actor)
	}
	tr := model.Train{Accum: n.actorTrained.accum, Scale: 1 / float64(n.accum)}
	var st ActorStats
	for i := 0; i < n.accum; i++ {
		m, err := n.actorInputs(b, i, n.accum)
		if err != nil {
			return ActorStats{}, err
		}
		in, name := []*tensors.Tensor{m.ids, m.logp, m.rAdv, m.resp}, "actor_ppo"
		if m.cAdv != nil {
			in, name = append(in, m.cAdv, m.lambda), "actor_ppolag"
		}
		loss, metrics, err := n.lw.Backward(n.actorM, tr, name, n.actorLossFn, m.ids, m.mask, in...)
		m.free()
		if err != nil {
			return ActorStats{}, fmt.Errorf("actor: %w", err)
		}
		k := float64(n.accum)
		st.Loss += loss / k
		st.ClipFrac += metrics[0] / k
		st.ApproxKL += metrics[1] / k
	}
	res, err := n.actor.ApplyAccumulated(b.LR, n.actorTrained.vars)
	if err != nil {
		return ActorStats{}, fmt.Errorf("actor: %w", err)
	}
	st.GradNorm = res.GradNorm
	return st, nil
}

// updateCriticLayerwise is UpdateCritic layer by layer, over n.accum micro-batches.
func (n *GraphNets) updateCriticLayerwise(cost bool, lr float64, r *Rollout, returns, mask []float32) (float64, error) {
	s, m, ts := n.rcritic, n.rcM, &n.rcTrained
	scope := ScopeRewardCritic
	if cost {
		s, m, ts, scope = n.ccritic, n.ccM, &n.ccTrained, ScopeCostCritic
	}
	if r.B%n.accum != 0 {
		return 0, fmt.Errorf("critic: batch %d not divisible into %d micro-batches", r.B, n.accum)
	}
	if ts.vars == nil {
		*ts = n.trained(scope, s)
	}
	tr := model.Train{Accum: ts.accum, Scale: 1 / float64(n.accum)}
	total := 0.0
	for i := 0; i < n.accum; i++ {
		in, err := n.criticInputs(cost, r, returns, mask, i, n.accum)
		if err != nil {
			return 0, err
		}
		loss, _, err := n.lw.Backward(m, tr, "critic", n.criticLossFn, in.ids, in.mask, in.old, in.ret, in.criticMask)
		in.free()
		if err != nil {
			return 0, fmt.Errorf("critic: %w", err)
		}
		total += loss / float64(n.accum)
	}
	if _, err := s.ApplyAccumulated(lr, ts.vars); err != nil {
		return 0, fmt.Errorf("critic: %w", err)
	}
	return total, nil
}
