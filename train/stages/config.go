package stages

import (
	"flag"
	"fmt"
	"io"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/collectives"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
)

// Config holds the settings of one training stage (SFT, reward model, cost model).
// The flag tags are the CLI flag names (config.Register), which are also the keys
// of a --config file; Defaults holds the one default of each.
type Config struct {
	Model        string    `json:"model" flag:"model" help:"base model: llama2.c .bin file or HF directory (SFT output for train-rm/train-cm)"`
	Tokenizer    string    `json:"tokenizer" flag:"tokenizer" help:"tokenizer file (default: the tokenizer.model, tok512.bin or tokenizer.bin beside the model whose size fits its vocabulary)"`
	Data         []string  `json:"data" flag:"data" help:"training data, comma-separated or repeated: raw files [format:[proportion:]]path (hh-rlhf jsonl.gz, PKU-SafeRLHF json, alpaca, sharegpt, ...) or token-shard directories (saferlhf data pack/demo)"`
	EvalData     []string  `json:"eval-data" flag:"eval-data" help:"held-out data, same forms as --data (default: a seeded split of --data)"`
	EvalRatio    float64   `json:"eval-ratio" flag:"eval-ratio" help:"held-out fraction of --data when --eval-data is empty (split by prompt)"`
	SwapSplit    bool      `json:"swap-split" flag:"swap-split" help:"train on the held-out side of the --eval-ratio split and hold out its training side: a judge that never saw the data of a model trained with the same --data, --eval-ratio and --seed"`
	EvalMax      int       `json:"eval-max" flag:"eval-max" help:"at most this many held-out examples (0: all)"`
	MaxTrain     int       `json:"max-train" flag:"max-train" help:"at most this many training examples (0: all)"`
	Out          string    `json:"out" flag:"out" help:"output directory (config.yaml, metrics.jsonl, plots, checkpoints/, model/)"`
	Backend      string    `json:"backend" flag:"backend" help:"backend: native (the C engine: trains and evaluates on the CPU; the default when built with cgo), go (pure-Go GoMLX), go:ops_sequential, xla:cuda, ...; default $SAFERLHF_BACKEND, else native or go"`
	GPUMemFrac   float64   `json:"gpu-memory-fraction" flag:"gpu-memory-fraction" help:"fraction of GPU memory the XLA client may use (0: the plugin's default)"`
	Collectives  string    `json:"collectives" flag:"collectives" help:"how gradients are averaged across ranks: tcp (through the host and the TCP rendezvous), nccl (NCCL on the GPU buffers, no host copy; needs --backend xla:cuda and libnccl.so.2) or auto (nccl when both are there, else tcp)"`
	Epochs       int       `json:"epochs" flag:"epochs" help:"passes over the training data"`
	Steps        int       `json:"max-steps" flag:"max-steps" alias:"steps" help:"cap on optimizer steps (0: --epochs decide)"`
	BatchSize    int       `json:"batch-size" flag:"batch-size" help:"micro-batch size, global over all ranks of a data-parallel run (pairs for train-rm/train-cm)"`
	Accumulation int       `json:"grad-accum" flag:"grad-accum" help:"gradient accumulation: micro-batches per optimizer step"`
	DistTimeout  string    `json:"dist-timeout" flag:"dist-timeout" help:"how long a collective waits for the slowest rank of a data-parallel run before every rank stops with an error naming it (a Go duration: 90s, 10m, 1h); raise it when rank 0's checkpoint writes take longer"`
	ZeroStage    int       `json:"zero-stage" flag:"zero-stage" help:"optimiser-state sharding across the ranks of a data-parallel run: 0 (every rank holds all AdamW moments) or 1 (ZeRO-1: each rank holds and updates its share; same trajectory and checkpoints)"`
	MaxLength    int       `json:"max-length" flag:"max-length" help:"sequence width in tokens; longer examples are truncated"`
	Truncate     string    `json:"truncate" flag:"truncate" help:"right (reference: cut the end) or prompt-left (drop the oldest prompt tokens first)"`
	LR           float64   `json:"lr" flag:"lr" help:"peak learning rate"`
	Scheduler    string    `json:"lr-scheduler" flag:"lr-scheduler" help:"cosine, linear, constant or constant_with_warmup (constant ignores --warmup-ratio, as HF's does)"`
	Warmup       float64   `json:"warmup-ratio" flag:"warmup-ratio" help:"fraction of the steps with linear warmup"`
	WeightDecay  float64   `json:"weight-decay" flag:"weight-decay" help:"AdamW decoupled weight decay (not on norms and biases)"`
	ClipNorm     float64   `json:"max-grad-norm" flag:"max-grad-norm" help:"global gradient-norm clip (negative: off)"`
	EvalEvery    int       `json:"eval-every" flag:"eval-every" help:"held-out evaluation every N steps (0: at the end only)"`
	CkptEvery    int       `json:"save-every" flag:"save-every" help:"checkpoint every N steps (0: at the end only)"`
	KeepCkpts    int       `json:"keep-checkpoints" flag:"keep-checkpoints" help:"checkpoints to keep"`
	Seed         uint64    `json:"seed" flag:"seed" help:"seed of the data split, shuffling and the score head"`
	Resume       bool      `json:"resume" flag:"resume" help:"continue from the newest intact checkpoint in --out"`
	Force        bool      `json:"force" flag:"force" help:"replace a previous run of this stage in --out (never other files)"`
	AllowChange  bool      `json:"allow-config-change" flag:"allow-config-change" help:"with --resume: accept changed training settings"`
	LossType     string    `json:"loss-type" flag:"loss-type" group:"score" help:"sequence-wise or token-wise (spec §4)"`
	Reg          float64   `json:"regularization" flag:"regularization" group:"score" help:"L2 regularisation of the scores"`
	SignWeight   float64   `json:"sign-weight" flag:"sign-weight" group:"cost" help:"weight of the cost model's safety-sign term (reference: 1)"`
	Init         string    `json:"init" flag:"init" help:"pretrained (start from --model's weights) or scratch (--model's architecture with fresh weights, its vocabulary sized to --tokenizer's; --model may then be an HF config.json)"`
	TrainLayers  string    `json:"train-layers" flag:"train-layers" help:"weights to train: all, head (score head only), top-N (head, final norm, last N layers) or no-embed"`
	DType        string    `json:"dtype" flag:"dtype" help:"compute dtype bf16 or f32 (default: bf16 on xla:*, f32 otherwise); trained weights stay float32 masters"`
	SaveDType    string    `json:"save-dtype" flag:"save-dtype" help:"dtype of the saved model: f32, bf16 or f16 (default: the --model checkpoint's torch_dtype, f32 when unknown)"`
	Progress     io.Writer `json:"-"`
	// Prepare, if set, runs once the model, tokenizer and data have loaded and before
	// anything is written to Out (the command's output guard and config.yaml), so a run
	// that fails on its inputs leaves no output behind; in a data-parallel run only rank 0 runs it and
	// the other ranks wait for it and share its error.
	Prepare func() error `json:"-"`
}

// Stage names a training stage.
type Stage string

// The stages.
const (
	SFT Stage = "sft"
	RM  Stage = "train-rm"
	CM  Stage = "train-cm"
)

// Defaults returns the reference's script settings for the stage (spec §4–6), with the
// sequence width, batch and epochs scaled for CPU; raise --lr for tiny models.
func Defaults(stage Stage) Config {
	c := Config{Collectives: string(collectives.Auto), DistTimeout: dist.DefaultTimeout.String(), EvalRatio: 0.05, Epochs: 2, BatchSize: 16, Accumulation: 1, MaxLength: 512, Truncate: "right",
		LR: 2e-5, Scheduler: "cosine", Warmup: 0.03, WeightDecay: 0.1, ClipNorm: 1, KeepCkpts: 2, Seed: 42,
		LossType: "sequence-wise", Reg: 0.001, SignWeight: 1, Init: "pretrained", TrainLayers: "all"}
	if stage == SFT {
		c.Epochs, c.BatchSize, c.Accumulation, c.WeightDecay = 3, 4, 8, 0
	}
	return c
}

// RegisterFlags defines the stage's flags on fs, writing into c (whose current values are the defaults).
func (c *Config) RegisterFlags(fs *flag.FlagSet, stage Stage) {
	if stage == SFT {
		config.Register(fs, c)
		return
	}
	if stage == CM {
		config.Register(fs, c, "score", "cost")
		return
	}
	config.Register(fs, c, "score")
}

// Validate checks every value before any work starts; the errors (all of them)
// name the flags.
func (c *Config) Validate(stage Stage) error {
	var ck config.Checker
	ck.Finite(c)
	ck.Required("model", c.Model)
	ck.Check(len(c.Data) > 0, "--data is required")
	ck.Required("out", c.Out)
	ck.Check(c.Epochs >= 0 && c.Steps >= 0 && (c.Epochs > 0 || c.Steps > 0),
		"--epochs %d / --max-steps %d: need --epochs > 0 or --max-steps > 0 (and neither negative)", c.Epochs, c.Steps)
	ck.Check(c.BatchSize >= 1, "--batch-size %d must be >= 1", c.BatchSize)
	ck.Check(c.Accumulation >= 1, "--grad-accum %d must be >= 1", c.Accumulation)
	ck.Add(collectives.CheckFlags(c.ZeroStage, c.Collectives, c.DistTimeout, c.Backend))
	ck.Check(c.MaxLength >= 8, "--max-length %d must be >= 8", c.MaxLength)
	ck.Check(c.LR > 0 && c.LR <= 1, "--lr %g must lie in (0, 1]", c.LR)
	ck.Check(c.Warmup >= 0 && c.Warmup < 1, "--warmup-ratio %g must lie in [0, 1)", c.Warmup)
	ck.Check(c.WeightDecay >= 0, "--weight-decay %g must be >= 0", c.WeightDecay)
	ck.Check(c.ClipNorm != 0, "--max-grad-norm %g must be > 0 (negative disables clipping)", c.ClipNorm)
	ck.Check(c.EvalRatio >= 0 && c.EvalRatio < 1, "--eval-ratio %g must lie in [0, 1)", c.EvalRatio)
	ck.Check(!c.SwapSplit || (c.EvalRatio > 0 && len(c.EvalData) == 0), "--swap-split needs --eval-ratio > 0 and no --eval-data")
	for _, f := range []struct {
		name string
		v    int
	}{{"eval-max", c.EvalMax}, {"max-train", c.MaxTrain}, {"eval-every", c.EvalEvery}, {"save-every", c.CkptEvery}} {
		ck.NonNegativeInt(f.name, f.v)
	}
	ck.Add((backend.Options{MemoryFraction: c.GPUMemFrac}).Check(c.Backend))
	ck.Check(c.KeepCkpts >= 1, "--keep-checkpoints %d must be >= 1", c.KeepCkpts)
	ck.OneOf("truncate", c.Truncate, "right", "prompt-left")
	ck.OneOf("lr-scheduler", c.Scheduler, optim.Cosine, optim.Linear, optim.Constant, optim.ConstantWithWarmup)
	if stage != SFT && stage != DPO {
		ck.OneOf("loss-type", c.LossType, "sequence-wise", "token-wise")
		ck.Check(c.Reg >= 0, "--regularization %g must be >= 0", c.Reg)
	}
	ck.Check(c.SignWeight >= 0, "--sign-weight %g must be >= 0", c.SignWeight)
	if c.DType != "" {
		_, err := model.ParseDType(c.DType)
		ck.Check(err == nil, "--dtype: %v", err)
	}
	_, err := model.SaveDType(c.SaveDType)
	ck.Check(err == nil, "--save-dtype: %v", err)
	ck.OneOf("init", c.Init, "pretrained", "scratch")
	_, err = layerFilter(&model.Config{NumLayers: 1 << 20}, c.TrainLayers)
	ck.Add(err) // it names --train-layers
	if err := ck.Err(); err != nil {
		return fmt.Errorf("%s: %w", stage, err)
	}
	return nil
}
