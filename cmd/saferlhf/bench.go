package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/gomlx/gomlx/pkg/core/dtypes"

	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/collectives"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/ppo"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// runBench times PPO-Lag steps (ppo.Bench) on a model shape with random weights (--preset,
// --init random) or on real checkpoints (--actor, --reward-model, --cost-model), prints one table
// and optionally writes it as JSON. bench/torch_scale.py runs the same step in PyTorch.
func runBench(args []string) error {
	fs := newFlagSet("bench", "")
	preset := fs.String("preset", "stories260K", "model shape: "+strings.Join(model.PresetNames(), ", "))
	initW := fs.String("init", "random", "weights: random (the preset's shape), or give --actor/--reward-model/--cost-model")
	actor := fs.String("actor", "", "actor HF directory (real weights; overrides --preset)")
	modelPath := fs.String("model", "", "one model (llama2.c .bin or HF dir) as actor and, with fresh score heads, reward and cost models (overrides --preset)")
	rm := fs.String("reward-model", "", "reward model HF directory (default: random, the actor's shape)")
	cm := fs.String("cost-model", "", "cost model HF directory (default: random, the actor's shape)")
	batch := fs.Int("batch", 16, "rollouts per step (prompt batch = train batch)")
	promptLen := fs.Int("prompt-len", 32, "prompt tokens (BOS + random ids)")
	genLen := fs.Int("gen-len", 32, "generated tokens (EOS disabled so every row has exactly this many)")
	steps := fs.Int("steps", 3, "measured steps (after one warm-up step that compiles the graphs)")
	micro := fs.Int("micro-batch-size", 0, "rows per update micro-batch, gradients accumulated in graph (0: the whole batch)")
	distTimeout := fs.String(dist.TimeoutFlag, dist.DefaultTimeout.String(), dist.TimeoutHelp)
	zero := fs.Int(trainer.ZeroStageFlag, 0, trainer.ZeroStageHelp)
	loraRank := fs.Int("lora-rank", 0, "LoRA rank for actor and critics (0: full fine-tuning)")
	loraAlpha := fs.Float64("lora-alpha", 16, "LoRA alpha (scale alpha/rank)")
	loraTargets := fs.String("lora-targets", "q_proj,k_proj,v_proj,o_proj", "comma-separated LoRA target projections")
	topK := fs.Int("top-k", 50, "sampling: keep the K most likely tokens (0: off)")
	topP := fs.Float64("top-p", 1, "sampling: nucleus mass (1: off)")
	temp := fs.Float64("temperature", 1, "sampling temperature")
	be := fs.String("backend", "", "GoMLX backend (default $SAFERLHF_BACKEND or "+backend.Default+")")
	dtype := fs.String("dtype", "", "compute dtype bf16 or f32 (default: bf16 on xla:*, f32 on go)")
	memFrac := fs.Float64("gpu-memory-fraction", 0, "fraction of GPU memory the XLA client may use (0: the plugin's default)")
	peak := fs.Float64("peak-tflops", 0, "device dense peak TFLOP/s in --dtype for MFU (0: not reported)")
	coll := fs.String(collectives.Flag, string(collectives.Auto), collectives.Help)
	jsonOut := fs.String("json", "", "also write the result as JSON to this file (with --out, first before the resumed step, in case it does not finish)")
	updates := fs.String("updates", "auto", "update programs: fused (one graph per update, every layer unrolled), layerwise (per-layer backward programs) or auto (layerwise on XLA)")
	rlMath := fs.String("rl-math", "", "where KL shaping and GAE run: host (float64 kernels) or graph (a float32 program on the backend; default: graph on xla:*, host otherwise)")
	out := fs.String("out", "", "run directory (absent or empty): the trainer checkpoints the timed run there, then resumes from it for one more step (checkpoint size, write, restore times and host peak RSS reported)")
	numerics := fs.Bool("numerics", false, "instead of the step: compare the preset's logits (random weights) in bf16, f32 and, on XLA, f32 with TF32 forced, against f32 (--numerics-cpu: the pure-Go backend's f32 as reference)")
	numCPU := fs.Bool("numerics-cpu", false, "with --numerics: also run f32 on the pure-Go backend as the exact reference")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if *initW != "random" && *actor == "" {
		return usagef("--init %q: only random is supported without --actor", *initW)
	}
	if *batch <= 0 || *promptLen <= 1 || *genLen <= 0 || *steps <= 0 || *micro < 0 || *loraRank < 0 || *topK < 0 {
		return usagef("--batch, --prompt-len > 1, --gen-len and --steps must be positive; --micro-batch-size, --lora-rank, --top-k >= 0")
	}
	if err := collectives.CheckFlags(*zero, *coll, *distTimeout, *be); err != nil {
		return usagef("%v", err)
	}
	if *rlMath != "" && *rlMath != ppo.RLMathHost && *rlMath != ppo.RLMathGraph {
		return usagef("--rl-math %q: want host or graph", *rlMath)
	}
	upd, err := ppo.ParseUpdatePrograms(*updates)
	if err != nil {
		return usagef("--updates: %v", err)
	}
	mode, _ := collectives.ParseMode(*coll) // checked above
	if err := (backend.Options{MemoryFraction: *memFrac}).Check(*be); err != nil {
		return usagef("%v", err)
	}
	// Under a launcher every rank runs its share of the step; rank 0 prints and writes --json.
	timeout, _ := dist.ParseTimeout(*distTimeout) // checked above
	comm, _, err := dist.Join(context.Background(), dist.Options{Log: os.Stderr, Timeout: timeout})
	if err != nil {
		return err
	}
	defer comm.Close()
	spec := backend.Resolve(*be)
	if *dtype == "" {
		*dtype = model.DefaultDType(spec)
	}
	dt, err := model.ParseDType(*dtype)
	if err != nil {
		return usagef("--dtype: %v", err)
	}
	b, err := backend.NewWithOptions(spec, backend.Options{MemoryFraction: *memFrac})
	if err != nil {
		return err
	}
	cfg, err := model.Preset(*preset)
	if err != nil {
		return usagef("--preset: %v", err)
	}
	if *numerics {
		b.Finalize()
		return benchNumerics(cfg, spec, *memFrac, *numCPU, *batch, *promptLen, *jsonOut)
	}
	var specs *[3]ppo.ModelSpec
	if *modelPath != "" {
		specs = &[3]ppo.ModelSpec{}
		for i := range specs {
			c, w, err := model.LoadAny(*modelPath)
			if err != nil {
				return err
			}
			if i > 0 {
				delete(w, model.NameLMHead)
				model.InitScoreHead(c, w, 1, uint64(i))
			}
			specs[i] = ppo.ModelSpec{Cfg: c, Weights: w}
		}
	}
	opts := ppo.BenchOptions{Backend: b, Specs: specs, BackendName: spec, Cfg: cfg, ActorDir: *actor, RewardDir: *rm, CostDir: *cm,
		DType: dt, Batch: *batch, PromptLen: *promptLen, GenLen: *genLen, Steps: *steps, MicroBatch: *micro,
		Sampling:   ppo.Sampling{Temperature: *temp, TopP: *topP, TopK: *topK, RepetitionPenalty: 1},
		PeakTFLOPS: *peak, CheckpointDir: *out, Updates: upd, RLMath: *rlMath, Log: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) },
		Comm: comm, ZeroStage: *zero}
	if comm.Rank() > 0 {
		opts.Log = nil
	}
	red, why, err := collectives.Select(context.Background(), mode, spec, b, comm, timeout)
	if err != nil {
		return err
	}
	if red != nil {
		defer red.Close()
		opts.Reducer = red
	}
	if opts.Log != nil && (comm.Size() > 1 || red != nil) {
		opts.Log("bench: gradient averaging: %s", why)
	}
	if *loraRank > 0 {
		opts.LoRA = model.LoRAConfig{Rank: *loraRank, Alpha: *loraAlpha, Targets: splitList(*loraTargets)}
	}
	if strings.HasPrefix(spec, "xla") {
		frac := *memFrac
		if frac == 0 {
			frac = 0.75 // the CUDA PJRT plugin's default
		}
		opts.DeviceBytes = int64(float64(ppo.DeviceMemory()) * frac)
	}
	writeJSON := func(r *ppo.BenchResult) error {
		js, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		return atomicfile.WriteBytes(*jsonOut, append(js, '\n'), 0o644)
	}
	if *jsonOut != "" && *out != "" && comm.Rank() == 0 {
		// The result so far, in case the resumed step does not finish (rewritten at the end).
		opts.Measured = func(r *ppo.BenchResult) {
			if err := writeJSON(r); err != nil && opts.Log != nil {
				opts.Log("bench: writing %s before the resumed step: %v", *jsonOut, err)
			}
		}
	}
	r, err := ppo.Bench(opts)
	if err != nil || comm.Rank() > 0 {
		return err
	}
	fmt.Printf("saferlhf bench: PPO-Lag step, %s (%.2fB params), %s, batch %d, prompt %d + %d generated, LoRA rank %d, backend %s, GOMAXPROCS %d\n",
		r.Model, float64(r.Params)/1e9, r.DType, r.Batch, r.PromptLen, r.GenLen, r.LoRARank, r.Backend, runtime.GOMAXPROCS(0))
	fmt.Printf("| %-36s | %12s |\n", "quantity", "value")
	fmt.Printf("|%s|%s|\n", strings.Repeat("-", 38), strings.Repeat("-", 14))
	row := func(k, f string, v float64) { fmt.Printf("| %-36s | %12s |\n", k, fmt.Sprintf(f, v)) }
	row("step: generation (s)", "%.3f", r.GenSeconds)
	row("step: scoring, 6 models (s)", "%.3f", r.ScoreSeconds)
	row("step: actor update (s)", "%.3f", r.ActorSeconds)
	row("step: 2 critic updates (s)", "%.3f", r.CriticSecs)
	row("step: RL math on "+r.RLMath+" (s)", "%.4f", r.RLMathSecs)
	row("step: update, 3 models (s)", "%.3f", r.ActorSeconds+r.CriticSecs+r.RLMathSecs)
	row("step: total (s)", "%.3f", r.StepSeconds)
	row("rollout tokens/s (generation)", "%.0f", r.GenTokPerS)
	row("scoring tokens/s (6 models)", "%.0f", r.ScoreTokPerS)
	row("train tokens/s (actor+2 critics)", "%.0f", r.TrainTokPerS)
	native := r.Engine == "native" // no device, no copies, no compiled programs
	if !native {
		row("device copy bandwidth (GB/s)", "%.0f", r.CopyGBps)
		row("generation / HBM bound", "%.3f", r.GenHBMFraction)
	}
	row("update model TFLOP per step", "%.2f", r.UpdateTFLOPs)
	if !native || *peak > 0 {
		row("update MFU", "%.3f", r.UpdateMFU)
	}
	if native {
		row("warm-up step (s)", "%.1f", r.WarmupSecs)
	} else {
		row("warm-up step incl. compile (s)", "%.1f", r.WarmupSecs)
		row("compile estimate (s)", "%.1f", r.CompileSecs)
	}
	row("model load / init (s)", "%.1f", r.LoadSeconds)
	row("peak RSS (MiB, VmHWM)", "%.0f", r.HostRSSMiB)
	row("memory plan: device peak (GiB)", "%.1f", r.PlannedPeakGiB)
	if !native {
		row("host->device MiB per step", "%.2f", float64(r.H2DBytes)/(1<<20))
		row("device->host MiB per step", "%.2f", float64(r.D2HBytes)/(1<<20))
		row("  generation host->device (KiB)", "%.1f", float64(r.GenH2DBytes)/(1<<10))
		row("  generation device->host (KiB)", "%.1f", float64(r.GenD2HBytes)/(1<<10))
		row("  scoring+RL+updates, both (KiB)", "%.1f", float64(r.HostDeviceBytes)/(1<<10))
		row("    of which token ids up (KiB)", "%.1f", float64(r.HostDeviceIDBytes)/(1<<10))
		if r.RLMath == ppo.RLMathGraph {
			row("  of which RL math host->device KiB", "%.1f", float64(r.RLMathH2DBytes)/(1<<10))
			row("  of which RL math device->host KiB", "%.1f", float64(r.RLMathD2HBytes)/(1<<10))
		}
	}
	if *out != "" {
		row("checkpoint size (GiB)", "%.3f", float64(r.CheckpointBytes)/(1<<30))
		row("checkpoint write (s)", "%.2f", r.CheckpointSecs)
		row("checkpoint: host peak RSS (MiB)", "%.0f", r.CheckpointRSSMiB)
		row("restore (s)", "%.2f", r.RestoreSecs)
		row("resumed step (s)", "%.2f", r.ResumedStepSeconds)
	}
	row("layerwise programs: compile (s)", "%.2f", r.ProgramsCompileSecs)
	row("AdamW moments held, rank 0 (MiB)", "%.2f", float64(r.OptimStateBytes)/(1<<20))
	if r.WorldSize > 1 {
		row("ranks (data parallel)", "%.0f", float64(r.WorldSize))
		row("all-reduces per step, rank 0 (s)", "%.3f", r.CollectiveSecs)
		for _, k := range r.Ranks {
			fmt.Printf("  rank %d: generation %.0f tokens/s, training %.0f tokens/s, update %.3f s of which %.3f s in collectives, AdamW moments %.2f MiB\n",
				k.Rank, k.GenTokPerS, k.TrainTokPerS, k.UpdateSeconds, k.CollectiveSecs, float64(k.OptimStateBytes)/(1<<20))
		}
	}
	for _, p := range r.Programs {
		fmt.Printf("  program %-30s %6d nodes, compiled in %7.3fs, %5d calls, inputs %s\n", p.Program, p.Nodes, p.CompileSeconds, p.Calls, p.Shapes)
	}
	if *jsonOut != "" {
		return writeJSON(r)
	}
	return nil
}

// benchNumerics prints how far the logits of a random model of cfg's shape move between dtypes and
// backends (the first run is the reference).
func benchNumerics(cfg *model.Config, spec string, memFrac float64, cpu bool, b, t int, jsonOut string) error {
	type run struct {
		Label string
		spec  string
		dt    dtypes.DType
		Diff  model.LogitsDiff
		Secs  float64
	}
	var runs []run
	if cpu {
		runs = append(runs, run{Label: "f32 go (reference)", spec: "go", dt: dtypes.Float32})
	}
	runs = append(runs, run{Label: "f32 " + spec, spec: spec, dt: dtypes.Float32}, run{Label: "bf16 " + spec, spec: spec, dt: dtypes.BFloat16})
	if strings.HasPrefix(spec, "xla:") && !strings.Contains(spec, "tf32") {
		runs = append(runs, run{Label: "f32 TF32 forced " + spec, spec: spec + ",tf32", dt: dtypes.Float32})
	}
	var ref []float32
	for i := range runs {
		o := backend.Options{MemoryFraction: memFrac}
		if runs[i].spec == "go" {
			o.MemoryFraction = 0 // the pure-Go reference run has no GPU pool
		}
		be, err := backend.NewWithOptions(runs[i].spec, o)
		if err != nil {
			return err
		}
		t0 := time.Now()
		l, err := model.RandomLogits(be, cfg, 1, runs[i].dt, b, t)
		if err != nil {
			return fmt.Errorf("%s: %w", runs[i].Label, err)
		}
		runs[i].Secs = time.Since(t0).Seconds()
		be.Finalize()
		if ref == nil {
			ref = l
		}
		runs[i].Diff = model.CompareLogits(l, ref, cfg.VocabSize)
		fmt.Fprintf(os.Stderr, "numerics: %s done in %.1fs\n", runs[i].Label, runs[i].Secs)
	}
	fmt.Printf("saferlhf bench --numerics: logits of a random model (d=%d, %d layers, vocab %d), %d×%d tokens, vs %s\n",
		cfg.HiddenSize, cfg.NumLayers, cfg.VocabSize, b, t, runs[0].Label)
	fmt.Printf("| %-40s | %10s | %10s | %8s |\n", "run", "rel. L2", "max |Δ|", "top-1")
	fmt.Printf("|%s|%s|%s|%s|\n", strings.Repeat("-", 42), strings.Repeat("-", 12), strings.Repeat("-", 12), strings.Repeat("-", 10))
	for _, r := range runs {
		fmt.Printf("| %-40s | %10.3g | %10.3g | %8.4f |\n", r.Label, r.Diff.RelL2, r.Diff.MaxAbs, r.Diff.Top1)
	}
	if jsonOut != "" {
		js, err := json.MarshalIndent(runs, "", "  ")
		if err != nil {
			return err
		}
		return atomicfile.WriteBytes(jsonOut, append(js, '\n'), 0o644)
	}
	return nil
}
