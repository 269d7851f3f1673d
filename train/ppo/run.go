package ppo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/collectives"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// RunConfig is one ppo-lag or ppo run: the models, data and outputs around the loop's Config.
// The flag tags are the CLI flag names (config.Register); DefaultRunConfig holds the defaults.
type RunConfig struct {
	Config
	Model        string   `flag:"model" alias:"actor" help:"SFT policy: HF model dir or llama2.c .bin (also the frozen reference model)"`
	RewardModel  string   `flag:"reward-model" help:"reward model dir (frozen)"`
	RewardCritic string   `flag:"reward-critic" help:"reward critic init (default: the reward model)"`
	CostModel    string   `flag:"cost-model" group:"cost" help:"cost model dir (frozen)"`
	CostCritic   string   `flag:"cost-critic" group:"cost" help:"cost critic init (default: the cost model)"`
	Lambda       string   `flag:"lambda" group:"cost" help:"Lagrange multiplier: sgd (reference log-λ SGD), pid (PID-Lagrangian) or fixed (reward-shaping baseline r − λ_init·c)"`
	Tokenizer    string   `flag:"tokenizer" help:"tokenizer file (default: found next to --model)"`
	Data         []string `flag:"data" alias:"train-data" help:"prompt datasets, comma-separated or repeated: [format:[proportion:]]path files or token-shard directories"`
	EvalData     []string `flag:"eval-data" help:"held-out prompts for the before/after summary, same forms as --data (default: a hash split of --data)"`
	EvalRatio    float64  `flag:"eval-ratio" alias:"eval-split" help:"fraction of --data prompts held out when --eval-data is empty"`
	EvalMax      int      `flag:"eval-max" alias:"eval-size" help:"held-out prompts evaluated before and after training (0: no evaluation)"`
	EvalBatch    int      `flag:"eval-batch-size" help:"generation batch size of the evaluation"`
	PTXData      []string `flag:"ptx-data" help:"supervised data mixed into the actor update (PTX, the reference's --ptx_datasets), same forms as --data; empty: no PTX"`
	PTXMaxLength int      `flag:"ptx-max-length" help:"PTX examples are cut to this many tokens (the reference's max_length)"`
	Out          string   `flag:"out" alias:"output" help:"output dir: config.yaml, metrics.jsonl, perf.jsonl, plots/, checkpoints/, policy/, summary.json"`
	Backend      string   `flag:"backend" help:"GoMLX backend (default $SAFERLHF_BACKEND or go)"`
	Resume       bool     `flag:"resume" help:"continue from the newest intact checkpoint in --out"`
	Force        bool     `flag:"force" help:"replace a previous run of this command in --out (never other files)"`
	AllowChange  bool     `flag:"allow-config-change" help:"with --resume: accept changed training settings or frozen models"`
	SaveEvery    int      `flag:"save-every" alias:"checkpoint-every" help:"rollout batches between checkpoints (0: only at the end)"`
	LoRARank     int      `flag:"lora-rank" help:"LoRA rank for actor and critics (0: full fine-tuning)"`
	LoRAAlpha    float64  `flag:"lora-alpha" help:"LoRA alpha"`
	LoRATargets  []string `flag:"lora-targets" help:"LoRA target modules"`
	DType        string   `flag:"dtype" help:"compute dtype bf16 or f32 (default: bf16 on xla:*, f32 otherwise)"`
	SaveDType    string   `flag:"save-dtype" help:"dtype of the saved policy: f32, bf16 or f16 (default: the --model checkpoint's torch_dtype, f32 when unknown)"`
	MicroBatch   int      `flag:"micro-batch-size" help:"rows per update micro-batch, gradients accumulated in graph (0: the whole --train-batch-size)"`
	DistTimeout  string   `flag:"dist-timeout" group:"dist" help:"how long a collective waits for the slowest rank of a data-parallel run before every rank stops with an error naming it (a Go duration: 90s, 10m, 1h); raise it when rank 0's checkpoint writes take longer"`
	ZeroStage    int      `flag:"zero-stage" group:"dist" help:"optimiser-state sharding across the ranks of a data-parallel run: 0 (every rank holds all AdamW moments) or 1 (ZeRO-1: each rank holds and updates its share; same trajectory and checkpoints)"`
	GPUMemFrac   float64  `flag:"gpu-memory-fraction" help:"fraction of GPU memory the XLA client may use (0: the plugin's default)"`
	Collectives  string   `flag:"collectives" group:"dist" help:"how gradients are averaged across ranks: tcp (through the host and the TCP rendezvous), nccl (NCCL on the GPU buffers, no host copy; needs --backend xla:cuda and libnccl.so.2) or auto (nccl when both are there, else tcp)"`
}

// DefaultRunConfig returns the defaults of a run of alg (its own DefaultConfig).
func DefaultRunConfig(alg Algorithm) RunConfig {
	lambda := map[Algorithm]string{PPOLag: "sgd", PPOLagPID: "pid", Fixed: "fixed"}[alg]
	return RunConfig{Config: DefaultConfig(alg), Lambda: lambda, EvalRatio: 0.1, EvalMax: 64, EvalBatch: 32,
		PTXMaxLength: 512, SaveEvery: 10, Collectives: string(collectives.Auto), DistTimeout: dist.DefaultTimeout.String(), LoRAAlpha: 16, LoRATargets: []string{"q_proj", "v_proj"}}
}

// AlgorithmOf returns the algorithm a --lambda mode selects.
func AlgorithmOf(lambda string) (Algorithm, error) {
	switch lambda {
	case "sgd":
		return PPOLag, nil
	case "pid":
		return PPOLagPID, nil
	case "fixed":
		return Fixed, nil
	}
	return "", fmt.Errorf("--lambda %q: want sgd, pid or fixed", lambda)
}

// Validate checks the run before any work; errors name the flags.
func (c *RunConfig) Validate() error {
	var ck config.Checker
	ck.Check(c.Model != "", "--model is required (the SFT policy; --actor is its old name)")
	ck.Required("reward-model", c.RewardModel)
	if c.UsesCost() {
		ck.Required("cost-model", c.CostModel)
	}
	ck.Check(len(c.Data) > 0, "--data is required")
	ck.Required("out", c.Out)
	ck.Add(collectives.CheckFlags(c.ZeroStage, c.Collectives, c.DistTimeout, c.Backend))
	ck.Check(len(c.PTXData) == 0 || c.PTXCoeff > 0, "--ptx-data needs --ptx-coeff > 0, got %v", c.PTXCoeff)
	ck.Check(c.EvalRatio >= 0 && c.EvalRatio < 1, "--eval-ratio must be in [0, 1), got %v", c.EvalRatio)
	ck.NonNegativeInt("eval-max", c.EvalMax)
	ck.PositiveInt("eval-batch-size", c.EvalBatch)
	if c.DType != "" {
		_, err := model.ParseDType(c.DType)
		ck.Check(err == nil, "--dtype: %v", err)
	}
	_, err := model.SaveDType(c.SaveDType)
	ck.Check(err == nil, "--save-dtype: %v", err)
	ck.NonNegativeInt("micro-batch-size", c.MicroBatch)
	ck.Check(c.MicroBatch == 0 || c.TrainBatchSize%c.MicroBatch == 0, "--micro-batch-size %d must divide --train-batch-size %d", c.MicroBatch, c.TrainBatchSize)
	ck.Add((backend.Options{MemoryFraction: c.GPUMemFrac}).Check(c.Backend))
	ck.Check(c.PTXMaxLength >= 2, "--ptx-max-length must be >= 2, got %d", c.PTXMaxLength)
	ck.NonNegativeInt("save-every", c.SaveEvery)
	ck.NonNegativeInt("lora-rank", c.LoRARank)
	ck.Check(c.RLMath != RLMathGraph || backend.Resolve(c.Backend) != backend.Native,
		"--rl-math graph needs a GoMLX backend (go or xla:*), not --backend native")
	if c.LoRARank > 0 {
		ck.Positive("lora-alpha", c.LoRAAlpha)
	}
	if err := c.Config.Validate(); err != nil {
		return joinErr(ck.Err(), err)
	}
	return ck.Err()
}

func joinErr(a, b error) error {
	if a == nil {
		return b
	}
	return fmt.Errorf("%w\n%w", a, b)
}

// Summary is summary.json: the held-out evaluation before and after training.
type Summary struct {
	Before *EvalResult `json:"before,omitempty"`
	After  *EvalResult `json:"after,omitempty"`
}

// RunResult is what Run reports.
type RunResult struct {
	Summary
	Steps     int      // rollout batches of the run
	Seconds   float64  // training time
	PolicyDir string   // the trained actor
	Plots     []string // PNG files
	WithCost  bool
}

// Run trains a policy as configured (c must be valid): it loads the models and prompts, checks
// them against each other, evaluates the SFT policy on the held-out prompts, runs the loop, saves
// the policy and plots, and evaluates again. Progress and notes go to progress (nil: none).
// ready, if not nil, runs once the inputs are loaded and checked, before anything is written
// (the caller records the settings there): a bad input leaves no output behind.
//
// Started by a launcher (torchrun, srun, mpirun, a JobSet: see dist.FromEnv), it runs as one rank
// of a data-parallel run (dist.go): ready runs on rank 0 only, and rank 0 writes every output.
func Run(ctx context.Context, c RunConfig, progress io.Writer, ready func() error) (*RunResult, error) {
	env, err := dist.FromEnv(nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Algorithm, err)
	}
	if err := checkRankShares(c, env.WorldSize); err != nil { // before waiting for the other ranks
		return nil, err
	}
	timeout, err := dist.ParseTimeout(c.DistTimeout)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Algorithm, err)
	}
	comm, _, err := dist.Join(ctx, dist.Options{Log: progress, Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Algorithm, err)
	}
	defer comm.Close()
	return runRanked(ctx, c, progress, ready, comm)
}

// checkRankShares refuses batch sizes that do not split evenly over world ranks and into the
// updates' gradient-accumulation micro-batches.
func checkRankShares(c RunConfig, world int) error {
	if err := checkShares(&c.Config, world); err != nil {
		return err
	}
	if world > 1 && c.MicroBatch > 0 && (c.TrainBatchSize/world)%c.MicroBatch != 0 {
		return fmt.Errorf("ppo: --micro-batch-size %d must divide each rank's share of --train-batch-size, %d/%d", c.MicroBatch, c.TrainBatchSize, world)
	}
	// With --num-return-sequences > 1 a --prompt-batch-size that --train-batch-size does not divide
	// leaves a smaller last rollout micro-batch; the updates split it into the same number of
	// gradient-accumulation micro-batches, which must divide it (else the run fails after its
	// first generation).
	world = max(world, 1)
	if share := c.TrainBatchSize / world; c.MicroBatch > 0 && c.MicroBatch < share {
		accum := share / c.MicroBatch
		if last := c.PromptBatchSize % c.TrainBatchSize / world; last > 0 && last%accum != 0 {
			return fmt.Errorf("ppo: the last micro-batch of --prompt-batch-size %d (%d prompts per rank) does not split into the %d gradient-accumulation micro-batches of --micro-batch-size %d",
				c.PromptBatchSize, last, accum, c.MicroBatch)
		}
	}
	return nil
}

// runRanked is Run as one rank of comm.
func runRanked(ctx context.Context, c RunConfig, progress io.Writer, ready func() error, comm dist.Communicator) (*RunResult, error) {
	primary := comm.Rank() == 0
	if progress == nil || !primary {
		progress = io.Discard
	}
	name := string(c.Algorithm)
	if len(c.PTXData) == 0 {
		c.PTXCoeff = 0 // as the reference: PTX only with PTX data
	}
	if err := checkRankShares(c, comm.Size()); err != nil {
		return nil, err
	}
	// --rl-math: graph by default on xla:*; host is stored as "" so that checkpoints written
	// before the flag existed resume.
	if c.RLMath == "" {
		c.RLMath = DefaultRLMath(backend.Resolve(c.Backend))
	}
	if c.RLMath == RLMathHost {
		c.RLMath = ""
	}
	in, err := loadRunInputs(c, comm)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "%s: %d training prompts, %d held-out prompts (%d cut to their last %d tokens)\n",
		name, len(in.train), len(in.held), in.truncated, c.MaxPromptTokens)
	mode, err := collectives.ParseMode(c.Collectives)
	if err != nil {
		return nil, err
	}
	timeout, err := dist.ParseTimeout(c.DistTimeout)
	if err != nil {
		return nil, err
	}
	red, why, err := collectives.Select(ctx, mode, c.Backend, in.nets.Backend, comm, timeout)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if red != nil {
		defer red.Close()
		in.nets.Reducer = red
	}
	if comm.Size() > 1 || red != nil {
		fmt.Fprintf(progress, "%s: gradient averaging: %s\n", name, why)
	}
	nets, err := NewGraphNets(in.nets, c.ClipRangeRatio, c.ClipRangeValue)
	if err != nil {
		return nil, err
	}
	if err := dist.OnRank0(ctx, comm, ready); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.Out, 0o755); err != nil {
		return nil, err
	}
	res := &RunResult{WithCost: c.UsesCost()}
	summaryPath := filepath.Join(c.Out, "summary.json")
	if c.Resume {
		if b, err := os.ReadFile(summaryPath); err == nil {
			_ = json.Unmarshal(b, &res.Summary)
		}
	}
	evaluate := func(stage string) (*EvalResult, error) {
		t0 := time.Now()
		r, rs, err := EvaluateRanked(nets, in.held, c.EvalBatch, c.Seed^0xe7a1, comm)
		if err != nil {
			return nil, err
		}
		if !primary {
			return &r, nil
		}
		if err := writeSamples(filepath.Join(c.Out, "samples_"+stage+".txt"), in.tok, rs); err != nil {
			return nil, err
		}
		fmt.Fprintf(progress, "%s: %s (%d held-out prompts, %.0fs): reward %.3f cost %.3f harmful %.3f\n",
			name, stage, r.N, time.Since(t0).Seconds(), r.RewardMean, r.CostMean, r.HarmfulRate)
		return &r, nil
	}
	withEval := c.EvalMax > 0 && len(in.held) > 0
	if withEval && res.Before == nil {
		if res.Before, err = evaluate("before"); err != nil {
			return nil, err
		}
		if err := writeJSONOn(primary, summaryPath, res.Summary); err != nil {
			return nil, err
		}
	}
	opt, err := checkpointOptions(c, in)
	if err != nil {
		return nil, err
	}
	opt.Progress = progress
	opt.Comm = comm
	if c.RLMath == RLMathGraph {
		if backend.IsNative(in.nets.Backend) {
			return nil, fmt.Errorf("ppo: --rl-math graph needs a GoMLX backend (go or xla:*), not --backend native")
		}
		opt.RLMath = NewRLMath(in.nets.Backend)
		defer opt.RLMath.Close()
	}
	tr, err := NewTrainer(c.Config, opt, nets, in.prompts, in.ptx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	runErr := tr.Run(ctx)
	if cerr := tr.Close(); runErr == nil {
		runErr = cerr
	}
	if runErr != nil {
		return nil, runErr
	}
	res.Steps, res.Seconds = tr.TotalSteps(), time.Since(t0).Seconds()
	res.PolicyDir = filepath.Join(c.Out, "policy")
	if primary {
		if err := nets.SavePolicy(res.PolicyDir); err != nil {
			return nil, err
		}
		if res.Plots, err = Plot(c.Out); err != nil {
			fmt.Fprintf(progress, "%s: plots: %v\n", name, err)
		}
	}
	if withEval {
		if res.After, err = evaluate("after"); err != nil {
			return nil, err
		}
		if err := writeJSONOn(primary, summaryPath, res.Summary); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// NonTrajectoryKeys are the RunConfig keys a resumed run may change freely: where output goes,
// how often it is saved, the held-out evaluation around training, and the resume switches.
var NonTrajectoryKeys = []string{"Out", "Backend", "Resume", "Force", "AllowChange", "SaveEvery", "EvalMax", "EvalBatch", "SaveDType", "GPUMemFrac", "ZeroStage", "Collectives", "DistTimeout"}

// checkpointOptions returns the trainer's checkpoint settings for c: the frozen models by path and
// hash, the tokenizer stored in each checkpoint, and the run config compared on resume.
func checkpointOptions(c RunConfig, in *runInputs) (Options, error) {
	opt := Options{OutDir: c.Out, CheckpointEvery: c.SaveEvery, Resume: c.Resume, AllowConfigChange: c.AllowChange,
		Config: c, ConfigIgnore: NonTrajectoryKeys}
	frozen := []struct{ role, path string }{{"reference actor", c.Model}, {"reward model", c.RewardModel}}
	if c.UsesCost() {
		frozen = append(frozen, struct{ role, path string }{"cost model", c.CostModel})
	}
	for _, m := range frozen {
		f, err := checkpoint.FrozenModel(m.role, m.path)
		if err != nil {
			return opt, err
		}
		opt.Frozen = append(opt.Frozen, f)
	}
	tb, err := os.ReadFile(in.tokPath)
	if err != nil {
		return opt, err
	}
	opt.CheckpointFiles = map[string][]byte{filepath.Base(in.tokPath): tb}
	return opt, nil
}

// Format prints the before/after table (cost columns only when a cost model was used).
func (r *RunResult) Format(w io.Writer) {
	if r.Before == nil || r.After == nil {
		return
	}
	fmt.Fprintf(w, "\nheld-out prompts: %d\n", r.After.N)
	fmt.Fprintf(w, "%-16s %12s %12s %14s %10s\n", "policy", "reward_mean", "cost_mean", "harmful_rate", "gen_len")
	for _, row := range []struct {
		name string
		r    *EvalResult
	}{{"before (SFT)", r.Before}, {"after (RL)", r.After}} {
		cost, harm := "n/a", "n/a"
		if r.WithCost {
			cost, harm = fmt.Sprintf("%.4f", row.r.CostMean), fmt.Sprintf("%.3f", row.r.HarmfulRate)
		}
		fmt.Fprintf(w, "%-16s %12.4f %12s %14s %10.1f\n", row.name, row.r.RewardMean, cost, harm, row.r.GenLenMean)
	}
}

// writeJSONOn writes v on the rank that writes outputs (primary) only.
func writeJSONOn(primary bool, path string, v any) error {
	if !primary {
		return nil
	}
	return writeJSON(path, v)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteBytes(path, append(b, '\n'), 0o644)
}

// HeldOutPrompts returns the held-out prompts of c (at most --eval-max) as Run evaluates them.
func HeldOutPrompts(c RunConfig, tok tokenizer.Tokenizer) ([][]int32, error) {
	_, held, _, err := loadPrompts(tok, c.Data, c.EvalData, c.EvalRatio, c.MaxPromptTokens)
	if len(held) > c.EvalMax {
		held = held[:c.EvalMax]
	}
	return held, err
}

// runInputs is everything Run loads before training.
type runInputs struct {
	tok         tokenizer.Tokenizer
	tokPath     string
	train, held [][]int32
	truncated   int
	prompts     *PromptSet
	ptx         *PTXSet
	nets        GraphNetsConfig
}

// loadRunInputs opens the tokenizer, prompts, PTX data and models, and checks that they fit
// each other (vocabularies, score heads, lengths within every model's context).
func loadRunInputs(c RunConfig, comm dist.Communicator) (*runInputs, error) {
	in := &runInputs{}
	tokPath, err := model.ResolveTokenizer(c.Tokenizer, c.Model)
	if err != nil {
		return nil, err
	}
	in.tokPath = tokPath
	if in.tok, err = tokenizer.Load(tokPath); err != nil {
		return nil, err
	}
	if in.train, in.held, in.truncated, err = loadPrompts(in.tok, c.Data, c.EvalData, c.EvalRatio, c.MaxPromptTokens); err != nil {
		return nil, err
	}
	if len(in.held) > c.EvalMax {
		in.held = in.held[:c.EvalMax]
	}
	if in.prompts, err = NewPromptSet(in.train, c.Seed); err != nil {
		return nil, err
	}
	if len(c.PTXData) > 0 {
		if in.ptx, err = loadPTX(in.tok, c.PTXData, c.PTXMaxLength, c.Seed); err != nil {
			return nil, err
		}
	}
	be, err := backend.NewWithOptions(c.Backend, backend.Options{MemoryFraction: c.GPUMemFrac})
	if err != nil {
		return nil, err
	}
	dtName := c.DType
	if dtName == "" {
		dtName = model.DefaultDType(backend.Resolve(c.Backend))
	}
	dt, err := model.ParseDType(dtName)
	if err != nil {
		return nil, err
	}
	gc := GraphNetsConfig{Backend: be, DType: dt, WithCostCritic: c.UsesCostCritic(), Pad: in.tok.Pad(), EOS: in.tok.EOS(),
		MaxNewTokens: c.MaxNewTokens, MaxPromptTokens: c.MaxPromptTokens, Temperature: c.Temperature,
		TopP: c.TopP, TopK: c.TopK, RepPenalty: c.RepetitionPenalty, ActorWeightDecay: c.ActorWeightDecay,
		CriticWeightDecay: c.CriticWeightDecay, GradClip: c.GradClip,
		SaveModel: func(dir string, cfg *model.Config, ts []safetensors.Tensor) error {
			if c.SaveDType != "" {
				sc := *cfg
				sc.TorchDType = c.SaveDType
				cfg = &sc
			}
			return model.SaveTensorsWithTokenizer(dir, cfg, ts, tokPath)
		},
		MicroBatchSize: c.MicroBatch, TrainBatchSize: c.TrainBatchSize / comm.Size(), Comm: comm, ZeroStage: c.ZeroStage,
		LoRA:     model.LoRAConfig{Rank: c.LoRARank, Alpha: c.LoRAAlpha, Targets: c.LoRATargets},
		LoRASeed: c.Seed}
	// load reads a model and checks it against the tokenizer whose ids it reads: the actor's, or
	// own (non-nil) for a score model on another vocabulary, which reads re-tokenised text and
	// keeps BOS and the last tokens of a row longer than its context (retokScorer).
	load := func(flag, path string, score bool, own tokenizer.Tokenizer) (ModelSpec, error) {
		cfg, w, err := model.LoadAny(path)
		if err != nil {
			return ModelSpec{}, fmt.Errorf("--%s: %w", flag, err)
		}
		if score && cfg.ScoreDim != 1 {
			return ModelSpec{}, fmt.Errorf("--%s %s: a score model needs a 1-dimensional score head (got score_dim %d): train it with train-rm or train-cm", flag, path, cfg.ScoreDim)
		}
		if own != nil {
			if own.VocabSize() > cfg.VocabSize {
				return ModelSpec{}, fmt.Errorf("--%s %s: vocabulary %d is smaller than its tokenizer's %d", flag, path, cfg.VocabSize, own.VocabSize())
			}
			return ModelSpec{Cfg: cfg, Weights: w}, nil
		}
		if in.tok.VocabSize() > cfg.VocabSize {
			return ModelSpec{}, fmt.Errorf("--%s %s: vocabulary %d is smaller than the tokenizer's %d (%s)", flag, path, cfg.VocabSize, in.tok.VocabSize(), tokPath)
		}
		if err := cfg.CheckContext(fmt.Sprintf("--max-prompt-tokens %d + --max-new-tokens %d", c.MaxPromptTokens, c.MaxNewTokens),
			c.MaxPromptTokens+c.MaxNewTokens, "--"+flag+" "+path); err != nil {
			return ModelSpec{}, err
		}
		return ModelSpec{Cfg: cfg, Weights: w}, nil
	}
	if gc.Actor, err = load("model", c.Model, false, nil); err != nil {
		return nil, err
	}
	if err := model.CheckPolicy(gc.Actor.Cfg, c.Model); err != nil {
		return nil, fmt.Errorf("--model: %w", err)
	}
	gc.Tokenizer = in.tok
	// other is a score model's own tokenizer when it differs from the actor's (else nil).
	other := func(t tokenizer.Tokenizer) tokenizer.Tokenizer {
		if t == nil || tokenizer.Same(t, in.tok) {
			return nil
		}
		return t
	}
	if gc.RewardTokenizer, err = scoreTokenizer("reward-model", c.RewardModel); err != nil {
		return nil, err
	}
	if gc.Reward, err = load("reward-model", c.RewardModel, true, other(gc.RewardTokenizer)); err != nil {
		return nil, err
	}
	if gc.RewardCritic, err = criticSpec(c, "reward", c.RewardCritic, gc.RewardTokenizer, in.tok, gc.Actor, c.Seed, load); err != nil {
		return nil, err
	}
	if c.UsesCost() {
		if gc.CostTokenizer, err = scoreTokenizer("cost-model", c.CostModel); err != nil {
			return nil, err
		}
		if gc.Cost, err = load("cost-model", c.CostModel, true, other(gc.CostTokenizer)); err != nil {
			return nil, err
		}
		if c.UsesCostCritic() {
			if gc.CostCritic, err = criticSpec(c, "cost", c.CostCritic, gc.CostTokenizer, in.tok, gc.Actor, c.Seed+1, load); err != nil {
				return nil, err
			}
		}
	}
	if c.NormalizeReward {
		if gc.RewardNorm, err = ScoreNormalizer(gc.Reward.Cfg, kernels.Affine); err != nil {
			return nil, fmt.Errorf("--normalize-reward: --reward-model %s: %w", c.RewardModel, err)
		}
	}
	if c.NormalizeCost && c.UsesCost() {
		if gc.CostNorm, err = ScoreNormalizer(gc.Cost.Cfg, kernels.Scale); err != nil {
			return nil, fmt.Errorf("--normalize-cost: --cost-model %s: %w", c.CostModel, err)
		}
	}
	in.nets = gc
	return in, nil
}

// scoreTokenizer loads the tokenizer saved beside a score model (model.OwnTokenizer): a score
// model without one is refused, not fed the actor's ids.
func scoreTokenizer(flag, modelPath string) (tokenizer.Tokenizer, error) {
	p, err := model.OwnTokenizer(modelPath)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	tok, err := tokenizer.Load(p)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", flag, err)
	}
	return tok, nil
}

// criticSpec returns a critic's initialisation: path when given (an LM gets a fresh score head),
// else nil (the score model) when the score model shares the actor's tokenizer, else the actor
// with a fresh score head, since a critic must read the actor's ids (the reference refuses a
// critic whose tokenizer differs).
func criticSpec(c RunConfig, which, path string, scoreTok, actorTok tokenizer.Tokenizer, actor ModelSpec, seed uint64,
	load func(flag, path string, score bool, own tokenizer.Tokenizer) (ModelSpec, error)) (*ModelSpec, error) {
	var s ModelSpec
	switch {
	case path != "":
		var err error
		if s, err = load(which+"-critic", path, false, nil); err != nil {
			return nil, err
		}
		if s.Cfg.VocabSize != actor.Cfg.VocabSize {
			return nil, fmt.Errorf("--%s-critic %s: vocabulary %d differs from the actor's %d (a critic reads the actor's ids)",
				which, path, s.Cfg.VocabSize, actor.Cfg.VocabSize)
		}
	case scoreTok == nil || tokenizer.Same(scoreTok, actorTok):
		return nil, nil
	default:
		fmt.Fprintf(os.Stderr, "%s: the %s model's tokenizer differs from the actor's: its scores are computed on re-tokenised text, and the %s critic starts from the actor with a fresh score head (set --%s-critic to choose)\n",
			c.Algorithm, which, which, which)
		cfg := *actor.Cfg
		s = ModelSpec{Cfg: &cfg, Weights: model.Weights{}}
		for k, v := range actor.Weights {
			s.Weights[k] = v
		}
	}
	if s.Cfg.ScoreDim == 0 {
		delete(s.Weights, model.NameLMHead)
		model.InitScoreHead(s.Cfg, s.Weights, 1, seed)
		s.Cfg.Architecture = "LlamaForScore"
	}
	return &s, nil
}
