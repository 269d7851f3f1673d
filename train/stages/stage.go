package stages

import (
	stdctx "context"
	"encoding/json"
	"fmt"
	"github.com/saferlhf/saferlhf/data/prefs"
	"github.com/saferlhf/saferlhf/data/shards"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/metrics"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
	"github.com/saferlhf/saferlhf/train/safetensors"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// modelScope is the context scope that holds the trained model.
const modelScope = "/model"

// Result reports a finished stage.
type Result struct {
	Stage     Stage              `json:"stage"`
	Train     int                `json:"train_examples"`
	HeldOut   int                `json:"held_out_examples"` // examples in the held-out batches
	Dropped   int                `json:"dropped"`           // samples not usable (identical after truncation, no label, ...)
	Steps     int                `json:"steps"`
	Initial   map[string]float64 `json:"initial_eval,omitempty"` // held-out metrics before training
	Final     map[string]float64 `json:"final_eval,omitempty"`   // held-out metrics after training
	TrainLoss float64            `json:"final_train_loss"`
	Seconds   float64            `json:"seconds"`
	TokPerSec float64            `json:"tokens_per_second"`            // all ranks together
	World     int                `json:"world_size,omitempty"`         // ranks of a data-parallel run
	CommSecs  float64            `json:"collective_seconds,omitempty"` // rank 0's time in gradient all-reduces
	// OptimBytes is the size of the AdamW moments this rank held at the end (about 1/world of them with --zero-stage 1).
	OptimBytes int64  `json:"optimizer_state_bytes"`
	Transport  string `json:"collectives,omitempty"` // how gradients were averaged (--collectives)
	ModelDir   string `json:"model_dir"`
}

// NonTrajectoryKeys are the Config keys that a resumed run may change freely:
// where output goes, how often it is saved or evaluated, and the resume switches.
var NonTrajectoryKeys = []string{"out", "backend", "eval-every", "save-every", "keep-checkpoints", "resume", "force", "allow-config-change", "save-dtype", "zero-stage",
	"gpu-memory-fraction", "collectives", "dist-timeout"}

// Run trains one stage (SFT, RM or CM) as configured, writing everything under
// cfg.Out. Cancelling ctx checkpoints and returns an error wrapping ctx.Err().
// Started by a launcher (torchrun, srun, mpirun, a JobSet: see dist.FromEnv) it
// runs data-parallel: each rank trains on its share of every global batch of
// cfg.BatchSize rows, and rank 0 writes the outputs (see runRanked).
func Run(ctx stdctx.Context, stage Stage, cfg Config) (*Result, error) {
	if err := cfg.Validate(stage); err != nil {
		return nil, err
	}
	comm, err := connect(ctx, stage, cfg)
	if err != nil {
		return nil, err
	}
	defer comm.Close()
	return runRanked(ctx, stage, cfg, comm)
}

// runRanked is Run as one rank of comm.
func runRanked(ctx stdctx.Context, stage Stage, cfg Config, comm dist.Communicator) (*Result, error) {
	t0 := time.Now()
	if err := cfg.Validate(stage); err != nil {
		return nil, err
	}
	be, err := backend.NewWithOptions(cfg.Backend, backend.Options{MemoryFraction: cfg.GPUMemFrac})
	if err != nil {
		return nil, err
	}
	if err := model.EnableFastGradients(); err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	mcfg, w, err := model.LoadAny(cfg.Model)
	if err == nil {
		err = mcfg.CheckContext("--max-length", cfg.MaxLength, "--model "+cfg.Model) // batches are that wide
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	tokPath, err := model.ResolveTokenizer(cfg.Tokenizer, cfg.Model)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	if cfg.Init == "scratch" {
		if w, err = scratchWeights(mcfg, tokPath, cfg.Seed); err != nil {
			return nil, fmt.Errorf("%s: %w", stage, err)
		}
	} else if w == nil {
		return nil, fmt.Errorf("%s: --model %s holds a configuration only: use --init scratch", stage, cfg.Model)
	}
	tok, err := model.LoadTokenizer(tokPath, mcfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	tokBytes, err := os.ReadFile(tokPath)
	if err != nil {
		return nil, err
	}
	if stage != SFT {
		// A score model: the base transformer and a fresh score head (bias zero), no LM head (spec §3).
		delete(w, model.NameLMHead)
		model.InitScoreHead(mcfg, w, 1, cfg.Seed)
		mcfg.Architecture = "LlamaForScore"
	}
	res := &Result{Stage: stage}
	train, eval, err := buildSources(stage, cfg, tok, res)
	if err == nil {
		err = shardTrain(train, comm)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	mctx, reducer, closeReducer, err := startRun(ctx, stage, cfg, be, comm, res)
	if err != nil {
		return nil, err
	}
	defer closeReducer()

	if err := model.SetWeights(mctx.InAbsPath(modelScope), mcfg, w); err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	if err := freeze(mctx.InAbsPath(modelScope), mcfg, cfg.TrainLayers); err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	// withScore sets a score model's config.json normaliser keys from the tracked statistics.
	withScore := func() error { return nil }
	var state []string // training state outside the model and optimizer, equal on every rank
	if stage != SFT {
		initNormalizer(mctx)
		state = []string{normScope}
		withScore = func() (err error) {
			mcfg.Score, err = scoreConfig(mctx, stage)
			return err
		}
	}
	native := sftNative
	if stage != SFT {
		native = scoreNative(stage, cfg, mctx, comm.Size() < 2)
	}
	stepper, err := newSteps(be, mctx, mcfg, trainer.Config{
		Scope: modelScope, Loss: lossFn(stage, mcfg, cfg, comm.Size() < 2), WeightDecay: cfg.WeightDecay,
		ClipNorm: cfg.ClipNorm, Accumulation: cfg.Accumulation, Comm: comm, ZeroStage: cfg.ZeroStage, Reducer: reducer,
		State: state,
	}, native, stage == SFT)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	if stage != SFT && comm.Size() > 1 {
		stepper = rankedNormalizer{Steps: stepper, ctx: mctx}
	}
	total := trainer.TotalSteps(cfg.Epochs, cfg.Steps, train.Len(), cfg.Accumulation)
	if total < 1 {
		return nil, fmt.Errorf("%s: %d training examples make no optimizer step at batch %d × accumulation %d",
			stage, res.Train, cfg.BatchSize, cfg.Accumulation)
	}
	sched, err := optim.NewSchedule(cfg.Scheduler, cfg.LR, optim.WarmupSteps(cfg.Warmup, total), total)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	loop, err := modelLoop(modelLoopSpec{kind: string(stage), cfg: cfg, meta: cfg, stepper: stepper, train: train, eval: eval,
		lr: sched.LR, mctx: mctx, mcfg: mcfg, tokPath: tokPath, tokBytes: tokBytes, beforeSave: withScore})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	return runLoop(ctx, loop, comm, cfg.Out, res, t0)
}

// setComputeDType applies --dtype (default: bf16 on xla:*, f32 otherwise) to the models of
// mctx: matmuls in that dtype, the trained weights float32 masters (model.SetComputeDType). The
// native engine computes in float32 only.
// startRun makes the model's context in the compute dtype and the gradient transport, and only
// then claims the output (cfg.Prepare on rank 0, then cfg.Out), so a run that fails on its
// inputs leaves nothing behind (the command checked the output first). release is never nil.
func startRun(ctx stdctx.Context, stage Stage, cfg Config, be backends.Backend, comm dist.Communicator, res *Result) (
	mctx *context.Context, reducer trainer.GradientReducer, release func(), err error) {
	mctx = context.New()
	if err := setComputeDType(mctx, be, cfg); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", stage, err)
	}
	reducer, release, err = gradientReducer(ctx, string(stage), cfg, be, comm, res)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := dist.OnRank0(ctx, comm, cfg.Prepare); err != nil {
		release()
		return nil, nil, nil, err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		release()
		return nil, nil, nil, fmt.Errorf("%s: %w", stage, err)
	}
	return mctx, reducer, release, nil
}

func setComputeDType(mctx *context.Context, be backends.Backend, cfg Config) error {
	name := cfg.DType
	if name == "" {
		name = model.DefaultDType(backend.Resolve(cfg.Backend))
	}
	dt, err := model.ParseDType(name)
	if err != nil {
		return fmt.Errorf("--dtype: %w", err)
	}
	if dt != dtypes.Float32 && backend.IsNative(be) {
		return fmt.Errorf("--dtype %s: the native engine computes in float32 (use --dtype f32, or --backend go or xla:cuda)", name)
	}
	model.SetComputeDType(mctx, dt)
	return nil
}

// modelLoopSpec is what modelLoop needs of a stage that trains the model under modelScope.
type modelLoopSpec struct {
	kind        string
	cfg         Config
	meta        any // the configuration stored with checkpoints (the stage's whole config)
	stepper     trainer.Steps
	train, eval trainer.Source
	lr          trainer.Schedule
	mctx        *context.Context
	mcfg        *model.Config
	tokPath     string
	tokBytes    []byte
	beforeSave  func() error // runs before the weights are read for a checkpoint or the model (nil: none)
}

// modelLoop builds the supervised loop of a stage whose checkpoints and final model are the
// model under modelScope as HF weights, with config.json and the tokenizer beside them.
func modelLoop(sp modelLoopSpec) (*trainer.Loop, error) {
	cfg, mcfg := sp.cfg, sp.mcfg
	weights := func() (model.Weights, error) {
		fw, err := model.GetWeights(sp.mctx.InAbsPath(modelScope), mcfg)
		if err != nil {
			return nil, err
		}
		if sp.beforeSave != nil {
			if err := sp.beforeSave(); err != nil {
				return nil, err
			}
		}
		return fw, nil
	}
	return trainer.NewLoop(trainer.LoopConfig{
		LR:      sp.lr,
		Stepper: sp.stepper, Train: sp.train, Eval: sp.eval, Epochs: cfg.Epochs, Steps: cfg.Steps,
		EvalEvery: cfg.EvalEvery, CheckpointEvery: cfg.CkptEvery, KeepCheckpoints: cfg.KeepCkpts,
		Dir: cfg.Out, Resume: cfg.Resume, Progress: cfg.Progress, Name: sp.kind, EvalAtStart: true,
		Meta: sp.meta, Kind: sp.kind, AllowConfigChange: cfg.AllowChange, ConfigIgnore: NonTrajectoryKeys,
		CheckpointFiles: map[string][]byte{filepath.Base(sp.tokPath): sp.tokBytes},
		WeightsScope:    modelScope,
		CheckpointWeights: func() ([]safetensors.Tensor, json.RawMessage, error) {
			fw, err := weights()
			if err != nil {
				return nil, nil, err
			}
			js, err := mcfg.HFConfigJSON()
			if err != nil {
				return nil, nil, err
			}
			out := make([]safetensors.Tensor, 0, len(fw))
			for _, n := range fw.Names() {
				out = append(out, safetensors.Tensor{Name: n, Shape: fw[n].Shape, F32: fw[n].Data})
			}
			return out, js, nil
		},
		SaveModel: func(dir string) error {
			fw, err := weights()
			if err != nil {
				return err
			}
			save := mcfg
			if cfg.SaveDType != "" {
				sc := *mcfg
				sc.TorchDType = cfg.SaveDType
				save = &sc
			}
			return model.SaveWithTokenizer(dir, save, fw, sp.tokPath)
		},
	})
}

// runLoop runs a stage's loop and fills res from its summary; rank 0 writes it to
// <out>/result.json.
func runLoop(ctx stdctx.Context, loop *trainer.Loop, comm dist.Communicator, out string, res *Result, t0 time.Time) (*Result, error) {
	sum, err := loop.Run(ctx)
	res.Steps, res.TrainLoss, res.Final, res.TokPerSec, res.ModelDir = sum.Steps, sum.TrainLoss, sum.Eval, sum.TokensPerS, sum.ModelDir
	res.OptimBytes = sum.OptimizerStateBytes
	if comm.Size() > 1 {
		res.World, res.CommSecs = comm.Size(), sum.Collective.Seconds()
	}
	res.Initial = initialEval(filepath.Join(out, "metrics.jsonl"))
	res.Seconds = time.Since(t0).Seconds()
	if err != nil || comm.Rank() != 0 {
		return res, err
	}
	js, _ := json.MarshalIndent(res, "", "  ")
	if err := atomicfile.WriteBytes(filepath.Join(out, "result.json"), append(js, '\n'), 0o644); err != nil {
		return res, err
	}
	return res, nil
}

// initialEval reads the step-0 held-out record of a metrics file (nil if none).
func initialEval(path string) map[string]float64 {
	recs, err := metrics.Read(path)
	if err != nil {
		return nil
	}
	for _, r := range recs {
		if r.Step == 0 && r.Tags["split"] == "eval" {
			return r.Values
		}
	}
	return nil
}

// buildSources reads and tokenizes the data, splits off the held-out set and
// returns the training and held-out batch sources.
func buildSources(stage Stage, cfg Config, tok tokenizer.Tokenizer, res *Result) (train, eval trainer.Source, err error) {
	trainShards, err := shards.AllDatasets(cfg.Data)
	if err != nil {
		return nil, nil, err
	}
	evalShards, err := shards.AllDatasets(cfg.EvalData)
	if err != nil {
		return nil, nil, err
	}
	if trainShards || evalShards {
		if !trainShards || (len(cfg.EvalData) > 0 && !evalShards) {
			return nil, nil, fmt.Errorf("--data and --eval-data must both be shard directories or both raw files")
		}
		if cfg.SwapSplit {
			return nil, nil, fmt.Errorf("--swap-split needs raw --data files (shards are split by example, not by prompt)")
		}
		return shardSources(stage, cfg, tok, res)
	}
	raw, err := datasets.LoadRaw(cfg.Data, cfg.Seed)
	if err != nil {
		return nil, nil, err
	}
	if stage == SFT && !slices.ContainsFunc(raw, hasTarget) {
		return nil, nil, fmt.Errorf("--data %s: every SFT target (answer) is empty: there is nothing to learn but EOS", strings.Join(cfg.Data, ","))
	}
	var rawEval []datasets.RawSample
	if len(cfg.EvalData) > 0 {
		if rawEval, err = datasets.LoadRaw(cfg.EvalData, cfg.Seed); err != nil {
			return nil, nil, err
		}
	}
	raw, rawEval = splitTrainEval(cfg, raw, rawEval, rawSplit(cfg))
	return stageSources(stage, cfg, tok, res, raw, rawEval,
		func(s datasets.RawSample) (sftExample, bool, error) {
			e, ok := buildSFT(s, tok, cfg.MaxLength, cfg.Truncate)
			return e, ok, nil
		},
		func(s datasets.RawSample) (PairExample, bool, error) {
			return prefs.Build(s, tok, cfg.MaxLength, cfg.Truncate, stage == CM)
		})
}

// shardSources reads pre-tokenized examples from shard directories (saferlhf data
// pack / data demo); without --eval-data the held-out part is a seeded split.
func shardSources(stage Stage, cfg Config, tok tokenizer.Tokenizer, res *Result) (trainer.Source, trainer.Source, error) {
	all, err := readShardExamples(cfg.Data, stage, tok.Info())
	if err != nil {
		return nil, nil, err
	}
	var evEx []datasets.Example
	if len(cfg.EvalData) > 0 {
		if evEx, err = readShardExamples(cfg.EvalData, stage, tok.Info()); err != nil {
			return nil, nil, err
		}
	}
	trEx, evEx := splitTrainEval(cfg, all, evEx, func(all []datasets.Example, ratio float64, evalMax, trainMax int, seed uint64) ([]int, []int) {
		return datasets.Split(len(all), ratio, evalMax, trainMax, seed)
	})
	return stageSources(stage, cfg, tok, res, trEx, evEx,
		func(e datasets.Example) (sftExample, bool, error) {
			s, ok := sftFromShard(e, cfg.MaxLength)
			return s, ok, nil
		},
		func(e datasets.Example) (PairExample, bool, error) {
			p, ok := prefs.FromShard(e, cfg.MaxLength, stage == CM)
			return p, ok, nil
		})
}

// rawSplit is datasets.SplitRaw with cfg's --swap-split, in the form splitTrainEval takes.
func rawSplit(cfg Config) func([]datasets.RawSample, float64, int, int, uint64) ([]int, []int) {
	return func(all []datasets.RawSample, ratio float64, evalMax, trainMax int, seed uint64) ([]int, []int) {
		return datasets.SplitRaw(all, ratio, evalMax, trainMax, seed, cfg.SwapSplit)
	}
}

// splitTrainEval returns the training and held-out examples: with --eval-data,
// all and eval capped at --max-train and --eval-max; without, a seeded Split of all.
func splitTrainEval[T any](cfg Config, all, eval []T, split func([]T, float64, int, int, uint64) ([]int, []int)) (tr, ev []T) {
	if len(cfg.EvalData) == 0 {
		ei, ti := split(all, cfg.EvalRatio, cfg.EvalMax, cfg.MaxTrain, cfg.Seed)
		for _, i := range ti {
			tr = append(tr, all[i])
		}
		for _, i := range ei {
			ev = append(ev, all[i])
		}
		return tr, ev
	}
	tr, ev = all, eval
	if cfg.MaxTrain > 0 && len(tr) > cfg.MaxTrain {
		tr = tr[:cfg.MaxTrain]
	}
	if cfg.EvalMax > 0 && len(ev) > cfg.EvalMax {
		ev = ev[:cfg.EvalMax]
	}
	return tr, ev
}

// stageSources builds the stage's examples from the training and held-out inputs
// (sft for SFT, pair for the reward and cost models; inputs they cannot use count
// as res.Dropped) and returns their batch sources.
func stageSources[In any](stage Stage, cfg Config, tok tokenizer.Tokenizer, res *Result, trIn, evIn []In,
	sft func(In) (sftExample, bool, error), pair func(In) (PairExample, bool, error)) (trainer.Source, trainer.Source, error) {
	if stage == SFT {
		tr, ev, err := buildExamples(res, trIn, evIn, sft)
		if err != nil {
			return nil, nil, err
		}
		return sftSources(cfg, tok, res, tr, ev)
	}
	tr, ev, err := buildExamples(res, trIn, evIn, pair)
	if err != nil {
		return nil, nil, err
	}
	return pairSources(cfg, tok, res, tr, ev)
}

// buildExamples applies build to the training and held-out inputs, counting the
// unusable ones (ok false) in res.Dropped.
func buildExamples[In, Out any](res *Result, trIn, evIn []In, build func(In) (Out, bool, error)) (tr, ev []Out, err error) {
	for k, xs := range [][]In{trIn, evIn} {
		for _, x := range xs {
			y, ok, err := build(x)
			if err != nil {
				return nil, nil, err
			}
			switch {
			case !ok:
				res.Dropped++
			case k == 0:
				tr = append(tr, y)
			default:
				ev = append(ev, y)
			}
		}
	}
	return tr, ev, nil
}

func sftSources(cfg Config, tok tokenizer.Tokenizer, res *Result, tr, ev []sftExample) (trainer.Source, trainer.Source, error) {
	return checkedSources(cfg, res, len(tr), "examples",
		&seqSource{ex: tr, b: cfg.BatchSize, t: cfg.MaxLength, pad: tok.Pad(), seed: cfg.Seed, shuffle: true},
		&seqSource{ex: ev, b: cfg.BatchSize, t: cfg.MaxLength, pad: tok.Pad()})
}

func pairSources(cfg Config, tok tokenizer.Tokenizer, res *Result, tr, ev []PairExample) (trainer.Source, trainer.Source, error) {
	return checkedSources(cfg, res, len(tr), "pairs",
		&pairSource{ex: tr, b: cfg.BatchSize, t: cfg.MaxLength, pad: tok.Pad(), seed: cfg.Seed, shuffle: true},
		&pairSource{ex: ev, b: cfg.BatchSize, t: cfg.MaxLength, pad: tok.Pad()})
}

// checkedSources records the training and held-out sizes (n training items, what
// they are called) in res and refuses a training source without one full batch.
func checkedSources(cfg Config, res *Result, n int, what string, ts, es trainer.Source) (trainer.Source, trainer.Source, error) {
	res.Train, res.HeldOut = n, es.Len()*cfg.BatchSize
	if ts.Len() == 0 {
		return nil, nil, fmt.Errorf("%d usable training %s: fewer than one batch of %d", n, what, cfg.BatchSize)
	}
	return ts, es, nil
}

// lossFn returns the stage's loss graph over the batch inputs of seqSource / pairSource.
// A score model's loss tracks the score normaliser in the graph when track is set (one process;
// several ranks combine their batches' statistics instead: rankedNormalizer).
func lossFn(stage Stage, mcfg *model.Config, cfg Config, track bool) trainer.LossFn {
	if stage == SFT {
		return func(ctx *context.Context, in []*graph.Node) (*graph.Node, map[string]*graph.Node) {
			lp := model.TokenLogProbs(ctx, mcfg, in[0], in[1])
			return SFTLoss(lp, in[2], in[3]), nil
		}
	}
	tokenWise := cfg.LossType == "token-wise"
	return func(ctx *context.Context, in []*graph.Node) (*graph.Node, map[string]*graph.Node) {
		scores := model.Scores(ctx, mcfg, in[0], in[1])
		var span, signs *graph.Node
		if tokenWise {
			span = in[3]
		}
		if stage == CM {
			signs = in[4]
		}
		out := WeightedPairwiseScoreLoss(scores, in[2], span, signs, cfg.Reg, cfg.SignWeight)
		ends := graph.Concatenate([]*graph.Node{out.Hi, out.Lo}, 0)
		if track && ctx.IsTraining(ends.Graph()) {
			trackNormalizer(ctx, ends)
		}
		m := map[string]*graph.Node{
			"accuracy":   out.Accuracy,
			"score_mean": graph.ReduceAllMean(ends),
			"score_sq":   graph.ReduceAllMean(graph.Square(ends)),
			"hi_mean":    graph.ReduceAllMean(out.Hi),
			"lo_mean":    graph.ReduceAllMean(out.Lo),
		}
		if out.SignAccuracy != nil {
			// Combined over batches as sum(correct)/sum(labelled) (trainer.CombineRatios).
			m["sign_accuracy_num"], m["sign_accuracy_den"] = out.SignCorrect, out.SignLabelled
		}
		return out.Loss, m
	}
}

// hasTarget reports whether a sample has a non-empty answer (or assistant turn) to learn.
func hasTarget(s datasets.RawSample) bool {
	if len(s.Dialogue) > 0 {
		for k := 1; k < len(s.Dialogue); k += 2 {
			if strings.TrimSpace(s.Dialogue[k]) != "" {
				return true
			}
		}
		return false
	}
	return strings.TrimSpace(s.Answer) != ""
}
