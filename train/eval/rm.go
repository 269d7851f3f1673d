package eval

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/prefs"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/model"
)

// Scorer computes the end scores (spec §3: the score at the last non-pad token) of a
// score model — reward or cost — on batches of token sequences. As the reference's
// ScoreModelMixin, a model whose config.json sets do_normalize returns normalised scores.
type Scorer struct {
	Cfg  *model.Config
	Tok  tokenizer.Tokenizer
	exec *context.Exec       // the GoMLX end-score graph; nil on the native engine
	nat  *llama.Model        // the native engine's model (backend "native"); nil on GoMLX
	norm *kernels.Normalizer // nil unless the config sets do_normalize
	// Batch is the number of rows per graph call; MaxLen the widest sequence.
	Batch, MaxLen int
}

// NewScorer loads a score model (an HF dir written by train-rm/train-cm) and its
// tokenizer (explicit path, else the one saved beside the model).
func NewScorer(be backends.Backend, modelDir, tokPath string, batch, maxLen int) (*Scorer, error) {
	cfg, w, err := model.LoadAny(modelDir)
	if err != nil {
		return nil, err
	}
	if cfg.ScoreDim != 1 {
		return nil, fmt.Errorf("model %s has no score head (score_dim %d): train it with train-rm or train-cm", modelDir, cfg.ScoreDim)
	}
	if err := cfg.CheckContext("--max-length", maxLen, "score model "+modelDir); err != nil { // as training refuses it
		return nil, err
	}
	if tokPath, err = model.ResolveTokenizer(tokPath, modelDir); err != nil {
		return nil, err
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return nil, err
	}
	sc := &Scorer{Cfg: cfg, Tok: tok, Batch: batch, MaxLen: maxLen}
	if backend.IsNative(be) {
		if sc.nat, err = llama.New(cfg, w, 1); err != nil {
			return nil, err
		}
	} else {
		ctx := context.New()
		if err := model.SetWeights(ctx.In("score"), cfg, w); err != nil {
			return nil, err
		}
		sc.exec, err = context.NewExec(be, ctx.In("score").Reuse(), func(ctx *context.Context, ids, mask *graph.Node) *graph.Node {
			end, _ := model.EndScores(ctx, cfg, ids, mask)
			return end
		})
		if err != nil {
			return nil, err
		}
	}
	if batch < 1 || maxLen < 2 {
		return nil, fmt.Errorf("scorer: batch %d and max length %d must be >= 1 and >= 2", batch, maxLen)
	}
	norm, err := scoreNormalizer(cfg.Score)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", modelDir, err)
	}
	sc.norm = norm
	return sc, nil
}

// endScores returns the end score of each row of a [b, t] batch.
func (s *Scorer) endScores(ids []int32, mask []float32, b, t int) ([]float32, error) {
	if s.nat != nil {
		tp, err := s.nat.Infer(b, t, ids, mask)
		if err != nil {
			return nil, err
		}
		scores, err := s.nat.Scores(tp)
		if err != nil {
			return nil, err
		}
		return llama.EndScores(b, t, mask, scores), nil
	}
	res, err := s.exec.Exec(tensors.FromFlatDataAndDimensions(ids, b, t), tensors.FromFlatDataAndDimensions(mask, b, t))
	if err != nil {
		return nil, err
	}
	return tensors.MustCopyFlatData[float32](res[0]), nil
}

// scoreNormalizer returns the normaliser the reference's score model applies to its outputs:
// nil unless do_normalize is set; else score_type's function (reward: affine, cost: scale,
// critic: identity) with the saved mean and var (0 and 1, the reference's initial buffers,
// when none were saved).
func scoreNormalizer(sc model.ScoreConfig) (*kernels.Normalizer, error) {
	if !sc.DoNormalize {
		return nil, nil
	}
	fn := map[string]kernels.NormalizeFunction{"": kernels.Affine, "reward": kernels.Affine, "cost": kernels.Scale,
		"critic": kernels.Identity}[sc.Type]
	if fn == "" {
		return nil, fmt.Errorf("do_normalize: score_type %q: want reward, cost or critic", sc.Type)
	}
	n, err := kernels.NewNormalizer(kernels.IdentityNormalizer, fn, 0)
	if err != nil {
		return nil, err
	}
	if len(sc.Mean) > 0 {
		if len(sc.Mean) != 1 || len(sc.Var) != 1 {
			return nil, fmt.Errorf("do_normalize: normaliser mean %v var %v: want one entry each", sc.Mean, sc.Var)
		}
		n.Mean, n.Var = sc.Mean[0], sc.Var[0]
	}
	if !(n.Var >= 0) || math.IsInf(n.Var, 0) || math.IsNaN(n.Mean) || math.IsInf(n.Mean, 0) {
		return nil, fmt.Errorf("do_normalize: normaliser mean %g var %g: want finite, var >= 0", n.Mean, n.Var)
	}
	return n, nil
}

// Score returns the end score of each sequence (right-padded in batches; sequences
// longer than MaxLen keep their first token and their last MaxLen−1 tokens, so the
// scored end is theirs).
func (s *Scorer) Score(seqs [][]int32) (out []float64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("scorer: %v", r)
		}
	}()
	pad := s.Tok.Pad()
	B := min(s.Batch, len(seqs)) // a batch never wider than the data: --batch-size 1e8 ran out of memory
	for start := 0; start < len(seqs); start += B {
		rows := seqs[start:min(len(seqs), start+B)]
		width := 2
		for _, r := range rows {
			width = max(width, len(r))
		}
		T := min(s.MaxLen, (width+15)/16*16)
		ids := make([]int32, B*T)
		mask := make([]float32, B*T)
		for i := 0; i < B; i++ {
			var r []int32
			if i < len(rows) {
				r = rows[i]
			} else {
				r = []int32{s.Tok.BOS()} // dummy row
			}
			if len(r) > T {
				r = append(r[:1:1], r[len(r)-(T-1):]...)
			}
			for t := 0; t < T; t++ {
				if t < len(r) {
					ids[i*T+t], mask[i*T+t] = r[t], 1
				} else {
					ids[i*T+t] = pad
				}
			}
		}
		vals, err := s.endScores(ids, mask, B, T)
		if err != nil {
			return nil, fmt.Errorf("scorer: %w", err)
		}
		for i := range rows {
			v := float64(vals[i])
			if s.norm != nil {
				v = s.norm.Normalize(v)
			}
			out = append(out, v)
		}
	}
	return out, nil
}

// Options configures EvalRM and EvalCM.
type Options struct {
	Model     string   `flag:"model" help:"score model directory (train-rm / train-cm output: OUT/model)"`
	Tokenizer string   `flag:"tokenizer" help:"tokenizer file (default: the one saved in the model directory)"`
	Data      []string `flag:"data" help:"preference data as for training: [format:[proportion:]]path files or token-shard directories, comma-separated or repeated"`
	MaxLength int      `flag:"max-length" help:"sequence width (use the training value)"`
	Truncate  string   `flag:"truncate" help:"right or prompt-left (use the training value)"`
	Batch     int      `flag:"batch-size" help:"sequences per forward pass"`
	Limit     int      `flag:"limit" help:"at most this many samples (0: all)"`
	Seed      uint64   `flag:"seed" help:"seed of dataset sub-sampling and of --eval-ratio's split (use the training --seed)"`
	// HeldOutRatio > 0 scores only the held-out part of Data as a training stage
	// split it (same --eval-ratio, --eval-max and --seed as the training run).
	HeldOutRatio float64 `flag:"eval-ratio" alias:"held-out-ratio" help:"score only the held-out split of --data that training made with this --eval-ratio (0: all of --data)"`
	HeldOutMax   int     `flag:"eval-max" alias:"held-out-max" help:"the training run's --eval-max (with --eval-ratio)"`
	SwapSplit    bool    `flag:"swap-split" help:"the training run used --swap-split (with --eval-ratio): score the other side"`
	Out          string  `flag:"out" help:"directory for the JSON report, scores and plots"`
	Force        bool    `flag:"force" help:"replace a previous report of this command in --out"`
}

// DefaultOptions returns eval-rm's and eval-cm's defaults (the training stages' widths).
func DefaultOptions() Options {
	return Options{MaxLength: 512, Truncate: "right", Batch: 32, Seed: 42}
}

// Validate checks the options before any work; errors name the flags.
func (o *Options) Validate() error {
	var ck config.Checker
	ck.Required("model", o.Model)
	ck.Check(len(o.Data) > 0, "--data is required")
	ck.Check(o.MaxLength >= 8, "--max-length must be >= 8, got %d", o.MaxLength)
	ck.PositiveInt("batch-size", o.Batch)
	ck.NonNegativeInt("limit", o.Limit)
	ck.NonNegativeInt("eval-max", o.HeldOutMax)
	ck.Check(o.HeldOutRatio >= 0 && o.HeldOutRatio < 1, "--eval-ratio must be in [0, 1), got %v", o.HeldOutRatio)
	ck.OneOf("truncate", o.Truncate, "right", "prompt-left")
	return ck.Err()
}

// RMReport is eval-rm's result (spec §8, evaluate/reward.py).
type RMReport struct {
	Model      string     `json:"model"`
	Data       []string   `json:"data"`
	Pairs      int        `json:"pairs"`
	Skipped    int        `json:"skipped"`
	Accuracy   float64    `json:"accuracy"` // frac(r_better > r_worse)
	AccuracyCI [2]float64 `json:"accuracy_ci95"`
	Mean       float64    `json:"score_mean"` // over all 2N end scores
	Std        float64    `json:"score_std"`
	BetterMean float64    `json:"better_mean"`
	WorseMean  float64    `json:"worse_mean"`
	// BySource breaks the accuracy down by source file.
	BySource []Group `json:"by_source,omitempty"`
}

// loadPairs reads and tokenizes pairs (hi = better for RM, unsafer for CM) and names the
// source of each.
func loadPairs(o Options, tok tokenizer.Tokenizer, cost bool) (pairs []prefs.Pair, sources []string, skipped int, err error) {
	if ps, sk, ok, err := prefs.FromShards(o.Data, tok.Info(), o.MaxLength, cost); ok || err != nil {
		if err == nil && o.Limit > 0 && len(ps) > o.Limit {
			ps = ps[:o.Limit]
		}
		if err == nil && len(ps) == 0 {
			err = fmt.Errorf("no usable pairs in %v", o.Data)
		}
		sources = make([]string, len(ps))
		for i := range sources {
			sources[i] = sourceName("")
		}
		return ps, sources, sk, err
	}
	raw, err := loadSamples(o)
	if err != nil {
		return nil, nil, 0, err
	}
	for _, s := range raw {
		if !s.HasOther {
			skipped++
			continue
		}
		p, ok, err := prefs.Build(s, tok, o.MaxLength, o.Truncate, cost)
		if err != nil {
			return nil, nil, 0, err
		}
		if !ok {
			skipped++
			continue
		}
		pairs = append(pairs, p)
		sources = append(sources, sourceName(s.File))
	}
	if len(pairs) == 0 {
		return nil, nil, skipped, fmt.Errorf("no usable pairs in %v", o.Data)
	}
	return pairs, sources, skipped, nil
}

// loadSamples reads the data, keeps the training run's held-out part if asked, and applies Limit.
func loadSamples(o Options) ([]datasets.RawSample, error) {
	raw, err := datasets.LoadRaw(o.Data, o.Seed)
	if err != nil {
		return nil, err
	}
	if o.HeldOutRatio > 0 {
		ei, _ := datasets.SplitRaw(raw, o.HeldOutRatio, o.HeldOutMax, 0, o.Seed, o.SwapSplit)
		held := make([]datasets.RawSample, len(ei))
		for i, j := range ei {
			held[i] = raw[j]
		}
		raw = held
	}
	if o.Limit > 0 && len(raw) > o.Limit {
		raw = raw[:o.Limit]
	}
	return raw, nil
}

func scorePairs(sc *Scorer, pairs []prefs.Pair) (hi, lo []float64, err error) {
	seqs := make([][]int32, 0, 2*len(pairs))
	for _, p := range pairs {
		seqs = append(seqs, p.Hi)
	}
	for _, p := range pairs {
		seqs = append(seqs, p.Lo)
	}
	all, err := sc.Score(seqs)
	if err != nil {
		return nil, nil, err
	}
	return all[:len(pairs)], all[len(pairs):], nil
}

// EvalRM scores preference pairs with a reward model: accuracy and score statistics.
func EvalRM(be backends.Backend, o Options) (*RMReport, error) {
	sc, err := NewScorer(be, o.Model, o.Tokenizer, o.Batch, o.MaxLength)
	if err != nil {
		return nil, err
	}
	pairs, sources, skipped, err := loadPairs(o, sc.Tok, false)
	if err != nil {
		return nil, err
	}
	better, worse, err := scorePairs(sc, pairs)
	if err != nil {
		return nil, err
	}
	r := &RMReport{Model: o.Model, Data: o.Data, Pairs: len(pairs), Skipped: skipped}
	k := 0
	bySrc := groups{}
	for i := range better {
		right := better[i] > worse[i]
		if right {
			k++
		}
		bySrc.pair(sources[i], right)
		bySrc.response(sources[i], better[i], false, false)
		bySrc.response(sources[i], worse[i], false, false)
	}
	r.BySource = bySrc.list()
	r.Accuracy, r.AccuracyCI = float64(k)/float64(len(pairs)), Wilson(k, len(pairs))
	r.Mean, r.Std = meanStd(append(append([]float64{}, better...), worse...))
	r.BetterMean, _ = meanStd(better)
	r.WorseMean, _ = meanStd(worse)
	if o.Out != "" {
		if err := writeJSON(filepath.Join(o.Out, "eval-rm.json"), r); err != nil {
			return r, err
		}
		if err := writeJSON(filepath.Join(o.Out, "rm-scores.json"), map[string][]float64{"better": better, "worse": worse}); err != nil {
			return r, err
		}
	}
	return r, nil
}

// Format writes the human-readable report.
func (r *RMReport) Format(w io.Writer) error {
	_, err := fmt.Fprintf(w, "reward model %s on %d pairs (%d skipped)\n  accuracy   %.4f  (95%% CI %.4f–%.4f)\n  score      mean %.4f  std %.4f\n  better     mean %.4f\n  worse      mean %.4f\n",
		r.Model, r.Pairs, r.Skipped, r.Accuracy, r.AccuracyCI[0], r.AccuracyCI[1], r.Mean, r.Std, r.BetterMean, r.WorseMean)
	if err == nil {
		err = formatGroups(w, "source", r.BySource, false)
	}
	return err
}

// writeJSON writes v as indented JSON atomically, creating the directory.
func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return atomicfile.WriteBytes(path, append(b, '\n'), 0o644)
}
