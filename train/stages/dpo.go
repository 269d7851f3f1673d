package stages

import (
	stdctx "context"
	"flag"
	"fmt"
	"github.com/saferlhf/saferlhf/data/prefs"
	"github.com/saferlhf/saferlhf/data/shards"
	"math"
	"math/rand/v2"
	"os"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
	"github.com/saferlhf/saferlhf/train/trainer"
	"github.com/schollz/progressbar/v3"
)

// DPO is the direct-preference-optimisation stage (spec §2, algorithms/dpo).
const DPO Stage = "dpo"

// DPOConfig is a stage Config plus DPO's own settings. The frozen reference model is
// the initial --model (as in the reference, which loads model_name_or_path twice).
type DPOConfig struct {
	Config
	Beta       float64 `json:"scale-coeff" flag:"scale-coeff" help:"DPO β: loss −log σ(β·[(log π − log π_ref)(better) − (log π − log π_ref)(worse)])"`
	Preference string  `json:"preference" flag:"preference" help:"which answer of a pair is preferred: better (helpfulness, the reference) or safer (harmlessness)"`
}

// DPODefaults returns the reference's scripts/dpo.sh settings: 2 epochs, batch 16,
// lr 1e-6 cosine with 3% warmup, weight decay 0.05, max length 512, β (scale_coeff) 0.1,
// PreferenceDataset (better).
func DPODefaults() DPOConfig {
	c := Defaults(RM) // the score-model settings of Config (loss type, regularization) are unused
	c.LR, c.WeightDecay = 1e-6, 0.05
	return DPOConfig{Config: c, Beta: 0.1, Preference: "better"}
}

// RegisterFlags defines the DPO flags on fs (the stage flags plus --scale-coeff and --preference).
func (c *DPOConfig) RegisterFlags(fs *flag.FlagSet) {
	config.Register(fs, c) // the stage flags without the score-model ones, --scale-coeff, --preference
}

// Validate checks every value before any work starts.
func (c *DPOConfig) Validate() error {
	var ck config.Checker
	ck.Positive("scale-coeff", c.Beta)
	ck.OneOf("preference", c.Preference, "better", "safer")
	if err := ck.Err(); err != nil {
		return fmt.Errorf("dpo: %w", err)
	}
	return c.Config.Validate(DPO)
}

// dpoExample is one preference pair for DPO: the preferred (0) and rejected (1) rows,
// their first differing index and the frozen reference model's log-probabilities.
type dpoExample struct {
	ids [2][]int32
	div int
	ref [2]refLogProb
}

// refLogProb splits a row's reference log-probability sum over the DPO span
// (spec §2 quirk: the token slice [d, end] is applied to the shifted log-probs, whose
// entry t is log p(token t+1)): core sums entries [d, end−1] (tokens d+1..end), tail is
// entry end, the log-prob of the pad token after the row, which the reference counts
// only when the row is shorter than the widest row of its batch (the collator pads to it).
type refLogProb struct{ core, tail float64 }

// newDPOExample checks a pair as the reference does (not identical; the first
// differing index lies within both rows) and reports false for a pair it would reject.
func newDPOExample(p PairExample) (dpoExample, bool) {
	d := DivergeIndex(p.Hi, p.Lo)
	if d < 0 || d > len(p.Hi)-1 || d > len(p.Lo)-1 {
		return dpoExample{}, false
	}
	return dpoExample{ids: [2][]int32{p.Hi, p.Lo}, div: d}, true
}

// dpoSpanEnd is the last shifted-log-prob index the reference sums for a row of n
// tokens in a batch whose widest row has width tokens: min(n−1, width−2).
func dpoSpanEnd(n, width int) int { return min(n-1, width-2) }

// rowRefLogProb sums a row's log-probs lp (entry t = log p(token t+1)) into core and tail.
func rowRefLogProb(lp []float64, div, n int) refLogProb {
	var r refLogProb
	for t := div; t <= n-2; t++ {
		r.core += lp[t]
	}
	if n-1 < len(lp) {
		r.tail = lp[n-1]
	}
	return r
}

// dpoBatch lays out B pairs as 2B rows (preferred rows, then rejected rows) of width T:
// ids [2B,T], mask [2B,T], span [2B,T−1] (the reference's summed entries) and the
// reference log-prob sums ref [2B] over the same spans.
func dpoBatch(ex []dpoExample, T int, pad int32) (ids []int32, mask, span, ref []float32, tokens int) {
	return dpoRows(ex, dpoWidth(ex), T, pad)
}

// dpoWidth is the widest sequence of a batch (the reference's padded width).
func dpoWidth(ex []dpoExample) int {
	width := 0
	for _, e := range ex {
		width = max(width, len(e.ids[0]), len(e.ids[1]))
	}
	return width
}

// dpoRows is dpoBatch for some rows of a batch whose widest sequence has width
// tokens (a data-parallel rank's share keeps the whole batch's span quirk).
func dpoRows(ex []dpoExample, width, T int, pad int32) (ids []int32, mask, span, ref []float32, tokens int) {
	B := len(ex)
	ids = make([]int32, 2*B*T)
	mask = make([]float32, 2*B*T)
	span = make([]float32, 2*B*(T-1))
	ref = make([]float32, 2*B)
	for r, e := range ex {
		for h := range 2 {
			row, seq := h*B+r, e.ids[h]
			for t := 0; t < T; t++ {
				if t < len(seq) {
					ids[row*T+t], mask[row*T+t] = seq[t], 1
				} else {
					ids[row*T+t] = pad
				}
			}
			end := dpoSpanEnd(len(seq), width)
			for t := e.div; t <= end; t++ {
				span[row*(T-1)+t] = 1
			}
			sum := e.ref[h].core
			if end == len(seq)-1 {
				sum += e.ref[h].tail
			}
			ref[row] = float32(sum)
			tokens += len(seq)
		}
	}
	return ids, mask, span, ref, tokens
}

// dpoSource batches DPO pairs (shuffled by seed and epoch when shuffle is set).
type dpoSource struct {
	ex      []dpoExample
	b, t    int
	pad     int32
	seed    uint64
	shuffle bool
	part    rankPart
}

func (s *dpoSource) Len() int { return len(s.ex) / s.b }

func (s *dpoSource) Batch(epoch, index int) (trainer.Batch, error) {
	var perm []int
	if s.shuffle {
		perm = rand.New(rand.NewPCG(s.seed, uint64(epoch))).Perm(len(s.ex))
	}
	ex := make([]dpoExample, s.b)
	for r := range ex {
		i := index*s.b + r
		if perm != nil {
			i = perm[i]
		}
		ex[r] = s.ex[i]
	}
	B, T := s.part.rows(s.b), s.t
	first := s.part.first(s.b)
	ids, mask, span, ref, tokens := dpoRows(ex[first:first+B], dpoWidth(ex), T, s.pad)
	return trainer.Batch{Inputs: []any{
		tensors.FromFlatDataAndDimensions(ids, 2*B, T),
		tensors.FromFlatDataAndDimensions(mask, 2*B, T),
		tensors.FromFlatDataAndDimensions(span, 2*B, T-1),
		tensors.FromFlatDataAndDimensions(ref, 2*B),
	}, Tokens: tokens, Weight: float64(B)}, nil
}

// DPOOut holds the outputs of DPOLoss; all are scalars (means over the B pairs).
type DPOOut struct {
	Loss *graph.Node
	// Reward is mean β·(Δ_better + Δ_worse), Better and Worse the means of β·Δ, where
	// Δ = log π − log π_ref summed over the span; Margin is mean β·(Δ_better − Δ_worse)
	// and Accuracy mean 1[β·Δ_better > β·Δ_worse] (the reference's logged values).
	Reward, Better, Worse, Margin, Accuracy *graph.Node
}

// DPOLoss is the reference's DPO loss (algorithms/dpo/trainer.py, spec §2) on 2B rows
// (preferred rows then rejected rows): logp [2B,T−1] the policy's shifted per-token
// log-probs, span [2B,T−1] the summed entries, ref [2B] the frozen reference model's
// sums over the same entries. loss = mean −log σ(β·(Δ_better − Δ_worse)).
func DPOLoss(logp, span, ref *graph.Node, beta float64) DPOOut {
	ratio := graph.Sub(graph.ReduceSum(graph.Mul(logp, span), 1), ref) // [2B]
	B := ratio.Shape().Dim(0) / 2
	// Split into halves with selectors (Slice has no gradient on the Go backend).
	two := graph.Reshape(ratio, 2, B)
	sel := func(v [][]float32) *graph.Node {
		s := graph.Const(ratio.Graph(), v)
		if s.DType() != ratio.DType() {
			s = graph.ConvertDType(s, ratio.DType())
		}
		return graph.MulScalar(graph.ReduceSum(graph.Mul(two, s), 0), beta)
	}
	hi, lo := sel([][]float32{{1}, {0}}), sel([][]float32{{0}, {1}})
	margin := graph.Sub(hi, lo)
	return DPOOut{
		Loss:     graph.ReduceAllMean(negLogSigmoid(margin)),
		Reward:   graph.ReduceAllMean(graph.Add(hi, lo)),
		Better:   graph.ReduceAllMean(hi),
		Worse:    graph.ReduceAllMean(lo),
		Margin:   graph.ReduceAllMean(margin),
		Accuracy: graph.ReduceAllMean(graph.ConvertDType(graph.GreaterThan(hi, lo), ratio.DType())),
	}
}

// dpoLossFn is the Stepper loss over dpoSource batches.
func dpoLossFn(mcfg *model.Config, beta float64) trainer.LossFn {
	return func(ctx *context.Context, in []*graph.Node) (*graph.Node, map[string]*graph.Node) {
		out := DPOLoss(model.TokenLogProbs(ctx, mcfg, in[0], in[1]), in[2], in[3], beta)
		return out.Loss, map[string]*graph.Node{
			"reward": out.Reward, "better_sample_reward": out.Better, "worse_sample_reward": out.Worse,
			"reward_margin": out.Margin, "reward_accuracy": out.Accuracy,
		}
	}
}

// RunDPO trains a policy with DPO as configured, writing everything under cfg.Out
// (metrics.jsonl, plots, checkpoints/, model/, result.json). The reference model's
// log-probabilities are computed once, before training, from the initial weights:
// it is frozen, so they equal the reference's per-step forward passes, and a resumed
// run recomputes the same values.
//
// Started by a launcher it runs data-parallel as Run does (every rank computes
// the reference log-probabilities of all pairs, then trains on its share).
func RunDPO(ctx stdctx.Context, cfg DPOConfig) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	comm, err := connect(ctx, DPO, cfg.Config)
	if err != nil {
		return nil, err
	}
	defer comm.Close()
	return runDPORanked(ctx, cfg, comm)
}

// runDPORanked is RunDPO as one rank of comm.
func runDPORanked(ctx stdctx.Context, cfg DPOConfig, comm dist.Communicator) (*Result, error) {
	t0 := time.Now()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	be, err := backend.NewWithOptions(cfg.Backend, backend.Options{MemoryFraction: cfg.GPUMemFrac})
	if err != nil {
		return nil, err
	}
	if err := model.EnableFastGradients(); err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	mcfg, w, err := model.LoadAny(cfg.Model)
	if err == nil {
		err = mcfg.CheckContext("--max-length", cfg.MaxLength, "--model "+cfg.Model)
	}
	if err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	if err := model.CheckPolicy(mcfg, cfg.Model); err != nil {
		return nil, fmt.Errorf("dpo: --model: %w", err)
	}
	tokPath, err := model.ResolveTokenizer(cfg.Tokenizer, cfg.Model)
	if err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	tok, err := model.LoadTokenizer(tokPath, mcfg)
	if err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	tokBytes, err := os.ReadFile(tokPath)
	if err != nil {
		return nil, err
	}
	res := &Result{Stage: DPO}
	tr, ev, err := dpoExamples(cfg, tok, res)
	if err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	mctx, reducer, closeReducer, err := startRun(ctx, DPO, cfg.Config, be, comm, res)
	if err != nil {
		return nil, err
	}
	defer closeReducer()
	if err := model.SetWeights(mctx.InAbsPath(modelScope), mcfg, w); err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	if err := referenceLogProbs(be, mctx, mcfg, cfg, tok.Pad(), tr, ev); err != nil {
		return nil, fmt.Errorf("dpo: reference model: %w", err)
	}
	train := &dpoSource{ex: tr, b: cfg.BatchSize, t: cfg.MaxLength, pad: tok.Pad(), seed: cfg.Seed, shuffle: true}
	eval := &dpoSource{ex: ev, b: cfg.BatchSize, t: cfg.MaxLength, pad: tok.Pad()}
	if _, _, err := checkedSources(cfg.Config, res, len(tr), "pairs", train, eval); err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	if err := shardTrain(train, comm); err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	stepper, err := newSteps(be, mctx, mcfg, trainer.Config{
		Scope: modelScope, Loss: dpoLossFn(mcfg, cfg.Beta), WeightDecay: cfg.WeightDecay,
		ClipNorm: cfg.ClipNorm, Accumulation: cfg.Accumulation, Comm: comm, ZeroStage: cfg.ZeroStage, Reducer: reducer,
	}, dpoNative(cfg.Beta), true)
	if err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	total := trainer.TotalSteps(cfg.Epochs, cfg.Steps, train.Len(), cfg.Accumulation)
	if total < 1 {
		return nil, fmt.Errorf("dpo: %d training pairs make no optimizer step at batch %d × accumulation %d",
			res.Train, cfg.BatchSize, cfg.Accumulation)
	}
	sched, err := optim.NewSchedule(cfg.Scheduler, cfg.LR, optim.WarmupSteps(cfg.Warmup, total), total)
	if err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	loop, err := modelLoop(modelLoopSpec{kind: string(DPO), cfg: cfg.Config, meta: cfg, stepper: stepper, train: train, eval: eval,
		lr: sched.LR, mctx: mctx, mcfg: mcfg, tokPath: tokPath, tokBytes: tokBytes})
	if err != nil {
		return nil, fmt.Errorf("dpo: %w", err)
	}
	return runLoop(ctx, loop, comm, cfg.Out, res, t0)
}

// dpoExamples reads the pairs (raw files or shard directories), orders each by
// --preference and splits them into training and held-out examples.
func dpoExamples(cfg DPOConfig, tok tokenizer.Tokenizer, res *Result) (tr, ev []dpoExample, err error) {
	safer := cfg.Preference == "safer"
	build := func(p PairExample, ok bool, err error) (dpoExample, bool, error) {
		if err != nil || !ok {
			return dpoExample{}, false, err
		}
		e, ok := newDPOExample(p)
		return e, ok, nil
	}
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
		kind := RM // preference shards (better/worse); safety-preference shards for --preference safer
		if safer {
			kind = CM
		}
		all, err := readShardExamples(cfg.Data, kind, tok.Info())
		if err != nil {
			return nil, nil, err
		}
		var evEx []datasets.Example
		if len(cfg.EvalData) > 0 {
			if evEx, err = readShardExamples(cfg.EvalData, kind, tok.Info()); err != nil {
				return nil, nil, err
			}
		}
		trEx, evEx := splitTrainEval(cfg.Config, all, evEx, func(all []datasets.Example, ratio float64, evalMax, trainMax int, seed uint64) ([]int, []int) {
			return datasets.Split(len(all), ratio, evalMax, trainMax, seed)
		})
		return buildExamples(res, trEx, evEx, func(e datasets.Example) (dpoExample, bool, error) {
			p, ok := prefs.FromShard(e, cfg.MaxLength, safer)
			if safer { // pairFromShard orders a cost pair unsafer-first
				p.Hi, p.Lo = p.Lo, p.Hi
			}
			return build(p, ok, nil)
		})
	}
	raw, err := datasets.LoadRaw(cfg.Data, cfg.Seed)
	if err != nil {
		return nil, nil, err
	}
	var rawEval []datasets.RawSample
	if len(cfg.EvalData) > 0 {
		if rawEval, err = datasets.LoadRaw(cfg.EvalData, cfg.Seed); err != nil {
			return nil, nil, err
		}
	}
	raw, rawEval = splitTrainEval(cfg.Config, raw, rawEval, rawSplit(cfg.Config))
	return buildExamples(res, raw, rawEval, func(s datasets.RawSample) (dpoExample, bool, error) {
		if safer {
			s.Better = s.Safer
		}
		return build(prefs.Build(s, tok, cfg.MaxLength, cfg.Truncate, false))
	})
}

// referenceLogProbs fills the reference log-prob sums of every example from the
// model weights now in mctx (the initial, frozen reference), in batches of
// cfg.BatchSize pairs of width cfg.MaxLength, on the native engine when be is native.
func referenceLogProbs(be backends.Backend, mctx *context.Context, mcfg *model.Config, cfg DPOConfig, pad int32, sets ...[]dpoExample) error {
	B, T := cfg.BatchSize, cfg.MaxLength
	var logProbs func(ids []int32, mask []float32) ([]float32, error)
	if backend.IsNative(be) {
		m, _, err := llama.FromContext(mctx.InAbsPath(modelScope), mcfg)
		if err != nil {
			return err
		}
		logProbs = func(ids []int32, mask []float32) ([]float32, error) {
			tp, err := m.Infer(2*B, T, ids, mask) // the frozen reference: no backward, no tape
			if err != nil {
				return nil, err
			}
			return m.TokenLogProbs(tp)
		}
	} else {
		exec, err := context.NewExec(be, mctx.InAbsPath(modelScope).Reuse(), func(ctx *context.Context, ids, mask *graph.Node) *graph.Node {
			return model.TokenLogProbs(ctx, mcfg, ids, mask)
		})
		if err != nil {
			return err
		}
		defer exec.Finalize() // the compiled reference pass is not needed during training
		logProbs = func(ids []int32, mask []float32) ([]float32, error) {
			out, err := exec.Exec(tensors.FromFlatDataAndDimensions(ids, 2*B, T), tensors.FromFlatDataAndDimensions(mask, 2*B, T))
			if err != nil {
				return nil, err
			}
			return tensors.CopyFlatData[float32](out[0])
		}
	}
	n := 0
	for _, s := range sets {
		n += len(s)
	}
	var bar *progressbar.ProgressBar
	if cfg.Progress != nil {
		bar = progressbar.NewOptions(n, progressbar.OptionSetWriter(cfg.Progress), progressbar.OptionSetDescription("dpo: reference log-probs (pairs)"),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetWidth(30), progressbar.OptionThrottle(time.Second))
		defer func() { _ = bar.Finish(); fmt.Fprintln(cfg.Progress) }()
	}
	for _, set := range sets {
		for start := 0; start < len(set); start += B {
			batch := set[start:min(len(set), start+B)]
			full := make([]dpoExample, B) // pad the last batch with copies (one compiled shape)
			for i := range full {
				full[i] = batch[min(i, len(batch)-1)]
			}
			ids, mask, _, _, _ := dpoBatch(full, T, pad)
			lp, err := logProbs(ids, mask)
			if err != nil {
				return err
			}
			for r := range batch {
				for h := range 2 {
					row := make([]float64, T-1)
					for t := range row {
						row[t] = float64(lp[(h*B+r)*(T-1)+t])
					}
					e := &batch[r]
					e.ref[h] = rowRefLogProb(row, e.div, len(e.ids[h]))
					if math.IsNaN(e.ref[h].core) || math.IsInf(e.ref[h].core, 0) || math.IsNaN(e.ref[h].tail) || math.IsInf(e.ref[h].tail, 0) {
						return fmt.Errorf("pair %d: non-finite reference log-probability", start+r)
					}
				}
			}
			if bar != nil {
				_ = bar.Add(len(batch))
			}
		}
	}
	return nil
}
