package ppo

// Data parallelism (Options.Comm with more than one rank).
//
// --prompt-batch-size and --train-batch-size are global, as --batch-size is for the stages: every
// rank draws the same prompt batch (the same shuffle and position) and keeps its contiguous share
// of each micro-batch, so rank r's rows of micro-batch k are rows [r·B/W, (r+1)·B/W) of the
// one-process run's micro-batch k. Each rank generates, scores and computes GAE for its rows; the
// actor's and both critics' gradients are averaged across ranks inside their Steppers (the mean of
// equal-sized per-rank means: the global batch's, since every loss is a mean over rows, spec §1.5
// and §1.6) before the clipped AdamW step, so the weights stay identical on every rank.
//
// The Lagrange multiplier follows the reference (spec §1.7): each rank keeps its own episode-cost
// window of --episode-cost-window-size costs (its own samples), J_c is the mean over ranks of the
// window means, and every rank applies the same update with it (the reference reduces to rank 0 and
// broadcasts λ; here the ranks gather the float64 means exactly and compute the same bits). With
// the window not yet full, or a multiple of each rank's rollout batch, J_c equals the one-process
// run's over the same global batch. Advantages are not whitened (spec §1.4), so no other statistic
// crosses ranks. PTX batches are sharded like prompts, per micro-batch of the nets' gradient
// accumulation, and every rank divides its PTX loss by the global micro-batch's label count over
// the world size (counted from the global batch every rank draws, so no collective), so the
// ranks' mean is the one-process token mean whatever the ranks' label counts.
//
// Sampling gives every row of the global rollout batch its own random stream (rolloutSeed and the
// row's global index), so each rank samples for its rows exactly what one process samples for them.
//
// Metrics and perf lines are reduced over ranks (rewards, costs and lengths gathered in the
// one-process order; rl-step statistics averaged; tokens summed; seconds the slowest rank's), and
// rank 0 writes metrics, checkpoints, plots, samples and the policy. A checkpoint stores every
// rank's λ state (its window); the data position is the same on every rank. --resume needs
// the checkpoint's world size.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
)

// checkShares refuses batch sizes that do not split evenly over world ranks.
func checkShares(c *Config, world int) error {
	if world < 2 {
		return nil
	}
	if c.TrainBatchSize%world != 0 {
		return fmt.Errorf("ppo: --train-batch-size %d is global and must be divisible by the world size %d", c.TrainBatchSize, world)
	}
	if r := c.PromptBatchSize % c.TrainBatchSize; r%world != 0 {
		return fmt.Errorf("ppo: the last micro-batch of --prompt-batch-size %d (%d prompts) must be divisible by the world size %d", c.PromptBatchSize, r, world)
	}
	return nil
}

// share is this rank's contiguous share of a global micro-batch and the index of its first row.
func (t *Trainer) share(mb [][]int32) ([][]int32, int) {
	n := len(mb) / t.comm.Size()
	r := t.comm.Rank()
	return mb[r*n : (r+1)*n], r * n
}

// sharePTX is this rank's rows of a global PTX batch, with the loss denominators of the nets'
// micro-batches (PTXBatch.share): the PTX loss is the token mean over every rank's labels.
func (t *Trainer) sharePTX(b *PTXBatch) *PTXBatch {
	k := 1
	if a, ok := t.nets.(interface{ Accumulation() int }); ok {
		k = a.Accumulation()
	}
	return b.share(t.comm.Rank(), t.comm.Size(), k)
}

// rolloutSeed is the sampling seed of the next rollout batch: every row of the global batch draws
// from its own stream under it (Nets.Generate's firstRow is the row's index in the one-process
// batch), so the samples are a pure function of --seed, the step and the row, whatever the world
// size, and a resume needs no random state.
func (t *Trainer) rolloutSeed() uint64 {
	return model.DeriveSeed(t.cfg.Seed^0x5afe41f, uint64(t.st.Step))
}

// globalJc is J_c as the reference computes it across ranks: the mean over ranks of each rank's
// window mean; have is false while every window is empty.
func (t *Trainer) globalJc() (jc float64, have bool, err error) {
	if t.comm.Size() < 2 {
		return t.lag.Jc(), t.lag.k.WindowLen() > 0, nil
	}
	all, err := dist.AllGatherFloat64(context.Background(), t.comm, []float64{t.lag.Jc(), float64(t.lag.k.WindowLen())})
	if err != nil {
		return 0, false, fmt.Errorf("gathering episode costs: %w", err)
	}
	for _, v := range all {
		if len(v) != 2 {
			return 0, false, errors.New("gathering episode costs: malformed record")
		}
		jc += v[0]
		have = have || v[1] > 0
	}
	return jc / float64(len(all)), have, nil
}

// updateLambda is the λ update at the start of an rl_step (spec §1.7).
func (t *Trainer) updateLambda() error {
	if !t.cfg.UsesCostCritic() {
		return nil
	}
	jc, have, err := t.globalJc()
	if err != nil {
		return err
	}
	t.lag.k.UpdateWith(t.st.GlobalStep, jc, have)
	return nil
}

// reduceStep completes a rollout batch's metrics over all ranks: rewards, costs and lengths in
// the one-process order, rl-step statistics averaged over ranks, tokens summed and seconds the
// slowest rank's. It returns the global J_c.
func (t *Trainer) reduceStep(m *StepMetrics, perf *PerfMetrics, rollouts []*Rollout) (float64, error) {
	w := t.comm.Size()
	// Per rollout: rewards, costs (if any) and response lengths.
	nr := len(rollouts)
	rewards, costs, lens := make([][]float64, nr), make([][]float64, nr), make([][]float64, nr)
	for k, r := range rollouts {
		rewards[k] = to64(r.Reward)
		if r.Cost != nil {
			costs[k] = to64(r.Cost)
		}
		for _, n := range r.ResponseLengths() {
			lens[k] = append(lens[k], float64(n))
		}
	}
	means := []*float64{&m.ActorLoss, &m.PTXLoss, &m.ClipFrac, &m.ApproxKL, &m.RewardCriticLoss, &m.CostCriticLoss,
		&m.KL, &m.RewardWithKLPenalty, &m.RewardAdvantage, &m.RewardReturn, &m.RewardValue, &m.CostAdvantage,
		&m.CostReturn, &m.CostValue}
	jc := t.lag.Jc()
	if w > 1 {
		rec := []float64{perf.GenSeconds, perf.ScoreSeconds, perf.UpdateSeconds, float64(perf.GenTokens), float64(perf.TrainTokens)}
		for _, p := range means {
			rec = append(rec, *p)
		}
		for k := range rollouts {
			rec = append(rec, float64(len(rewards[k])), float64(len(costs[k])))
			rec = append(append(append(rec, rewards[k]...), costs[k]...), lens[k]...)
		}
		all, err := dist.AllGatherFloat64(context.Background(), t.comm, rec)
		if err != nil {
			return 0, fmt.Errorf("reducing metrics across ranks: %w", err)
		}
		for _, p := range means {
			*p = 0
		}
		*perf = PerfMetrics{Step: perf.Step, Ranks: w}
		for k := range rewards {
			rewards[k], costs[k], lens[k] = nil, nil, nil
		}
		for r, rec := range all {
			bad := fmt.Errorf("reducing metrics across ranks: rank %d sent a malformed record", r)
			if len(rec) < 5+len(means) {
				return 0, bad
			}
			perf.GenSeconds = max(perf.GenSeconds, rec[0])
			perf.ScoreSeconds = max(perf.ScoreSeconds, rec[1])
			perf.UpdateSeconds = max(perf.UpdateSeconds, rec[2])
			perf.GenTokens += int(rec[3])
			perf.TrainTokens += int(rec[4])
			for i, p := range means {
				*p += rec[5+i] / float64(w)
			}
			rec = rec[5+len(means):]
			for k := 0; k < nr; k++ {
				if len(rec) < 2 {
					return 0, bad
				}
				nb, nc := int(rec[0]), int(rec[1])
				if len(rec) < 2+2*nb+nc {
					return 0, bad
				}
				rec = rec[2:]
				rewards[k] = append(rewards[k], rec[:nb]...)
				costs[k] = append(costs[k], rec[nb:nb+nc]...)
				lens[k] = append(lens[k], rec[nb+nc:2*nb+nc]...)
				rec = rec[2*nb+nc:]
			}
		}
		var err2 error
		if jc, _, err2 = t.globalJc(); err2 != nil {
			return 0, err2
		}
		if s, ok := t.nets.(interface{ CollectiveSeconds() float64 }); ok {
			total := s.CollectiveSeconds() // cumulative
			perf.CollectiveSeconds, t.collSeconds = total-t.collSeconds, total
		}
	}
	var rs, cs, ls []float64
	for k := range rewards {
		rs, cs, ls = append(rs, rewards[k]...), append(cs, costs[k]...), append(ls, lens[k]...)
	}
	m.Reward = mean64(rs)
	if t.cfg.UsesCost() {
		m.Cost = mean64(cs)
		harmful := 0
		for _, c := range cs {
			if c > 0 {
				harmful++
			}
		}
		m.HarmfulRate = float64(harmful) / float64(len(cs))
	}
	for _, n := range ls {
		m.GenLenMean += n / float64(len(ls))
		m.GenLenMax = max(m.GenLenMax, int(n))
	}
	return jc, nil
}

// interrupted reports (as an error, after a checkpoint) that ctx was cancelled on any rank, so
// that every rank stops after the same step.
func (t *Trainer) interrupted(ctx context.Context) error {
	err := ctx.Err()
	if t.comm.Size() > 1 {
		v := 0.0
		if err != nil {
			v = 1
		}
		all, gerr := dist.AllGatherFloat64(context.Background(), t.comm, []float64{v})
		if gerr != nil {
			return fmt.Errorf("ppo: after step %d: %w", t.st.Step, gerr)
		}
		for _, a := range all {
			if len(a) == 1 && a[0] > 0 && err == nil {
				err = errors.New("another rank was interrupted")
			}
		}
	}
	if err == nil {
		return nil
	}
	dir, cerr := t.checkpoint()
	if cerr != nil {
		return errors.Join(err, cerr)
	}
	return fmt.Errorf("ppo: interrupted after step %d (checkpoint %s saved; rerun with --resume): %w", t.st.Step, dir, err)
}

// checkInStep fails unless every rank starts at the same step (the same checkpoint).
func (t *Trainer) checkInStep() error {
	if t.comm.Size() < 2 {
		return nil
	}
	all, err := dist.AllGatherFloat64(context.Background(), t.comm, []float64{float64(t.st.Step), float64(t.st.GlobalStep)})
	if err != nil {
		return fmt.Errorf("ppo: checking that ranks start in step: %w", err)
	}
	for r, a := range all {
		if len(a) != 2 || int(a[0]) != t.st.Step || int(a[1]) != t.st.GlobalStep {
			return fmt.Errorf("ppo: rank %d starts at step %v, rank %d at step %d (every rank must see the same --out)", r, a, t.comm.Rank(), t.st.Step)
		}
	}
	return nil
}

// primary reports whether this rank writes metrics, checkpoints and the policy.
func (t *Trainer) primary() bool { return t.comm.Rank() == 0 }

// rankLambdas gathers every rank's λ state (its episode-cost window) for a checkpoint.
func (t *Trainer) rankLambdas() ([]json.RawMessage, error) {
	mine, err := json.Marshal(t.lag.State())
	if err != nil {
		return nil, err
	}
	if t.comm.Size() < 2 {
		return []json.RawMessage{mine}, nil
	}
	all, err := t.comm.AllGather(context.Background(), mine)
	if err != nil {
		return nil, fmt.Errorf("gathering the ranks' λ states: %w", err)
	}
	out := make([]json.RawMessage, len(all))
	for r, b := range all {
		out[r] = b
	}
	return out, nil
}

// Checkpoint keys of a data-parallel run (state.json's extra).
const (
	extraWorldSize  = "world_size"
	extraRankLambda = "rank_lambda"
)

// worldOf returns the world size that wrote a checkpoint's extra state (1 when not recorded).
func worldOf(extra map[string]json.RawMessage) (int, error) {
	b, ok := extra[extraWorldSize]
	if !ok {
		return 1, nil
	}
	w, err := strconv.Atoi(string(b))
	if err != nil || w < 1 {
		return 0, fmt.Errorf("world size %q", b)
	}
	return w, nil
}

func mean64(x []float64) float64 {
	if len(x) == 0 {
		return 0
	}
	s := 0.0
	for _, v := range x {
		s += v
	}
	return s / float64(len(x))
}
