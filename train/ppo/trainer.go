package ppo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/train/optim"
)

// Options are the run-level settings of a Trainer (where to write, how often to checkpoint).
type Options struct {
	OutDir          string    // metrics.jsonl, perf.jsonl, checkpoints/, plots, final policy
	CheckpointEvery int       // rollout batches between checkpoints (0: only at the end)
	KeepCheckpoints int       // checkpoints kept (default 2)
	Resume          bool      // continue from OutDir/checkpoints/latest
	Progress        io.Writer // progress bar (nil: none)
	ProgressLines   bool      // one line per step instead of a redrawn bar (logs, CI)
	// StopAfter stops (without error, after checkpointing) once this many rollout batches are
	// done in this process; 0 runs to the end. Used by tests to simulate interruptions.
	StopAfter int
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
}

// State is the trainer's part of a checkpoint (weights and optimizer state are Nets.SaveState's).
type State struct {
	Step         int          `json:"step"`        // rollout batches done
	GlobalStep   int          `json:"global_step"` // rl steps done (λ delay and schedules count these)
	Lambda       LambdaState  `json:"lambda"`
	Data         DataPosition `json:"data"`
	PTXData      DataPosition `json:"ptx_data"`
	RNG          []byte       `json:"rng"`           // PCG state for generation seeds
	MetricsBytes int64        `json:"metrics_bytes"` // length of metrics.jsonl at this step
	PerfBytes    int64        `json:"perf_bytes"`
	Config       Config       `json:"config"`
}

// Trainer runs the PPO-Lagrangian loop (or PPO / fixed penalty / PID) of spec §1.8.
type Trainer struct {
	cfg     Config
	opt     Options
	nets    Nets
	prompts *PromptSet
	ptx     *PTXSet
	lag     *lagrange
	rng     *rand.PCG
	ws      *kernels.Workspace
	st      State
	total   int // rollout batches in the whole run

	actorSched, criticSched optim.Schedule

	metricsF, perfF *os.File
	history         []StepMetrics
	perf            []PerfMetrics
}

// NewTrainer prepares a run; with opt.Resume it restores the latest checkpoint of opt.OutDir.
// ptx may be nil (no PTX mixing).
func NewTrainer(cfg Config, opt Options, nets Nets, prompts *PromptSet, ptx *PTXSet) (*Trainer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.PTXCoeff > 0 && ptx == nil {
		return nil, fmt.Errorf("ppo: ptx_coeff = %g but no PTX data", cfg.PTXCoeff)
	}
	if opt.KeepCheckpoints <= 0 {
		opt.KeepCheckpoints = 2
	}
	if err := os.MkdirAll(filepath.Join(opt.OutDir, "checkpoints"), 0o755); err != nil {
		return nil, fmt.Errorf("ppo: %w", err)
	}
	t := &Trainer{cfg: cfg, opt: opt, nets: nets, prompts: prompts, ptx: ptx, rng: rand.NewPCG(cfg.Seed, 0x5afe41f),
		ws: kernels.NewWorkspace(1)}
	var err error
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
	t.st.Config = cfg
	if opt.Resume {
		if err := t.restore(); err != nil {
			return nil, err
		}
	} else {
		for _, f := range []string{"metrics.jsonl", "perf.jsonl"} {
			if err := os.Remove(filepath.Join(opt.OutDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("ppo: %w", err)
			}
		}
	}
	if t.metricsF, err = openAppend(filepath.Join(opt.OutDir, "metrics.jsonl"), t.st.MetricsBytes); err != nil {
		return nil, err
	}
	if t.perfF, err = openAppend(filepath.Join(opt.OutDir, "perf.jsonl"), t.st.PerfBytes); err != nil {
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
	err1 := t.metricsF.Close()
	err2 := t.perfF.Close()
	return errors.Join(err1, err2)
}

// totalRLSteps is the reference's total_training_steps (spec §1.10) for the LR schedules.
func (t *Trainer) totalRLSteps() int {
	return t.total * t.cfg.UpdateIters * ceilDiv(t.cfg.PromptBatchSize, t.cfg.TrainBatchSize)
}

// Run trains until the last rollout batch (or ctx is cancelled, which checkpoints and returns ctx.Err()).
func (t *Trainer) Run(ctx context.Context) error {
	started := time.Now()
	done := 0
	for t.st.Step < t.total {
		if err := ctx.Err(); err != nil {
			if cerr := t.checkpoint(); cerr != nil {
				return errors.Join(err, cerr)
			}
			return err
		}
		m, p, err := t.trainStep()
		if err != nil {
			return fmt.Errorf("ppo step %d: %w (the last checkpoint in %s is intact)", t.st.Step+1, err,
				filepath.Join(t.opt.OutDir, "checkpoints"))
		}
		t.st.Step++
		if err := t.log(m, p); err != nil {
			return err
		}
		t.progress(m, p, started)
		done++
		last := t.st.Step == t.total
		if last || t.opt.CheckpointEvery > 0 && t.st.Step%t.opt.CheckpointEvery == 0 ||
			t.opt.StopAfter > 0 && done >= t.opt.StopAfter {
			if err := t.checkpoint(); err != nil {
				return err
			}
		}
		if t.opt.StopAfter > 0 && done >= t.opt.StopAfter && !last {
			return nil
		}
	}
	if t.opt.Progress != nil && !t.opt.ProgressLines {
		fmt.Fprintln(t.opt.Progress)
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

	// 1–2. Rollout, micro-batch by micro-batch: generate, then post_rollout (no gradients).
	var rollouts []*Rollout
	for lo := 0; lo < len(prompts); lo += cfg.TrainBatchSize {
		mb := prompts[lo:min(lo+cfg.TrainBatchSize, len(prompts))]
		var rep [][]int32
		for _, p := range mb {
			for k := 0; k < cfg.NumReturnSeqs; k++ {
				rep = append(rep, p)
			}
		}
		t0 := time.Now()
		r, err := t.nets.Generate(rep, t.rng.Uint64())
		if err != nil {
			return StepMetrics{}, perf, fmt.Errorf("generate: %w", err)
		}
		perf.GenSeconds += time.Since(t0).Seconds()
		t1 := time.Now()
		if err := t.nets.Score(r); err != nil {
			return StepMetrics{}, perf, fmt.Errorf("score: %w", err)
		}
		perf.ScoreSeconds += time.Since(t1).Seconds()
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
		rollouts = append(rollouts, r)
	}

	// 3–4. update_iters passes; each micro-batch is one rl_step (+ PTX) and one global step.
	t2 := time.Now()
	var acc stepAcc
	for it := 0; it < cfg.UpdateIters; it++ {
		for _, r := range rollouts {
			var ptx *PTXBatch
			if cfg.PTXCoeff > 0 {
				ptx = t.ptx.Next(r.B)
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
	perf.GenTokensPerSec = float64(perf.GenTokens) / math.Max(perf.GenSeconds, 1e-9)
	perf.TrainTokensPerSec = float64(perf.TrainTokens) / math.Max(perf.UpdateSeconds, 1e-9)

	m := acc.mean()
	m.Step, m.GlobalStep = t.st.Step+1, t.st.GlobalStep
	var rewards, costs []float32
	var lens []int
	for _, r := range rollouts {
		rewards = append(rewards, r.Reward...)
		costs = append(costs, r.Cost...)
		lens = append(lens, r.ResponseLengths()...)
	}
	m.Reward = mean32(rewards)
	if cfg.UsesCost() {
		m.Cost = mean32(costs)
		harmful := 0
		for _, c := range costs {
			if c > 0 {
				harmful++
			}
		}
		m.HarmfulRate = float64(harmful) / float64(len(costs))
	}
	for _, n := range lens {
		m.GenLenMean += float64(n) / float64(len(lens))
		m.GenLenMax = max(m.GenLenMax, n)
	}
	m.Lambda = t.lag.Lambda()
	m.EpisodeCost = t.lag.Jc()
	m.JcMinusD = m.EpisodeCost - cfg.Threshold
	if err := checkFinite(&m); err != nil {
		return m, perf, err
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
	t.lag.Update(t.st.GlobalStep)
	lam := t.lag.Lambda()

	// 2. KL-shaped rewards/costs and GAE (no gradients), with the rollout's old values and log-probs.
	respMask := r.ResponseMask()
	sh, err := shapeAndGAE(t.ws, cfg, r)
	if err != nil {
		return m, err
	}

	// 3. Actor step: Â = (A^r − λ·A^c)/(1+λ) inside the graph for PPO-Lag (spec §1.5), A^r otherwise.
	lrA, lrC := t.actorLR(), t.criticLR()
	var cAdv []float32
	if cfg.UsesCostCritic() {
		cAdv = toF32(sh.cAdv)
	}
	as, err := t.nets.UpdateActor(lrA, r, toF32(sh.rAdv), cAdv, lam, respMask, ptx, cfg.PTXCoeff)
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
	m.RewardAdvantage = maskedMean(B, L, sh.rAdv, respMask)
	m.RewardReturn = maskedMean(B, L, sh.rRet, respMask)
	m.RewardValue = maskedMean(B, L, to64(r.RewardValues), respMask)
	if cfg.UsesCostCritic() {
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

// checkFinite is the NaN guard: a non-finite metric stops the run before it is checkpointed.
func checkFinite(m *StepMetrics) error {
	vals := map[string]float64{"reward": m.Reward, "cost": m.Cost, "lambda": m.Lambda, "kl": m.KL,
		"actor_loss": m.ActorLoss, "ptx_loss": m.PTXLoss, "reward_critic_loss": m.RewardCriticLoss,
		"cost_critic_loss": m.CostCriticLoss, "episode_cost": m.EpisodeCost, "clip_frac": m.ClipFrac}
	for k, v := range vals {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("non-finite %s = %g: stopping (lower the learning rates or set --lambda-max)", k, v)
		}
	}
	return nil
}

func (t *Trainer) log(m StepMetrics, p PerfMetrics) error {
	t.history = append(t.history, m)
	t.perf = append(t.perf, p)
	for _, w := range []struct {
		f *os.File
		v any
	}{{t.metricsF, m}, {t.perfF, p}} {
		b, err := json.Marshal(w.v)
		if err != nil {
			return fmt.Errorf("ppo: metrics: %w", err)
		}
		if _, err := w.f.Write(append(b, '\n')); err != nil {
			return fmt.Errorf("ppo: metrics: %w", err)
		}
	}
	return nil
}

func (t *Trainer) progress(m StepMetrics, p PerfMetrics, started time.Time) {
	if t.opt.Progress == nil {
		return
	}
	const width = 24
	fill := width * t.st.Step / max(1, t.total)
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = '.'
		if i < fill {
			bar[i] = '#'
		}
	}
	el := time.Since(started).Seconds()
	lead, tail := "\r", ""
	if t.opt.ProgressLines {
		lead, tail = "", "\n"
	}
	fmt.Fprintf(t.opt.Progress, lead+"%-7s [%s] %3d/%d reward %+.3f cost %+.3f harmful %.2f λ %.3f kl %.3f gen %.0f tok/s train %.0f tok/s %4.0fs"+tail,
		t.cfg.Algorithm, bar, t.st.Step, t.total, m.Reward, m.Cost, m.HarmfulRate, m.Lambda, m.KL, p.GenTokensPerSec, p.TrainTokensPerSec, el)
}

// checkpoint writes OutDir/checkpoints/step-N (weights + optimizer state, then state.json) into a
// temporary directory renamed into place, then points "latest" at it; older ones beyond
// KeepCheckpoints are removed. A crash at any point leaves the previous checkpoint usable.
func (t *Trainer) checkpoint() error {
	root := filepath.Join(t.opt.OutDir, "checkpoints")
	name := fmt.Sprintf("step-%06d", t.st.Step)
	dir := filepath.Join(root, name)
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	for _, f := range []*os.File{t.metricsF, t.perfF} {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("ppo checkpoint: %w", err)
		}
	}
	var err error
	if t.st.MetricsBytes, err = t.metricsF.Seek(0, io.SeekCurrent); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	if t.st.PerfBytes, err = t.perfF.Seek(0, io.SeekCurrent); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	t.st.Lambda = t.lag.State()
	t.st.Data = t.prompts.Pos
	if t.ptx != nil {
		t.st.PTXData = t.ptx.Pos
	}
	if t.st.RNG, err = t.rng.MarshalBinary(); err != nil {
		return fmt.Errorf("ppo checkpoint: rng: %w", err)
	}
	if err := t.nets.SaveState(filepath.Join(tmp, "variables.bin")); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	b, err := json.MarshalIndent(&t.st, "", "  ")
	if err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	if err := writeFileSync(filepath.Join(tmp, "state.json"), b); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	if err := writeFileSync(filepath.Join(root, "latest.tmp"), []byte(name+"\n")); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	if err := os.Rename(filepath.Join(root, "latest.tmp"), filepath.Join(root, "latest")); err != nil {
		return fmt.Errorf("ppo checkpoint: %w", err)
	}
	if d, err := os.Open(root); err == nil {
		_ = d.Sync()
		d.Close()
	}
	// Keep the newest KeepCheckpoints.
	for s := t.st.Step - 1; s >= 0; s-- {
		old := filepath.Join(root, fmt.Sprintf("step-%06d", s))
		if _, err := os.Stat(old); err != nil {
			continue
		}
		if t.keepCount(root, s) {
			continue
		}
		_ = os.RemoveAll(old)
	}
	return nil
}

// keepCount reports whether checkpoint s is among the newest KeepCheckpoints.
func (t *Trainer) keepCount(root string, s int) bool {
	newer := 0
	for x := s + 1; x <= t.st.Step; x++ {
		if _, err := os.Stat(filepath.Join(root, fmt.Sprintf("step-%06d", x))); err == nil {
			newer++
		}
	}
	return newer < t.opt.KeepCheckpoints
}

// LatestCheckpoint returns the directory "latest" points to in outDir/checkpoints.
func LatestCheckpoint(outDir string) (string, error) {
	root := filepath.Join(outDir, "checkpoints")
	b, err := os.ReadFile(filepath.Join(root, "latest"))
	if err != nil {
		return "", fmt.Errorf("ppo resume: no checkpoint in %s: %w", root, err)
	}
	name := string(b)
	for len(name) > 0 && (name[len(name)-1] == '\n' || name[len(name)-1] == '\r') {
		name = name[:len(name)-1]
	}
	return filepath.Join(root, name), nil
}

func (t *Trainer) restore() error {
	dir, err := LatestCheckpoint(t.opt.OutDir)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return fmt.Errorf("ppo resume: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("ppo resume: %s: %w", filepath.Join(dir, "state.json"), err)
	}
	if err := t.nets.LoadState(filepath.Join(dir, "variables.bin")); err != nil {
		return fmt.Errorf("ppo resume: %w", err)
	}
	if err := t.rng.UnmarshalBinary(st.RNG); err != nil {
		return fmt.Errorf("ppo resume: rng: %w", err)
	}
	if err := t.lag.SetState(st.Lambda); err != nil {
		return fmt.Errorf("ppo resume: %w", err)
	}
	t.prompts.Seek(st.Data)
	if t.ptx != nil {
		t.ptx.Seek(st.PTXData)
	}
	st.Config = t.cfg
	t.st = st
	return nil
}

// openAppend opens path for appending after truncating it to size (the bytes a checkpoint saw).
func openAppend(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("ppo: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("ppo: %s: %w", path, err)
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("ppo: %s: %w", path, err)
	}
	return f, nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	if _, err := w.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func mean32(x []float32) float64 {
	if len(x) == 0 {
		return 0
	}
	s := 0.0
	for _, v := range x {
		s += float64(v)
	}
	return s / float64(len(x))
}

func to64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
