package ppo

import (
	stdctx "context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// nativeNets are the six networks as native models (backend "native"), built
// once from the context and kept for the run: the reference model and the
// score models are frozen; the actor and the critics train in place with
// native AdamW. A LoRA actor reads the reference's weights (shared, not
// copied), a LoRA critic its score model's trunk. The context variables are
// brought up to date (sync) only when a checkpoint or the policy is written,
// under the names the GoMLX steppers use, so one checkpoint format serves both
// backends.
type nativeNets struct {
	ref, reward, cost *llama.Model // cost nil without a cost model
	actor             *nativeTrained
	critics           [2]*nativeTrained // reward critic, cost critic (nil without)
	dirty             bool              // trained since the last sync
}

// nativeTrained is a trained native model with its optimiser and the context variables of its
// trained parameters (llama.FromContext's Vars).
type nativeTrained struct {
	m     *llama.Model
	vars  llama.Vars
	opt   *llama.AdamW
	g     llama.Grads
	scope string // the model's context scope; OptimScope its optimiser state's
	optim string
	// ZeRO-1 (--zero-stage 1 on several ranks): the trained parameters (sorted) and their owners.
	names  []string
	owners []int
}

// natives returns the native models, building them from the context on first use.
func (n *GraphNets) natives() (*nativeNets, error) {
	if n.nat == nil {
		nn, err := n.loadNatives()
		if err != nil {
			return nil, fmt.Errorf("native: %w", err)
		}
		n.nat = nn
	}
	return n.nat, nil
}

// loadNatives builds the native models from the context's variables and the optimisers from
// the AdamW state the context holds (a restored checkpoint's; none at the start of a run).
func (n *GraphNets) loadNatives() (*nativeNets, error) {
	frozen := func(scope string, cfg *model.Config) (*llama.Model, error) {
		m, _, err := llama.FromContext(n.ctx.InAbsPath(scope), cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", scope, err)
		}
		m.SetTrainable(func(string) bool { return false })
		return m, nil
	}
	nn := &nativeNets{}
	var err error
	if nn.ref, err = frozen(ScopeReference, n.actorCfg); err != nil {
		return nil, err
	}
	if nn.reward, err = frozen(ScopeReward, n.rCfg); err != nil {
		return nil, err
	}
	if n.cCfg != nil {
		if nn.cost, err = frozen(ScopeCost, n.cCfg); err != nil {
			return nil, err
		}
	}
	// trained builds a trained model: over base (its weights shared, not copied) when its scope
	// reads base's weights (LoRA), else from its own full weights; then its optimiser, with the
	// stepper's settings.
	trained := func(scope string, cfg *model.Config, base *llama.Model, s *trainer.Stepper) (*nativeTrained, error) {
		t := &nativeTrained{}
		if n.ctx.GetVariableByScopeAndName(scope, model.NameEmbed) == nil {
			if base == nil {
				return nil, fmt.Errorf("%s: shares a base model that is not loaded natively", scope)
			}
			own, vars, err := ownWeights(n.ctx, scope)
			if err != nil {
				return nil, err
			}
			scale := 1.0
			if n.cfg.LoRA.Rank > 0 {
				scale = n.cfg.LoRA.Alpha / float64(n.cfg.LoRA.Rank)
			}
			if t.m, err = base.Derive(own, scale); err != nil {
				return nil, fmt.Errorf("%s: %w", scope, err)
			}
			t.vars = vars
		} else {
			m, vars, err := llama.FromContext(n.ctx.InAbsPath(scope), cfg)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", scope, err)
			}
			t.m, t.vars = m, llama.Vars{}
			for name, v := range vars {
				if m.Trainable[name] {
					t.vars[name] = v
				}
			}
		}
		sc := s.Config()
		var err error
		t.opt, err = llama.NewAdamW(optim.AdamWConfig{Beta1: sc.Beta1, Beta2: sc.Beta2, Epsilon: sc.Epsilon,
			WeightDecay: sc.WeightDecay, NoDecay: func(name string) bool { return sc.NoDecay(scope + context.ScopeSeparator + name) },
			ClipNorm: sc.ClipNorm, Accumulation: sc.Accumulation, StateScope: sc.OptimScope})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", scope, err)
		}
		t.g = t.m.NewGrads()
		t.scope, t.optim = scope, sc.OptimScope
		if comm := n.cfg.Comm; n.cfg.ZeroStage == 1 && comm != nil && comm.Size() > 1 {
			if err := t.shard(comm, n.ctx); err != nil {
				return nil, fmt.Errorf("%s: %w", scope, err)
			}
		}
		if err := t.opt.LoadState(n.ctx, t.vars); err != nil {
			return nil, fmt.Errorf("%s: %w", scope, err)
		}
		return t, nil
	}
	if nn.actor, err = trained(ScopeActor, n.actorCfg, nn.ref, n.actor); err != nil {
		return nil, err
	}
	if nn.critics[0], err = trained(ScopeRewardCritic, n.rcCfg, nn.reward, n.rcritic); err != nil {
		return nil, err
	}
	if n.ccritic != nil {
		if nn.critics[1], err = trained(ScopeCostCritic, n.ccCfg, nn.cost, n.ccritic); err != nil {
			return nil, err
		}
	}
	return nn, nil
}

// shard partitions t's trained parameters among the ranks of comm (ZeRO-1,
// trainer.PartitionVariables): t's optimiser updates and keeps moments for this rank's
// share only, and ctx must hold none of the others' (a restore skips them).
func (t *nativeTrained) shard(comm dist.Communicator, ctx *context.Context) error {
	t.names = slices.Sorted(maps.Keys(t.g))
	for _, name := range t.names {
		if t.vars[name] == nil {
			return fmt.Errorf("no variable for trained parameter %q", name)
		}
	}
	t.owners = trainer.ShardNative(t.opt, t.names, t.trainedVars(), comm)
	return trainer.CheckMoments(ctx, t.optim, t.trainedVars(), t.owners, comm.Rank())
}

// trainedVars are the variables of t.names, in order.
func (t *nativeTrained) trainedVars() []*context.Variable {
	vs := make([]*context.Variable, len(t.names))
	for i, name := range t.names {
		vs[i] = t.vars[name]
	}
	return vs
}

// gatherOwned hands every rank the owners' updated parameters after a ZeRO-1 step (a no-op
// otherwise).
func (n *GraphNets) gatherOwned(t *nativeTrained) error {
	if t.owners == nil {
		return nil
	}
	start := time.Now()
	defer func() { n.natCommTime += time.Since(start) }()
	return trainer.GatherNative(n.cfg.Comm, t.m, t.names, t.owners)
}

// ownWeights reads the float32 variables held in scope itself (not its shared base).
func ownWeights(ctx *context.Context, scope string) (model.Weights, llama.Vars, error) {
	w, vars := model.Weights{}, llama.Vars{}
	for v := range ctx.InAbsPath(scope).IterVariablesInScope() {
		if v.Scope() != scope {
			continue
		}
		if v.Shape().DType != dtypes.Float32 {
			return nil, nil, fmt.Errorf("%s: trained variable of dtype %s, want float32", v.ScopeAndName(), v.Shape().DType)
		}
		data, err := model.VariableData(v)
		if err != nil {
			return nil, nil, err
		}
		w[v.Name()] = &model.Tensor{Shape: v.Shape().Dimensions, Data: data}
		vars[v.Name()] = v
	}
	return w, vars, nil
}

// syncNative brings the context's trained variables and AdamW state up to date with the native
// models (before a checkpoint, ActorWeights or SavePolicy).
func (n *GraphNets) syncNative() error {
	if n.nat == nil || !n.nat.dirty {
		return nil
	}
	for _, t := range []*nativeTrained{n.nat.actor, n.nat.critics[0], n.nat.critics[1]} {
		if t == nil {
			continue
		}
		names := make([]string, 0, len(t.vars))
		for name := range t.vars {
			names = append(names, name)
		}
		if err := t.m.WriteContext(t.vars, names); err != nil {
			return fmt.Errorf("native sync: %w", err)
		}
		if err := t.opt.SaveState(n.ctx, t.vars); err != nil {
			return fmt.Errorf("native sync: %w", err)
		}
	}
	n.nat.dirty = false
	return nil
}

// nativeUpdateActor is UpdateActor on the native engine: per micro-batch, the actor's forward
// and token log-probs, kernels' clipped surrogate (PPO or PPO-Lag) with its gradient, and with
// PTX the supervised loss, all scaled as the graph's loss (½(actor + coeff·ptx) with PTX) and
// back-propagated into the accumulated gradients; then one native AdamW step.
func (n *GraphNets) nativeUpdateActor(b ActorBatch) (st ActorStats, err error) {
	nn, err := n.natives()
	if err != nil {
		return st, err
	}
	a, r, ptx := nn.actor, b.Rollout, b.PTX
	defer func() {
		if err != nil {
			a.g.Zero()
		}
	}()
	k := n.accum
	if r.B%k != 0 || (ptx != nil && ptx.B%k != 0) {
		return st, fmt.Errorf("actor: batch %d (PTX %v) not divisible into %d micro-batches", r.B, ptx != nil, k)
	}
	L, mb := r.L(), r.B/k
	w := 1.0 // the surrogate's weight in the loss
	if ptx != nil {
		w = 0.5
	}
	lambda := float64(float32(b.Lambda)) // the graph's float32 input
	for i := 0; i < k; i++ {
		lo, hi := i*mb, (i+1)*mb
		tp, err := a.m.Forward(mb, r.T, r.Seq[lo*r.T:hi*r.T], r.Mask[lo*r.T:hi*r.T])
		if err != nil {
			return st, fmt.Errorf("actor: %w", err)
		}
		logp, err := a.m.TokenLogProbs(tp)
		if err != nil {
			return st, fmt.Errorf("actor: %w", err)
		}
		args := kernels.ActorArgs[float32]{B: mb, N: L, ClipRatio: n.clipRatio, Lambda: lambda, LogProbs: logp,
			OldLogProbs: r.LogProbs[lo*L : hi*L], RewardAdv: b.RewardAdv[lo*L : hi*L], Mask: b.Mask[lo*L : hi*L]}
		grad := make([]float32, mb*L)
		var res kernels.ActorResult
		if b.CostAdv != nil {
			args.CostAdv = b.CostAdv[lo*L : hi*L]
			res, err = kernels.ActorLossPPOLag(nil, args, grad)
		} else {
			res, err = kernels.ActorLossPPO(nil, args, grad)
		}
		if err != nil {
			return st, fmt.Errorf("actor: %w", err)
		}
		if w != 1 {
			for j := range grad {
				grad[j] *= float32(w)
			}
		}
		if err := backwardLogProbs(a, tp, grad); err != nil {
			return st, fmt.Errorf("actor: %w", err)
		}
		st.Loss += res.Loss / float64(k)
		st.ClipFrac += res.ClipFrac / float64(k)
		st.ApproxKL += res.ApproxKL / float64(k)
		if ptx != nil {
			pm := ptx.B / k
			den, err := ptx.den(i, k, i*pm, (i+1)*pm)
			if err != nil {
				return st, fmt.Errorf("actor PTX: %w", err)
			}
			l, err := nativePTXStep(a, pm, ptx.T, ptx.IDs[i*pm*ptx.T:(i+1)*pm*ptx.T], ptx.Mask[i*pm*ptx.T:(i+1)*pm*ptx.T],
				ptx.Labels[i*pm*ptx.T:(i+1)*pm*ptx.T], float64(float32(den)), 0.5*float64(float32(b.PTXCoeff)))
			if err != nil {
				return st, fmt.Errorf("actor PTX: %w", err)
			}
			st.PTXLoss += l / float64(k)
		}
	}
	if err := n.allReduceGrads(a.g); err != nil {
		return st, fmt.Errorf("actor: %w", err)
	}
	if st.GradNorm, err = a.opt.Apply(a.m, a.g, b.LR); err != nil {
		return st, fmt.Errorf("actor: %w", err)
	}
	if err := n.gatherOwned(a); err != nil {
		return st, fmt.Errorf("actor: %w", err)
	}
	nn.dirty = true
	return st, nil
}

// backwardLogProbs back-propagates the gradient of token log-probs [B, T−1] into t's gradients.
func backwardLogProbs(t *nativeTrained, tp *llama.Tape, dLogp []float32) error {
	dh, err := t.m.TokenLogProbsBackward(tp, dLogp, t.g)
	if err != nil {
		return err
	}
	return t.m.Backward(tp, dh, t.g)
}

// nativePTXStep adds weight × the gradient of the PTX loss (spec §1.9: −Σ logp·m / den over the
// label tokens; den = max(Σ m, 1) in one process, see PTXBatch.Den) of one [b, tt] batch to t's
// gradients and returns the loss.
func nativePTXStep(t *nativeTrained, b, tt int, ids []int32, mask []float32, labels []int32, den, weight float64) (float64, error) {
	tp, err := t.m.Forward(b, tt, ids, mask)
	if err != nil {
		return 0, err
	}
	logp, err := t.m.TokenLogProbs(tp)
	if err != nil {
		return 0, err
	}
	lm := make([]float32, b*(tt-1))
	sum := 0.0
	for i := 0; i < b; i++ {
		for j := 0; j+1 < tt; j++ {
			if labels[i*tt+j+1] != -100 {
				lm[i*(tt-1)+j] = 1
				sum += float64(logp[i*(tt-1)+j])
			}
		}
	}
	g := float32(-weight / den)
	for j, m := range lm {
		lm[j] = m * g
	}
	if err := backwardLogProbs(t, tp, lm); err != nil {
		return 0, err
	}
	return -sum / den, nil
}

// nativeUpdateCritic is UpdateCritic on the native engine: per micro-batch, the critic's
// forward and values, kernels' clipped value loss with its gradient back-propagated into the
// accumulated gradients; then one native AdamW step. It returns the mean micro-batch loss.
func (n *GraphNets) nativeUpdateCritic(cost bool, lr float64, r *Rollout, returns, mask []float32) (loss float64, err error) {
	nn, err := n.natives()
	if err != nil {
		return 0, err
	}
	c, old := nn.critics[0], r.RewardValues
	if cost {
		c, old = nn.critics[1], r.CostValues
	}
	if c == nil {
		return 0, fmt.Errorf("critic: no cost critic")
	}
	defer func() {
		if err != nil {
			c.g.Zero()
		}
	}()
	k := n.accum
	if r.B%k != 0 {
		return 0, fmt.Errorf("critic: batch %d not divisible into %d micro-batches", r.B, k)
	}
	L, mb := r.L(), r.B/k
	for i := 0; i < k; i++ {
		lo, hi := i*mb, (i+1)*mb
		tp, err := c.m.Forward(mb, r.T, r.Seq[lo*r.T:hi*r.T], r.Mask[lo*r.T:hi*r.T])
		if err != nil {
			return 0, fmt.Errorf("critic: %w", err)
		}
		s, err := c.m.Scores(tp)
		if err != nil {
			return 0, fmt.Errorf("critic: %w", err)
		}
		grad := make([]float32, mb*L)
		l, err := kernels.CriticLoss(nil, kernels.CriticArgs[float32]{B: mb, N: L, ClipValue: n.clipValue,
			Values: dropLastCol(s, mb, r.T), OldValues: old[lo*L : hi*L], Returns: returns[lo*L : hi*L], Mask: mask[lo*L : hi*L]}, grad)
		if err != nil {
			return 0, fmt.Errorf("critic: %w", err)
		}
		dh, err := c.m.ScoresBackward(tp, padLastCol(grad, mb, L), c.g)
		if err != nil {
			return 0, fmt.Errorf("critic: %w", err)
		}
		if err := c.m.Backward(tp, dh, c.g); err != nil {
			return 0, fmt.Errorf("critic: %w", err)
		}
		loss += l / float64(k)
	}
	if err := n.allReduceGrads(c.g); err != nil {
		return 0, fmt.Errorf("critic: %w", err)
	}
	if _, err := c.opt.Apply(c.m, c.g, lr); err != nil {
		return 0, fmt.Errorf("critic: %w", err)
	}
	if err := n.gatherOwned(c); err != nil {
		return 0, fmt.Errorf("critic: %w", err)
	}
	nn.dirty = true
	return loss, nil
}

// allReduceGrads averages accumulated gradients across the ranks of GraphNetsConfig.Comm (a
// no-op for one process), in name order, before the optimiser step, as the GoMLX steppers do.
func (n *GraphNets) allReduceGrads(g llama.Grads) error {
	comm := n.cfg.Comm
	if comm == nil || comm.Size() < 2 {
		return nil
	}
	start := time.Now()
	defer func() { n.natCommTime += time.Since(start) }()
	names := slices.Sorted(maps.Keys(g))
	grads := make([][]float32, len(names))
	for i, name := range names {
		grads[i] = g[name]
	}
	if err := dist.AllReduceSlices(stdctx.Background(), comm, dist.Mean, grads...); err != nil {
		return fmt.Errorf("averaging gradients across ranks: %w", err)
	}
	return nil
}
