package stages

import (
	"flag"
	"fmt"
	"io"
	"math"
	"strings"
)

// Config holds the settings of one training stage (SFT, reward model, cost model).
// JSON keys equal the CLI flag names, so a config file and the flags are the same thing.
type Config struct {
	Model        string    `json:"model"`         // base model: llama2.c .bin or HF dir
	Tokenizer    string    `json:"tokenizer"`     // tokenizer file (default: found beside the model)
	Data         []string  `json:"data"`          // training files (format auto-detected)
	EvalData     []string  `json:"eval-data"`     // held-out files (default: a split of Data)
	EvalRatio    float64   `json:"eval-ratio"`    // held-out fraction of Data when EvalData is empty
	EvalMax      int       `json:"eval-max"`      // at most this many held-out examples (0: all)
	MaxTrain     int       `json:"max-train"`     // at most this many training examples (0: all)
	Out          string    `json:"out"`           // output directory
	Backend      string    `json:"backend"`       // GoMLX backend spec
	Epochs       int       `json:"epochs"`        // passes over the training data
	Steps        int       `json:"steps"`         // cap on optimizer steps (0: epochs decide)
	BatchSize    int       `json:"batch-size"`    // micro-batch size (pairs for RM/CM)
	Accumulation int       `json:"grad-accum"`    // micro-batches per optimizer step
	MaxLength    int       `json:"max-length"`    // sequence width T (longer examples are truncated)
	Truncate     string    `json:"truncate"`      // "right" (reference) or "prompt-left" (drop oldest prompt tokens first)
	LR           float64   `json:"lr"`            // peak learning rate
	Scheduler    string    `json:"lr-scheduler"`  // cosine, linear, constant, constant_with_warmup
	Warmup       float64   `json:"warmup-ratio"`  // warmup fraction of the steps
	WeightDecay  float64   `json:"weight-decay"`  // AdamW decoupled weight decay
	ClipNorm     float64   `json:"max-grad-norm"` // global gradient-norm clip (<0: off)
	EvalEvery    int       `json:"eval-every"`    // held-out evaluation every N steps (0: end only)
	CkptEvery    int       `json:"save-every"`    // checkpoint every N steps (0: end only)
	KeepCkpts    int       `json:"keep-checkpoints"`
	Seed         uint64    `json:"seed"`
	Resume       bool      `json:"resume"`
	LossType     string    `json:"loss-type"`      // RM/CM: sequence-wise or token-wise
	Reg          float64   `json:"regularization"` // RM/CM: L2 on scores
	Progress     io.Writer `json:"-"`
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
	c := Config{EvalRatio: 0.05, Epochs: 2, BatchSize: 16, Accumulation: 1, MaxLength: 512, Truncate: "right",
		LR: 2e-5, Scheduler: "cosine", Warmup: 0.03, WeightDecay: 0.1, ClipNorm: 1, KeepCkpts: 2, Seed: 42,
		LossType: "sequence-wise", Reg: 0.001}
	if stage == SFT {
		c.Epochs, c.BatchSize, c.Accumulation, c.WeightDecay = 3, 4, 8, 0
	}
	return c
}

// listFlag is a comma-separated (or repeated) list flag.
type listFlag struct{ p *[]string }

func (l listFlag) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l listFlag) Set(s string) error {
	*l.p = nil
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			*l.p = append(*l.p, x)
		}
	}
	return nil
}

// RegisterFlags defines the stage's flags on fs, writing into c (whose current values are the defaults).
func (c *Config) RegisterFlags(fs *flag.FlagSet, stage Stage) {
	fs.StringVar(&c.Model, "model", c.Model, "base model: llama2.c .bin file or HF directory (SFT output for RM/CM)")
	fs.StringVar(&c.Tokenizer, "tokenizer", c.Tokenizer, "tokenizer file (default: tokenizer.model/tok512.bin beside the model)")
	fs.Var(listFlag{&c.Data}, "data", "training data, comma-separated: raw files ([format:[proportion:]]path: hh-rlhf jsonl.gz, PKU-SafeRLHF json, alpaca, sharegpt, ...) or token-shard directories (saferlhf data pack/demo)")
	fs.Var(listFlag{&c.EvalData}, "eval-data", "held-out data, same forms as --data (default: a seeded split of --data)")
	fs.Float64Var(&c.EvalRatio, "eval-ratio", c.EvalRatio, "held-out fraction of --data when --eval-data is empty")
	fs.IntVar(&c.EvalMax, "eval-max", c.EvalMax, "at most this many held-out examples (0: all)")
	fs.IntVar(&c.MaxTrain, "max-train", c.MaxTrain, "at most this many training examples (0: all)")
	fs.StringVar(&c.Out, "out", c.Out, "output directory (metrics.jsonl, plots, checkpoints/, model/)")
	fs.StringVar(&c.Backend, "backend", c.Backend, "GoMLX backend (go, go:ops_sequential, xla:cuda, ...)")
	fs.IntVar(&c.Epochs, "epochs", c.Epochs, "passes over the training data")
	fs.IntVar(&c.Steps, "steps", c.Steps, "cap on optimizer steps (0: --epochs decide)")
	fs.IntVar(&c.BatchSize, "batch-size", c.BatchSize, "micro-batch size (pairs for train-rm/train-cm)")
	fs.IntVar(&c.Accumulation, "grad-accum", c.Accumulation, "gradient accumulation: micro-batches per optimizer step")
	fs.IntVar(&c.MaxLength, "max-length", c.MaxLength, "sequence width in tokens; longer examples are truncated")
	fs.StringVar(&c.Truncate, "truncate", c.Truncate, "right (reference: cut the end) or prompt-left (drop the oldest prompt tokens first)")
	fs.Float64Var(&c.LR, "lr", c.LR, "peak learning rate")
	fs.StringVar(&c.Scheduler, "lr-scheduler", c.Scheduler, "cosine, linear, constant or constant_with_warmup")
	fs.Float64Var(&c.Warmup, "warmup-ratio", c.Warmup, "fraction of the steps with linear warmup")
	fs.Float64Var(&c.WeightDecay, "weight-decay", c.WeightDecay, "AdamW decoupled weight decay (not on norms and biases)")
	fs.Float64Var(&c.ClipNorm, "max-grad-norm", c.ClipNorm, "global gradient-norm clip (negative: off)")
	fs.IntVar(&c.EvalEvery, "eval-every", c.EvalEvery, "held-out evaluation every N steps (0: at the end only)")
	fs.IntVar(&c.CkptEvery, "save-every", c.CkptEvery, "checkpoint every N steps (0: at the end only)")
	fs.IntVar(&c.KeepCkpts, "keep-checkpoints", c.KeepCkpts, "checkpoints to keep")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the data split, shuffling and the score head")
	fs.BoolVar(&c.Resume, "resume", c.Resume, "continue from the latest checkpoint in --out")
	if stage != SFT {
		fs.StringVar(&c.LossType, "loss-type", c.LossType, "sequence-wise or token-wise (spec §4)")
		fs.Float64Var(&c.Reg, "regularization", c.Reg, "L2 regularisation of the scores")
	}
}

// Validate checks every value before any work starts.
func (c *Config) Validate(stage Stage) error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%s: "+f, append([]any{stage}, a...)...) }
	finite := func(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
	switch {
	case c.Model == "":
		return bad("--model is required")
	case len(c.Data) == 0:
		return bad("--data is required")
	case c.Out == "":
		return bad("--out is required")
	case c.Epochs < 0 || c.Steps < 0 || (c.Epochs == 0 && c.Steps == 0):
		return bad("--epochs %d / --steps %d: need epochs > 0 or steps > 0 (and neither negative)", c.Epochs, c.Steps)
	case c.BatchSize < 1:
		return bad("--batch-size %d must be >= 1", c.BatchSize)
	case c.Accumulation < 1:
		return bad("--grad-accum %d must be >= 1", c.Accumulation)
	case c.MaxLength < 8:
		return bad("--max-length %d must be >= 8", c.MaxLength)
	case !finite(c.LR) || c.LR <= 0 || c.LR > 1:
		return bad("--lr %g must lie in (0, 1]", c.LR)
	case !finite(c.Warmup) || c.Warmup < 0 || c.Warmup >= 1:
		return bad("--warmup-ratio %g must lie in [0, 1)", c.Warmup)
	case !finite(c.WeightDecay) || c.WeightDecay < 0:
		return bad("--weight-decay %g must be >= 0", c.WeightDecay)
	case !finite(c.ClipNorm) || c.ClipNorm == 0:
		return bad("--max-grad-norm %g must be > 0 (negative disables clipping)", c.ClipNorm)
	case !finite(c.EvalRatio) || c.EvalRatio < 0 || c.EvalRatio >= 1:
		return bad("--eval-ratio %g must lie in [0, 1)", c.EvalRatio)
	case c.EvalMax < 0 || c.MaxTrain < 0 || c.EvalEvery < 0 || c.CkptEvery < 0 || c.KeepCkpts < 1:
		return bad("--eval-max, --max-train, --eval-every, --save-every must be >= 0 and --keep-checkpoints >= 1")
	case c.Truncate != "right" && c.Truncate != "prompt-left":
		return bad("--truncate %q: want right or prompt-left", c.Truncate)
	case stage != SFT && c.LossType != "sequence-wise" && c.LossType != "token-wise":
		return bad("--loss-type %q: want sequence-wise or token-wise", c.LossType)
	case stage != SFT && (!finite(c.Reg) || c.Reg < 0):
		return bad("--regularization %g must be >= 0", c.Reg)
	}
	switch c.Scheduler {
	case "cosine", "linear", "constant", "constant_with_warmup":
	default:
		return bad("--lr-scheduler %q: want cosine, linear, constant or constant_with_warmup", c.Scheduler)
	}
	return nil
}
