package ppo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// BenchOptions configures Bench: PPO-Lag steps on models of one shape (a preset with random
// weights, or real checkpoints), timed phase by phase.
type BenchOptions struct {
	Backend     backends.Backend
	BackendName string
	// Cfg is the shape of the actor, reward and cost models (random weights) unless ActorDir etc.
	// name HF checkpoints.
	Cfg                          *model.Config
	ActorDir, RewardDir, CostDir string
	// Specs, when set, are the actor, reward and cost models as given (host weights).
	Specs                    *[3]ModelSpec
	DType                    dtypes.DType
	LoRA                     model.LoRAConfig
	Batch, PromptLen, GenLen int
	Steps, MicroBatch        int
	Sampling                 Sampling
	// PeakTFLOPS is the device's dense bf16 (or f32) peak, for MFU (0: not reported).
	PeakTFLOPS float64
	// DeviceBytes is the memory the run may use on the device (0: no memory plan check).
	DeviceBytes int64
	// Log receives progress lines (nil: none).
	Log func(format string, args ...any)
	// CheckpointDir, when set (absent or empty), is the run's output directory: after the timed
	// steps the trainer writes its checkpoint there (train/checkpoint, the real path), then a
	// second trainer resumes from it in the same nets for one more step; size, write time, the
	// host's peak RSS during the write and the restore time are reported.
	CheckpointDir string
	// Measured, when set with CheckpointDir, receives the result as soon as the timed steps and
	// the checkpoint are measured, before the resumed step (its restore and resumed-step times are
	// zero then): a caller may save it in case the resume does not finish in its time.
	Measured func(*BenchResult)
	// Updates selects fused or layerwise update programs (default: layerwise on XLA).
	Updates UpdatePrograms
	// RLMath is --rl-math: host or graph (empty: DefaultRLMath of BackendName).
	RLMath string
	// Comm, with several ranks, benchmarks a data-parallel step: Batch is the global batch, each
	// rank generates, scores and trains on Batch/world rows, gradients averaged across ranks.
	Comm dist.Communicator
	// ZeroStage 1 shards the AdamW moments across the ranks of Comm (--zero-stage, ZeRO-1).
	ZeroStage int
	// Reducer averages the gradients (nil: the host path over Comm; see GraphNetsConfig.Reducer).
	Reducer trainer.GradientReducer
}

// Sampling are the generation settings (HF generate's).
type Sampling struct {
	Temperature, TopP, RepetitionPenalty float64
	TopK                                 int
}

// BenchResult is what Bench measured (saferlhf bench --json writes it).
type BenchResult struct {
	Model   string `json:"model"`
	Params  int64  `json:"params"`
	Backend string `json:"backend"`
	// Engine is what ran the step: "native" (native/llama models kept for the run) or "gomlx".
	Engine       string  `json:"engine"`
	DType        string  `json:"dtype"`
	LoRARank     int     `json:"lora_rank"`
	Batch        int     `json:"batch"`
	PromptLen    int     `json:"prompt_len"`
	GenLen       int     `json:"gen_len"`
	MicroBatch   int     `json:"micro_batch"`
	TopK         int     `json:"top_k"`
	Steps        int     `json:"steps"`
	LoadSeconds  float64 `json:"load_s"`
	WarmupSecs   float64 `json:"warmup_step_s"`
	CompileSecs  float64 `json:"compile_s_est"`
	GenSeconds   float64 `json:"gen_s"`
	ScoreSeconds float64 `json:"score_s"`
	ActorSeconds float64 `json:"actor_update_s"`
	CriticSecs   float64 `json:"critic_updates_s"`
	RLMathSecs   float64 `json:"rl_math_s"`
	// RLMath is where KL shaping and GAE ran (host or graph); with graph, RLMathH2DBytes and
	// RLMathD2HBytes are its host↔device bytes per step (included in H2DBytes and D2HBytes).
	RLMath         string  `json:"rl_math"`
	RLMathH2DBytes int64   `json:"rl_math_h2d_bytes_per_step"`
	RLMathD2HBytes int64   `json:"rl_math_d2h_bytes_per_step"`
	StepSeconds    float64 `json:"step_s"`
	GenTokPerS     float64 `json:"gen_tokens_per_s"`
	ScoreTokPerS   float64 `json:"score_tokens_per_s"`
	TrainTokPerS   float64 `json:"train_tokens_per_s"`
	// CopyGBps is the measured device copy bandwidth (bytes read + written per second).
	CopyGBps float64 `json:"copy_GBps"`
	// GenHBMFraction is the generation time at the HBM bound (weights + KV cache read once per
	// decoding step at CopyGBps) divided by the measured generation time.
	GenHBMFraction float64 `json:"gen_hbm_fraction"`
	UpdateTFLOPs   float64 `json:"update_tflop_per_step"`
	UpdateMFU      float64 `json:"update_mfu"`
	HostRSSMiB     float64 `json:"host_peak_rss_mib"`
	// PlannedPeakGiB is the memory plan's estimated device peak.
	PlannedPeakGiB float64 `json:"planned_peak_gib"`
	// H2DBytes and D2HBytes are the host↔device bytes of one step on this rank (its Batch/world
	// rows; model weights excluded: they are loaded once): generation's (GenH2DBytes,
	// GenD2HBytes) plus HostDeviceBytes' split by direction, all counted.
	H2DBytes int64 `json:"h2d_bytes_per_step"`
	D2HBytes int64 `json:"d2h_bytes_per_step"`
	// GenH2DBytes and GenD2HBytes are generation's, counted by model.Generator where its inputs
	// go up (prompt ids, fed tokens, positions, key masks; uniforms with sampling in graph) and
	// its outputs come down (the B×V logits per token with host sampling, the B sampled ids with
	// sampling in graph); 0 on the native engine, which has no device.
	GenH2DBytes int64 `json:"gen_h2d_bytes_per_step"`
	GenD2HBytes int64 `json:"gen_d2h_bytes_per_step"`
	// HostDeviceBytes are the bytes of one step's scoring, RL math and updates, both ways, counted
	// where the code turns host data into program inputs and reads outputs back (Transfers);
	// HostDeviceIDBytes are the token ids among them (sequences going up).
	HostDeviceBytes   int64 `json:"host_device_bytes_per_step"`
	HostDeviceIDBytes int64 `json:"host_device_id_bytes_per_step"`
	// Programs are the layerwise programs (model.Layerwise: scoring, and the updates when they
	// run layer by layer): kind, argument shapes, node count, compile seconds and calls.
	Programs []model.ProgramStat `json:"programs"`
	// ProgramsCompileSecs is the compile time of all those programs.
	ProgramsCompileSecs float64 `json:"programs_compile_s"`
	// Checkpoint proof (BenchOptions.CheckpointDir): the checkpoint directory's bytes, the
	// seconds from the nets' Checkpoint call to the written directory, the host's peak RSS
	// during that write (VmHWM reset before it), the restore seconds and the resumed step's.
	CheckpointBytes    int64   `json:"checkpoint_bytes,omitempty"`
	CheckpointSecs     float64 `json:"checkpoint_write_s,omitempty"`
	CheckpointRSSMiB   float64 `json:"checkpoint_peak_rss_mib,omitempty"`
	RestoreSecs        float64 `json:"restore_s,omitempty"`
	ResumedStepSeconds float64 `json:"resumed_step_s,omitempty"`
	// With several ranks (WorldSize > 1) the phase times above are the slowest rank's and the
	// tokens/s the aggregate of all ranks (global batch over the slowest rank's time); Ranks
	// holds each rank's own rates and CollectiveSecs rank 0's time per step in gradient
	// all-reduces (waiting for the slowest rank included).
	WorldSize int `json:"world_size"`
	// OptimStateBytes are the AdamW moment bytes rank 0 holds after the steps (actor and
	// critics; about 1/world of them with ZeroStage 1).
	OptimStateBytes int64       `json:"optimizer_state_bytes"`
	CollectiveSecs  float64     `json:"collective_s_per_step"`
	Ranks           []BenchRank `json:"ranks,omitempty"`
	// Collectives is how gradients were averaged: nccl, tcp, or empty (one rank, none).
	Collectives string `json:"collectives,omitempty"`
}

// BenchRank is one rank's measurement in a data-parallel benchmark (its Batch/world rows).
type BenchRank struct {
	Rank           int     `json:"rank"`
	GenSeconds     float64 `json:"gen_s"`
	UpdateSeconds  float64 `json:"update_s"` // actor and critic updates, collectives included
	GenTokPerS     float64 `json:"gen_tokens_per_s"`
	TrainTokPerS   float64 `json:"train_tokens_per_s"`
	CollectiveSecs float64 `json:"collective_s_per_step"`
	// OptimStateBytes are the AdamW moment bytes this rank holds.
	OptimStateBytes int64 `json:"optimizer_state_bytes"`
}

// timedNets wraps Nets, timing each call, and skips checkpoints (a benchmark saves nothing).
type timedNets struct {
	*GraphNets
	actor, critics, gen time.Duration
	actorT, criticT     []time.Duration // per step
	genT                []time.Duration
	collT               []float64 // cumulative collective seconds at the end of each step
	started             bool
	logf                func(string, ...any)
	// With checkpoint, Checkpoint passes through (timed from ckptStart); restore is Restore's time.
	checkpoint bool
	ckptStart  time.Time
	restore    time.Duration
	peakRSS    float64 // VmHWM (MiB) before the checkpoint reset it
}

// flush ends a step's timings (each step starts with one Generate: prompt batch = train batch).
func (t *timedNets) flush() {
	t.actorT, t.criticT, t.genT = append(t.actorT, t.actor), append(t.criticT, t.critics), append(t.genT, t.gen)
	t.collT = append(t.collT, t.CollectiveSeconds())
	t.actor, t.critics, t.gen = 0, 0, 0
	t.logf("bench: step %d done", len(t.actorT))
}

func (t *timedNets) Generate(prompts [][]int32, seed, firstRow uint64) (*Rollout, error) {
	if t.started {
		t.flush()
	}
	t.started = true
	t0 := time.Now()
	r, err := t.GraphNets.Generate(prompts, seed, firstRow)
	t.gen += time.Since(t0)
	t.logf("bench:   generate %.2fs", time.Since(t0).Seconds())
	return r, err
}

func (t *timedNets) Score(r *Rollout) error {
	t0 := time.Now()
	err := t.GraphNets.Score(r)
	t.logf("bench:   score %.2fs", time.Since(t0).Seconds())
	return err
}

func (t *timedNets) UpdateActor(b ActorBatch) (ActorStats, error) {
	t0 := time.Now()
	s, err := t.GraphNets.UpdateActor(b)
	t.actor += time.Since(t0)
	t.logf("bench:   actor update %.2fs", time.Since(t0).Seconds())
	return s, err
}

func (t *timedNets) UpdateCritic(cost bool, lr float64, r *Rollout, returns, mask []float32) (float64, error) {
	t0 := time.Now()
	l, err := t.GraphNets.UpdateCritic(cost, lr, r, returns, mask)
	t.critics += time.Since(t0)
	t.logf("bench:   critic update %.2fs", time.Since(t0).Seconds())
	return l, err
}

// errNoCheckpoint stops the trainer at its final checkpoint: a benchmark writes none (the step's
// metrics are logged before).
var errNoCheckpoint = errors.New("bench: no checkpoint")

// ShardedState is GraphNets' unless the benchmark writes no checkpoint: then the ranks do not
// serve their moments to rank 0, which stops at its Checkpoint call.
func (t *timedNets) ShardedState() ([]checkpoint.Owned, *mlctx.Context) {
	if !t.checkpoint {
		return nil, nil
	}
	return t.GraphNets.ShardedState()
}

func (t *timedNets) Checkpoint() (*NetsCheckpoint, error) {
	if !t.checkpoint {
		return nil, errNoCheckpoint
	}
	t.peakRSS = max(t.peakRSS, procStatusMiB("VmHWM"))
	resetPeakRSS()
	t.ckptStart = time.Now()
	t.logf("bench: checkpoint")
	return t.GraphNets.Checkpoint()
}

func (t *timedNets) Restore(l *checkpoint.Loaded) error {
	t0 := time.Now()
	err := t.GraphNets.Restore(l)
	t.restore = time.Since(t0)
	t.logf("bench: restored in %.2fs", t.restore.Seconds())
	return err
}
func (t *timedNets) SavePolicy(string) error { return nil }

// Bench builds the six PPO-Lag networks (actor and reference over one frozen base, reward and
// cost models each shared with its critic under LoRA), runs 1 + Steps steps (the first compiles)
// and reports the steady-state phase times and derived rates.
func Bench(o BenchOptions) (*BenchResult, error) {
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if o.Batch <= 0 || o.PromptLen < 2 || o.GenLen <= 0 || o.Steps <= 0 {
		return nil, fmt.Errorf("bench: batch, prompt length ≥ 2, generated length and steps must be positive")
	}
	acfg := o.Cfg
	spec := func(dir string, seed uint64, score bool) (ModelSpec, error) {
		if dir != "" {
			c, err := model.LoadHFConfig(dir)
			if err != nil {
				return ModelSpec{}, err
			}
			return ModelSpec{Cfg: c, Dir: dir}, nil
		}
		c := *acfg
		if score {
			c.ScoreDim = 1
		}
		return ModelSpec{Cfg: &c, RandomSeed: seed}, nil
	}
	var actor, rm, cm ModelSpec
	var err error
	if o.Specs != nil {
		actor, rm, cm = o.Specs[0], o.Specs[1], o.Specs[2]
	} else {
		if actor, err = spec(o.ActorDir, 1, false); err != nil {
			return nil, err
		}
		if rm, err = spec(o.RewardDir, 2, true); err != nil {
			return nil, err
		}
		if cm, err = spec(o.CostDir, 3, true); err != nil {
			return nil, err
		}
	}
	acfg = actor.Cfg
	layerwise := o.Updates == UpdatesLayerwise || o.Updates == UpdatesAuto && !model.PureGo(o.Backend) && !backend.IsNative(o.Backend)
	mp := MemoryPlanConfig{Actor: acfg, Reward: rm.Cfg, Cost: cm.Cfg, DType: o.DType, LoRA: o.LoRA, Batch: o.Batch, Layerwise: layerwise,
		MicroBatch: o.MicroBatch, PromptLen: o.PromptLen, GenLen: o.GenLen}
	plan := PlanMemory(mp)
	logf("bench: %s", plan)
	if err := plan.Check(o.DeviceBytes, mp); err != nil {
		return nil, err
	}
	comm := o.Comm
	if comm == nil {
		comm = dist.Self{}
	}
	world := comm.Size()
	if world > 1 && o.CheckpointDir != "" {
		return nil, fmt.Errorf("bench: the checkpoint proof (--out) runs in one process only, not as %d ranks", world)
	}
	if o.Batch%world != 0 || (o.MicroBatch > 0 && (o.Batch/world)%o.MicroBatch != 0) {
		return nil, fmt.Errorf("bench: --batch %d is global: it must divide by the world size %d (and each rank's share by --micro-batch-size %d)", o.Batch, world, o.MicroBatch)
	}
	cfg := DefaultConfig(PPOLag)
	cfg.PromptBatchSize, cfg.TrainBatchSize, cfg.MaxSteps = o.Batch, o.Batch, 1+o.Steps
	cfg.MaxNewTokens, cfg.MaxPromptTokens = o.GenLen, o.PromptLen
	cfg.RLMath = o.RLMath
	if cfg.RLMath == "" {
		cfg.RLMath = DefaultRLMath(o.BackendName)
	}
	var rlm *RLMath
	if cfg.RLMath == RLMathGraph {
		if backend.IsNative(o.Backend) {
			return nil, fmt.Errorf("bench: --rl-math graph needs a GoMLX backend (go or xla:*), not native")
		}
		rlm = NewRLMath(o.Backend)
		defer rlm.Close()
	}
	t0 := time.Now()
	nets, err := NewGraphNets(GraphNetsConfig{Backend: o.Backend, Actor: actor, Reward: rm, Cost: cm, WithCostCritic: true,
		Pad: 0, EOS: -1, MaxNewTokens: o.GenLen, MaxPromptTokens: o.PromptLen, Temperature: o.Sampling.Temperature,
		TopP: o.Sampling.TopP, TopK: o.Sampling.TopK, RepPenalty: o.Sampling.RepetitionPenalty,
		ActorWeightDecay: cfg.ActorWeightDecay, GradClip: 1, LoRA: o.LoRA, DType: o.DType,
		MicroBatchSize: o.MicroBatch, TrainBatchSize: o.Batch / world, Updates: o.Updates, Comm: comm, ZeroStage: o.ZeroStage, Reducer: o.Reducer}, cfg.ClipRangeRatio, cfg.ClipRangeValue)
	if err != nil {
		return nil, err
	}
	load := time.Since(t0).Seconds()
	logf("bench: models loaded in %.1fs", load)
	rng := rand.New(rand.NewPCG(7, 7))
	var prompts [][]int32
	for i := 0; i < o.Batch; i++ {
		p := []int32{acfg.BOS}
		for len(p) < o.PromptLen {
			p = append(p, int32(3+rng.IntN(acfg.VocabSize-3)))
		}
		prompts = append(prompts, p)
	}
	set, err := NewPromptSet(prompts, 1)
	if err != nil {
		return nil, err
	}
	out := o.CheckpointDir
	if out == "" {
		if out, err = os.MkdirTemp("", "saferlhf-bench-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(out)
	} else if ents, err := os.ReadDir(out); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("bench: checkpoint directory %s is not empty", out)
	}
	tn := &timedNets{GraphNets: nets, logf: logf, checkpoint: o.CheckpointDir != ""}
	opt := Options{OutDir: out, Comm: comm, RLMath: rlm}
	if tn.checkpoint {
		// Stop (with the checkpoint) before the last step, which the resumed trainer runs.
		cfg.MaxSteps = 2 + o.Steps
		opt.StopAfter = 1 + o.Steps
	}
	tr, err := NewTrainer(cfg, opt, tn, set, nil)
	if err != nil {
		return nil, err
	}
	if err := tr.Run(context.Background()); err != nil && !errors.Is(err, errNoCheckpoint) {
		return nil, err
	}
	var ckptSecs, ckptRSS float64
	if tn.checkpoint {
		ckptSecs, ckptRSS = time.Since(tn.ckptStart).Seconds(), procStatusMiB("VmHWM")
	}
	tr.Close()
	tn.flush()
	actorT, criticT := tn.actorT, tn.criticT
	perf := tr.PerfHistory()
	if len(perf) != 1+o.Steps || len(actorT) < len(perf) {
		return nil, fmt.Errorf("bench: %d steps timed, want %d", len(perf), 1+o.Steps)
	}
	res := &BenchResult{Model: modelName(o), Params: int64(acfg.NumParams()), Backend: o.BackendName,
		DType: model.DTypeName(o.DType), LoRARank: o.LoRA.Rank, Batch: o.Batch, PromptLen: o.PromptLen, GenLen: o.GenLen,
		MicroBatch: o.MicroBatch, TopK: o.Sampling.TopK, Steps: o.Steps, LoadSeconds: load}
	res.Engine = "gomlx"
	if nets.nat != nil {
		res.Engine = "native"
	}
	w := perf[0]
	res.WarmupSecs = w.GenSeconds + w.ScoreSeconds + w.UpdateSeconds
	n := float64(o.Steps)
	for i, p := range perf[1:] {
		res.GenSeconds += p.GenSeconds / n
		res.ScoreSeconds += p.ScoreSeconds / n
		a, c := actorT[i+1].Seconds(), criticT[i+1].Seconds()
		res.ActorSeconds += a / n
		res.CriticSecs += c / n
		res.RLMathSecs += (p.UpdateSeconds - a - c) / n
	}
	res.WorldSize = world
	res.OptimStateBytes = nets.OptimizerStateBytes()
	switch {
	case o.Reducer != nil:
		res.Collectives = o.Reducer.Name()
	case world > 1:
		res.Collectives = "tcp"
	}
	if world > 1 {
		if err := res.addRanks(comm, tn, o); err != nil {
			return nil, err
		}
	}
	res.StepSeconds = res.GenSeconds + res.ScoreSeconds + res.ActorSeconds + res.CriticSecs + res.RLMathSecs
	res.CompileSecs = math.Max(0, res.WarmupSecs-res.StepSeconds)
	T := o.PromptLen + o.GenLen
	res.GenTokPerS = float64(o.Batch*o.GenLen) / res.GenSeconds
	res.ScoreTokPerS = float64(6*o.Batch*T) / res.ScoreSeconds
	res.TrainTokPerS = float64(3*o.Batch*T) / (res.ActorSeconds + res.CriticSecs)
	if res.CopyGBps, err = copyBandwidth(o.Backend); err != nil {
		logf("bench: copy bandwidth: %v", err)
	}
	wbytes := 4.0
	if o.DType == dtypes.BFloat16 {
		wbytes = 2
	}
	if res.CopyGBps > 0 {
		// Per decoding step: every weight of the actor once, and the KV cache of the average
		// context (prompt + half the response) once.
		kv := 2 * float64(acfg.NumLayers*o.Batch*acfg.NumKVHeads*acfg.Dh()) * (float64(o.PromptLen) + float64(o.GenLen)/2) * wbytes
		bound := float64(o.GenLen) * (float64(acfg.NumParams())*wbytes + kv) / (res.CopyGBps * 1e9)
		res.GenHBMFraction = bound / res.GenSeconds
	}
	res.UpdateTFLOPs = updateFLOPs(acfg, o.LoRA.Rank > 0, o.Batch, T) / 1e12
	if o.PeakTFLOPS > 0 {
		res.UpdateMFU = res.UpdateTFLOPs / (res.ActorSeconds + res.CriticSecs) / o.PeakTFLOPS
	}
	res.HostRSSMiB = max(tn.peakRSS, procStatusMiB("VmHWM"))
	res.PlannedPeakGiB = float64(plan.Peak) / (1 << 30)
	res.RLMath = cfg.RLMath
	// Every step moves the same bytes; the checkpoint proof's extra step runs after this.
	steps := int64(len(perf))
	res.GenH2DBytes = (nets.genXfer.Up.Load() + nets.genXfer.IDsUp.Load()) / steps // this rank's rows
	res.GenD2HBytes = nets.genXfer.Down.Load() / steps
	res.H2DBytes, res.D2HBytes = res.GenH2DBytes, res.GenD2HBytes
	up, down, ids := nets.xfer.Up.Load(), nets.xfer.Down.Load(), nets.xfer.IDsUp.Load()
	if rlm != nil {
		res.RLMathH2DBytes = (rlm.Transfers.Up.Load() + rlm.Transfers.IDsUp.Load()) / steps
		res.RLMathD2HBytes = rlm.Transfers.Down.Load() / steps
		up, down, ids = up+rlm.Transfers.Up.Load(), down+rlm.Transfers.Down.Load(), ids+rlm.Transfers.IDsUp.Load()
	}
	res.HostDeviceBytes, res.HostDeviceIDBytes = (up+down+ids)/steps, ids/steps
	res.H2DBytes += (up + ids) / steps
	res.D2HBytes += down / steps
	if tn.checkpoint {
		res.CheckpointSecs, res.CheckpointRSSMiB = ckptSecs, ckptRSS
		if res.CheckpointBytes, err = dirBytes(filepath.Join(out, "checkpoints")); err != nil {
			return nil, err
		}
		logf("bench: checkpoint %.2f GiB written in %.1fs (peak RSS %.0f MiB); resuming", float64(res.CheckpointBytes)/(1<<30), ckptSecs, ckptRSS)
		if o.Measured != nil {
			res.setPrograms(nets.Programs())
			o.Measured(res)
		}
		t0 := time.Now()
		tn.started = false
		tr2, err := NewTrainer(cfg, Options{OutDir: out, Resume: true, RLMath: rlm}, tn, set, nil)
		if err != nil {
			return nil, err
		}
		if err := tr2.Run(context.Background()); err != nil {
			return nil, fmt.Errorf("bench: resumed run: %w", err)
		}
		tr2.Close()
		if got := len(tr2.PerfHistory()); got != 1 {
			return nil, fmt.Errorf("bench: the resumed run made %d steps, want 1", got)
		}
		res.RestoreSecs = tn.restore.Seconds()
		res.ResumedStepSeconds = time.Since(t0).Seconds() - res.RestoreSecs
	}
	res.setPrograms(nets.Programs())
	return res, nil
}

// setPrograms records the compiled programs and their total compile time.
func (res *BenchResult) setPrograms(ps []model.ProgramStat) {
	res.Programs, res.ProgramsCompileSecs = ps, 0
	for _, p := range ps {
		res.ProgramsCompileSecs += p.CompileSeconds
	}
}

// addRanks gathers every rank's measured steps (tn's, after the warm-up): per-rank rates, the
// slowest rank's update times, and rank 0's collective time per step.
func (res *BenchResult) addRanks(comm dist.Communicator, tn *timedNets, o BenchOptions) error {
	n := float64(o.Steps)
	var gen, actor, critic float64
	for i := 1; i <= o.Steps; i++ {
		gen += tn.genT[i].Seconds() / n
		actor += tn.actorT[i].Seconds() / n
		critic += tn.criticT[i].Seconds() / n
	}
	coll := (tn.collT[o.Steps] - tn.collT[0]) / n
	all, err := dist.AllGatherFloat64(context.Background(), comm, []float64{gen, actor, critic, coll, float64(res.OptimStateBytes)})
	if err != nil {
		return fmt.Errorf("bench: gathering the ranks' timings: %w", err)
	}
	rows := float64(o.Batch / comm.Size())
	T := float64(o.PromptLen + o.GenLen)
	res.ActorSeconds, res.CriticSecs = 0, 0
	for r, a := range all {
		if len(a) != 5 {
			return fmt.Errorf("bench: rank %d sent a malformed record", r)
		}
		res.Ranks = append(res.Ranks, BenchRank{Rank: r, GenSeconds: a[0], UpdateSeconds: a[1] + a[2],
			GenTokPerS: rows * float64(o.GenLen) / a[0], TrainTokPerS: 3 * rows * T / (a[1] + a[2]), CollectiveSecs: a[3],
			OptimStateBytes: int64(a[4])})
		res.ActorSeconds, res.CriticSecs = max(res.ActorSeconds, a[1]), max(res.CriticSecs, a[2])
	}
	res.CollectiveSecs = all[0][3]
	return nil
}

func modelName(o BenchOptions) string {
	if o.ActorDir != "" {
		return o.ActorDir
	}
	if o.Specs != nil {
		c := o.Specs[0].Cfg
		return fmt.Sprintf("d=%d L=%d V=%d", c.HiddenSize, c.NumLayers, c.VocabSize)
	}
	return fmt.Sprintf("random d=%d L=%d V=%d", o.Cfg.HiddenSize, o.Cfg.NumLayers, o.Cfg.VocabSize)
}

// updateFLOPs counts the model FLOPs of one step's three updates (actor, two critics), each a
// forward and backward over B×T tokens: 2 FLOPs per weight per token forward, backward 2 more
// for the activations' gradients and (full fine-tuning only) 2 for the weights'; attention's
// QKᵀ and PV counted in full (not halved for causality), likewise.
func updateFLOPs(cfg *model.Config, lora bool, b, t int) float64 {
	mult := 6.0
	if lora {
		mult = 4
	}
	tokens := float64(b * t)
	lin := float64(cfg.NumParams()) - float64(cfg.VocabSize*cfg.HiddenSize) // the embedding gather is no matmul
	if cfg.TieWordEmbeddings {
		lin += float64(cfg.VocabSize * cfg.HiddenSize) // ... but the tied head is
	}
	attn := 2 * float64(cfg.NumLayers*t*cfg.NumHeads*cfg.Dh()) // QKᵀ + PV per token, forward, /2 FLOP·2
	critic := lin - float64(cfg.VocabSize*cfg.HiddenSize)      // no LM head
	return tokens * (mult/2*(2*lin+2*attn) + 2*mult/2*(2*critic+2*attn))
}

// copyBandwidth measures the device's copy bandwidth (bytes read + written per second) with a
// chain of element-wise passes over a 256 MiB float32 tensor kept on the device.
func copyBandwidth(be backends.Backend) (gbps float64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	const n = 64 << 20
	if strings.HasPrefix(be.Name(), "go") || strings.Contains(strings.ToLower(be.Name()), "simplego") {
		return 0, fmt.Errorf("not measured on the pure-Go backend")
	}
	add, err := G.NewExec(be, func(x *G.Node) *G.Node { return G.AddScalar(x, 1) })
	if err != nil {
		return 0, err
	}
	sum, err := G.NewExec(be, func(x *G.Node) *G.Node { return G.ReduceAllMax(x) })
	if err != nil {
		return 0, err
	}
	x := tensors.FromShape(shapes.Make(dtypes.Float32, n))
	x = add.MustExec1(x) // on the device from here on
	sum.MustExec1(x).FinalizeAll()
	const reps = 20
	t0 := time.Now()
	for i := 0; i < reps; i++ {
		y := add.MustExec1(x)
		x.FinalizeAll()
		x = y
	}
	sum.MustExec1(x).Value() // waits for the chain
	el := time.Since(t0).Seconds()
	x.FinalizeAll()
	return float64(reps) * 2 * n * 4 / el / 1e9, nil
}

// resetPeakRSS resets the process's VmHWM to its current RSS (Linux; a no-op elsewhere).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// dirBytes is the total size of the regular files under dir.
func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	return n, err
}

// procStatusMiB returns a /proc/self/status field in MiB (0 off Linux).
func procStatusMiB(key string) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%f", &kb); err == nil {
				return kb / 1024
			}
		}
	}
	return 0
}
