package ppo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"time"

	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/metrics"
	"github.com/saferlhf/saferlhf/train/optim"
)

// Options are the run-level settings of a Trainer (where to write, how often to checkpoint).
type Options struct {
	OutDir          string    // metrics.jsonl, perf.jsonl, checkpoints/, plots, final policy
	CheckpointEvery int       // rollout batches between checkpoints (0: only at the end)
	KeepCheckpoints int       // checkpoints kept (default 2)
	Resume          bool      // continue from the newest intact checkpoint in OutDir/checkpoints (none is an error)
	Progress        io.Writer // progress bar on a terminal, else a line every 30 s (nil: none)
	// Frozen are the models the run reads but does not train (reference actor, reward and cost
	// models: checkpoint.FrozenModel); checkpoints reference them, and a resume refuses changed ones.
	Frozen []checkpoint.Frozen
	// AllowConfigChange resumes even when a trajectory setting or a frozen model changed.
	AllowConfigChange bool
	// Config is the run's configuration, stored in every checkpoint and compared on resume (nil:
	// the loop's Config); ConfigIgnore lists its keys that do not change the trajectory
	// (checkpoint.CompareConfig).
	Config       any
	ConfigIgnore []string
	// CheckpointFiles are extra files (name → contents, e.g. the tokenizer) stored in each
	// checkpoint, so that it opens with generate and eval-* on its own.
	CheckpointFiles map[string][]byte
	// StopAfter stops (without error, after checkpointing) once this many rollout batches are
	// done in this process; 0 runs to the end. Used by tests to simulate interruptions.
	StopAfter int
	// Comm, with more than one rank, makes the run data-parallel (see dist.go): each rank
	// generates, scores and trains on its share of every batch; rank 0 writes the outputs.
	// Nil: one process.
	Comm dist.Communicator
	// RLMath runs KL shaping and GAE as a graph program (required by Config.RLMath "graph").
	RLMath *RLMath
}

// StepMetrics is one line of metrics.jsonl: everything here is a deterministic function of the
// seed and data, so a resumed run writes exactly the same bytes as an uninterrupted one.
type StepMetrics struct {
	Step                int     `json:"step"`
	GlobalStep          int     `json:"global_step"`
	Reward              float64 `json:"reward"`
	Cost                float64 `json:"cost"`
	HarmfulRate         float64 `json:"harmful_rate"`
	Lambda              float64 `json:"lambda"`
	EpisodeCost         float64 `json:"episode_cost"`
	JcMinusD            float64 `json:"jc_minus_d"`
	KL                  float64 `json:"kl"`
	RewardWithKLPenalty float64 `json:"reward_with_kl_penalty"`
	ActorLoss           float64 `json:"actor_loss"`
	PTXLoss             float64 `json:"ptx_loss,omitempty"`
	ClipFrac            float64 `json:"clip_frac"`
	ApproxKL            float64 `json:"approx_kl"`
	RewardCriticLoss    float64 `json:"reward_critic_loss"`
	CostCriticLoss      float64 `json:"cost_critic_loss"`
	RewardAdvantage     float64 `json:"reward_advantage"`
	RewardReturn        float64 `json:"reward_return"`
	RewardValue         float64 `json:"reward_value"`
	CostAdvantage       float64 `json:"cost_advantage"`
	CostReturn          float64 `json:"cost_return"`
	CostValue           float64 `json:"cost_value"`
	GenLenMean          float64 `json:"gen_len_mean"`
	GenLenMax           int     `json:"gen_len_max"`
	ActorLR             float64 `json:"actor_lr"`
	CriticLR            float64 `json:"critic_lr"`
}

// PerfMetrics is one line of perf.jsonl: wall-clock measurements (not reproducible by nature).
type PerfMetrics struct {
	Step              int     `json:"step"`
	GenSeconds        float64 `json:"gen_s"`
	ScoreSeconds      float64 `json:"score_s"`
	UpdateSeconds     float64 `json:"update_s"`
	GenTokens         int     `json:"gen_tokens"`
	TrainTokens       int     `json:"train_tokens"`
	GenTokensPerSec   float64 `json:"gen_tokens_per_s"`
	TrainTokensPerSec float64 `json:"train_tokens_per_s"`
	// With several ranks: tokens are all ranks' together and seconds the slowest rank's;
	// CollectiveSeconds is rank 0's time in gradient all-reduces (waiting included).
	Ranks             int     `json:"ranks,omitempty"`
	CollectiveSeconds float64 `json:"collective_s,omitempty"`
}

// State is the trainer's part of a checkpoint (weights and optimizer state are Nets.Checkpoint's).
type State struct {
	Step       int // rollout batches done
	GlobalStep int // rl steps done (λ delay and schedules count these)
}

// position is the data position stored in a checkpoint's state.json.
type position struct {
	Prompts    DataPosition `json:"prompts"`
	PTX        DataPosition `json:"ptx"`
	GlobalStep int          `json:"global_step"`
}

// Trainer runs the PPO-Lagrangian loop (or PPO / fixed penalty / PID) of spec §1.8.
type Trainer struct {
	cfg     Config
	opt     Options
	nets    Nets
	prompts *PromptSet
	ptx     *PTXSet
	lag     *lagrange
	ws      *kernels.Workspace
	comm    dist.Communicator
	st      State
	// collSeconds is the nets' gradient all-reduce time at the last perf line.
	collSeconds float64
	total       int // rollout batches in the whole run
	// saved is the step whose state the newest checkpoint holds (restored or written by this
	// run; -1: none), which checkpoint does not write again.
	saved int

	actorSched, criticSched optim.Schedule

	ckpts           *checkpoint.Manager
	metricsW, perfW *metrics.Writer
	history         []StepMetrics
	perf            []PerfMetrics
}

// NewTrainer prepares a run; with opt.Resume it restores the latest checkpoint of opt.OutDir.
// ptx may be nil: no PTX mixing, whatever cfg.PTXCoeff (as the reference without ptx_datasets).
func NewTrainer(cfg Config, opt Options, nets Nets, prompts *PromptSet, ptx *PTXSet) (*Trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opt.KeepCheckpoints <= 0 {
		opt.KeepCheckpoints = 2
	}
	ckpts, err := checkpoint.NewManager(filepath.Join(opt.OutDir, "checkpoints"), opt.KeepCheckpoints)
	if err != nil {
		return nil, fmt.Errorf("ppo: %w", err)
	}
	t := &Trainer{cfg: cfg, opt: opt, nets: nets, prompts: prompts, ptx: ptx,
		ws: kernels.NewWorkspace(1), ckpts: ckpts, comm: opt.Comm, saved: -1}
	if t.comm == nil {
		t.comm = dist.Self{}
	}
	if cfg.RLMath == RLMathGraph && opt.RLMath == nil {
		t.ws.Close()
		return nil, fmt.Errorf("ppo: --rl-math graph needs a GoMLX backend (go or xla:*)")
	}
	if err := checkShares(&t.cfg, t.comm.Size()); err != nil {
		return nil, err
	}
	if t.lag, err = newLagrange(&t.cfg); err != nil {
		return nil, err
	}
	t.total = cfg.Epochs * prompts.BatchesPerEpoch(cfg.PromptBatchSize)
	if cfg.MaxSteps > 0 && cfg.MaxSteps < t.total || cfg.MaxSteps > 0 && cfg.Epochs <= 1 {
		t.total = cfg.MaxSteps
	}
	rl := t.totalRLSteps()
	warm := optim.WarmupSteps(cfg.WarmupRatio, rl)
	if t.actorSched, err = optim.NewSchedule(cfg.ActorScheduler, cfg.ActorLR, warm, rl); err != nil {
		return nil, fmt.Errorf("ppo: --actor-lr-scheduler: %w", err)
	}
	if t.criticSched, err = optim.NewSchedule(cfg.CriticScheduler, cfg.CriticLR, warm, rl); err != nil {
		return nil, fmt.Errorf("ppo: --critic-lr-scheduler: %w", err)
	}
	if err := t.openMetrics(); err != nil {
		t.ws.Close()
		return nil, err
	}
	return t, nil
}

// TotalSteps is the number of rollout batches of the run.
func (t *Trainer) TotalSteps() int { return t.total }

// History returns the metrics of the steps run by this process.
func (t *Trainer) History() []StepMetrics { return t.history }

// PerfHistory returns the timings of the steps run by this process.
func (t *Trainer) PerfHistory() []PerfMetrics { return t.perf }

// Close closes the metric files.
func (t *Trainer) Close() error {
	t.ws.Close()
	if t.metricsW == nil { // not rank 0
		return nil
	}
	return errors.Join(t.metricsW.Close(), t.perfW.Close())
}

// totalRLSteps is the reference's total_training_steps (spec §1.10) for the LR schedules.
func (t *Trainer) totalRLSteps() int {
	return t.total * t.cfg.UpdateIters * ceilDiv(t.cfg.PromptBatchSize, t.cfg.TrainBatchSize) * t.cfg.NumReturnSeqs
}

// Run trains until the last rollout batch (or ctx is cancelled, which checkpoints and returns ctx.Err()).
func (t *Trainer) Run(ctx context.Context) error {
	var bar *metrics.Progress
	if t.opt.Progress != nil && t.primary() {
		bar = metrics.NewProgress(t.total, t.st.Step, string(t.cfg.Algorithm), t.opt.Progress)
		defer bar.Finish()
	}
	if err := t.checkInStep(); err != nil {
		return err
	}
	done := 0
	for t.st.Step < t.total {
		if err := t.interrupted(ctx); err != nil { // it checkpointed
			return err
		}
		m, p, err := t.trainStep()
		if err != nil {
			return fmt.Errorf("ppo step %d: %w (training stopped; the last intact checkpoint is %s)", t.st.Step+1, err,
				t.ckpts.LastIntact())
		}
		t.st.Step++
		if err := t.log(m, p); err != nil {
			return err
		}
		t.progress(bar, m, p)
		done++
		last := t.st.Step == t.total
		if last || t.opt.CheckpointEvery > 0 && t.st.Step%t.opt.CheckpointEvery == 0 ||
			t.opt.StopAfter > 0 && done >= t.opt.StopAfter {
			if _, err := t.checkpoint(); err != nil {
				return err
			}
		}
		if t.opt.StopAfter > 0 && done >= t.opt.StopAfter && !last {
			return nil
		}
	}
	return nil
}

// trainStep is one iteration of RLTrainer.train (spec §1.8): rollouts for a prompt batch, then
// update_iters passes of rl_step over its micro-batches.
func (t *Trainer) trainStep() (StepMetrics, PerfMetrics, error) {
	cfg := &t.cfg
	var perf PerfMetrics
	perf.Step = t.st.Step + 1
	prompts := t.prompts.Next(cfg.PromptBatchSize)

	// 1–2. Rollout, micro-batch by micro-batch: generate num_return_sequences samples of each of
	// train_bs prompts, split them into nrs micro-batches of train_bs rows (micro-batch k holds every
	// prompt's k-th sample, as RLTrainer.rollout's view(B, nrs, T).transpose(0, 1)), then post_rollout
	// each (no gradients). Each micro-batch is later one rl_step and one λ update.
	var rollouts []*Rollout
	defer func() {
		for _, r := range rollouts {
			r.free()
		}
	}()
	seed := t.rolloutSeed()
	for lo := 0; lo < len(prompts); lo += cfg.TrainBatchSize {
		mb, first := t.share(prompts[lo:min(lo+cfg.TrainBatchSize, len(prompts))])
		var rep [][]int32
		for _, p := range mb {
			for k := 0; k < cfg.NumReturnSeqs; k++ {
				rep = append(rep, p)
			}
		}
		t0 := time.Now()
		// Row j of rep is row (lo+first)·nrs+j of the one-process run's rollout batch.
		gen, err := t.nets.Generate(rep, seed, uint64((lo+first)*cfg.NumReturnSeqs))
		if err != nil {
			return StepMetrics{}, perf, fmt.Errorf("generate: %w", err)
		}
		perf.GenSeconds += time.Since(t0).Seconds()
		for _, r := range gen.splitSamples(cfg.NumReturnSeqs) {
			t1 := time.Now()
			r.onDevice = cfg.RLMath == RLMathGraph
			if err := t.nets.Score(r); err != nil {
				return StepMetrics{}, perf, fmt.Errorf("score: %w", err)
			}
			perf.ScoreSeconds += time.Since(t1).Seconds()
			rollouts = append(rollouts, r)
			if err := r.check(cfg.UsesCost(), cfg.UsesCostCritic()); err != nil {
				return StepMetrics{}, perf, err
			}
			if cfg.UsesCost() {
				if err := t.lag.AddCosts(r.Cost); err != nil { // episode_costs.extend(cost)
					return StepMetrics{}, perf, err
				}
			}
			for _, n := range r.ResponseLengths() {
				perf.GenTokens += n
			}
		}
	}

	// 3–4. update_iters passes; each micro-batch is one rl_step (+ PTX) and one global step.
	t2 := time.Now()
	var acc stepAcc
	for it := 0; it < cfg.UpdateIters; it++ {
		for _, r := range rollouts {
			var ptx *PTXBatch
			if t.ptx != nil && cfg.PTXCoeff > 0 {
				ptx = t.sharePTX(t.ptx.Next(r.B * t.comm.Size()))
			}
			s, err := t.rlStep(r, ptx)
			if err != nil {
				return StepMetrics{}, perf, err
			}
			acc.add(s)
			t.st.GlobalStep++
			perf.TrainTokens += r.B * r.T
		}
	}
	perf.UpdateSeconds = time.Since(t2).Seconds()

	m := acc.mean()
	m.Step, m.GlobalStep = t.st.Step+1, t.st.GlobalStep
	jc, err := t.reduceStep(&m, &perf, rollouts)
	if err != nil {
		return m, perf, err
	}
	perf.GenTokensPerSec = float64(perf.GenTokens) / math.Max(perf.GenSeconds, 1e-9)
	perf.TrainTokensPerSec = float64(perf.TrainTokens) / math.Max(perf.UpdateSeconds, 1e-9)
	m.Lambda = t.lag.Lambda()
	m.EpisodeCost = jc
	m.JcMinusD = m.EpisodeCost - cfg.Threshold
	if err := checkpoint.CheckFinite(m.Step, map[string]float64{"reward": m.Reward, "cost": m.Cost, "lambda": m.Lambda,
		"kl": m.KL, "actor_loss": m.ActorLoss, "ptx_loss": m.PTXLoss, "reward_critic_loss": m.RewardCriticLoss,
		"cost_critic_loss": m.CostCriticLoss, "episode_cost": m.EpisodeCost, "clip_frac": m.ClipFrac}); err != nil {
		return m, perf, fmt.Errorf("%w (lower the learning rates or set --lambda-max)", err)
	}
	return m, perf, nil
}

// rlStep is PPOLagTrainer.rl_step (spec §1.8): λ update; KL shaping and GAE with the rollout's
// old values and log-probs; actor step; reward-critic step; cost-critic step.
func (t *Trainer) rlStep(r *Rollout, ptx *PTXBatch) (StepMetrics, error) {
	cfg := &t.cfg
	B, L := r.B, r.L()
	var m StepMetrics

	// 1. λ update (every rl_step, before anything else; a no-op for PPO and the fixed penalty).
	if err := t.updateLambda(); err != nil {
		return m, err
	}
	lam := t.lag.Lambda()

	// 2. KL-shaped rewards/costs and GAE (no gradients), with the rollout's old values and log-probs.
	// With --rl-math graph on nets that scored on the device (r.dev), the advantages and returns
	// stay there (r.dev.rl) and the updates read them: the host slices below stay nil.
	var respMask []float32
	var sh shaped
	var err error
	if cfg.RLMath == RLMathGraph {
		var dev *rlDev
		if sh, dev, err = t.opt.RLMath.shapeAndGAE(cfg, r); err == nil && dev != nil {
			r.dev.rl = dev
			defer func() { dev.free(); r.dev.rl = nil }()
		}
	} else {
		sh, err = shapeAndGAE(t.ws, cfg, r)
	}
	if err != nil {
		return m, err
	}
	if r.dev == nil || r.dev.rl == nil {
		respMask = r.ResponseMask()
	}

	// 3. Actor step: Â = (A^r − λ·A^c)/(1+λ) inside the graph for PPO-Lag (spec §1.5), A^r otherwise.
	lrA, lrC := t.actorLR(), t.criticLR()
	as, err := t.nets.UpdateActor(ActorBatch{LR: lrA, Rollout: r, RewardAdv: toF32(sh.rAdv), CostAdv: toF32(sh.cAdv), Lambda: lam,
		Mask: respMask, PTX: ptx, PTXCoeff: cfg.PTXCoeff})
	if err != nil {
		return m, fmt.Errorf("actor update: %w", err)
	}
	// 4. Reward critic step.
	m.RewardCriticLoss, err = t.nets.UpdateCritic(false, lrC, r, toF32(sh.rRet), respMask)
	if err != nil {
		return m, fmt.Errorf("reward critic update: %w", err)
	}
	// 5. Cost critic step.
	if cfg.UsesCostCritic() {
		m.CostCriticLoss, err = t.nets.UpdateCritic(true, lrC, r, toF32(sh.cRet), respMask)
		if err != nil {
			return m, fmt.Errorf("cost critic update: %w", err)
		}
	}

	// 6. Logged statistics (the reference's names: kl_divergence, reward_with_kl_penalty, ...).
	m.ActorLoss, m.PTXLoss, m.ClipFrac, m.ApproxKL = as.Loss, as.PTXLoss, as.ClipFrac, as.ApproxKL
	m.KL, m.RewardWithKLPenalty = sh.stats.KL, sh.stats.RewardWithKLPenalty
	if sh.means != nil { // computed with the advantages (RLMath)
		m.RewardAdvantage, m.RewardReturn, m.RewardValue = sh.means[0], sh.means[1], sh.means[2]
		if cfg.UsesCostCritic() {
			m.CostAdvantage, m.CostReturn, m.CostValue = sh.means[3], sh.means[4], sh.means[5]
		}
	} else {
		m.RewardAdvantage = maskedMean(B, L, sh.rAdv, respMask)
		m.RewardReturn = maskedMean(B, L, sh.rRet, respMask)
		m.RewardValue = maskedMean(B, L, to64(r.RewardValues), respMask)
	}
	if sh.means == nil && cfg.UsesCostCritic() {
		m.CostAdvantage = maskedMean(B, L, sh.cAdv, respMask)
		m.CostReturn = maskedMean(B, L, sh.cRet, respMask)
		m.CostValue = maskedMean(B, L, to64(r.CostValues), respMask)
	}
	m.ActorLR, m.CriticLR = lrA, lrC
	return m, nil
}

// actorLR and criticLR follow HF get_scheduler (spec §1.10, train/optim) over the run's rl steps.
func (t *Trainer) actorLR() float64 { return t.actorSched.LR(t.st.GlobalStep) }

func (t *Trainer) criticLR() float64 { return t.criticSched.LR(t.st.GlobalStep) }

// stepAcc averages StepMetrics over the rl_steps of one rollout batch.
type stepAcc struct {
	sum StepMetrics
	n   int
}

func (a *stepAcc) add(s StepMetrics) {
	a.n++
	p := &a.sum
	p.ActorLoss += s.ActorLoss
	p.PTXLoss += s.PTXLoss
	p.ClipFrac += s.ClipFrac
	p.ApproxKL += s.ApproxKL
	p.RewardCriticLoss += s.RewardCriticLoss
	p.CostCriticLoss += s.CostCriticLoss
	p.KL += s.KL
	p.RewardWithKLPenalty += s.RewardWithKLPenalty
	p.RewardAdvantage += s.RewardAdvantage
	p.RewardReturn += s.RewardReturn
	p.RewardValue += s.RewardValue
	p.CostAdvantage += s.CostAdvantage
	p.CostReturn += s.CostReturn
	p.CostValue += s.CostValue
	p.ActorLR, p.CriticLR = s.ActorLR, s.CriticLR // the last rl_step's
}

func (a *stepAcc) mean() StepMetrics {
	m := a.sum
	if a.n == 0 {
		return m
	}
	n := float64(a.n)
	for _, p := range []*float64{&m.ActorLoss, &m.PTXLoss, &m.ClipFrac, &m.ApproxKL, &m.RewardCriticLoss, &m.CostCriticLoss,
		&m.KL, &m.RewardWithKLPenalty, &m.RewardAdvantage, &m.RewardReturn, &m.RewardValue, &m.CostAdvantage,
		&m.CostReturn, &m.CostValue} {
		*p /= n
	}
	return m
}

func (t *Trainer) progress(bar *metrics.Progress, m StepMetrics, p PerfMetrics) {
	if bar == nil {
		return
	}
	status := fmt.Sprintf("reward %+.3f cost %+.3f harmful %.2f λ %.3f kl %.3f", m.Reward, m.Cost, m.HarmfulRate, m.Lambda, m.KL)
	bar.Report(t.st.Step, status, p.GenTokens+p.TrainTokens)
}

func to64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
