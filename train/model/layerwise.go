package model

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// Layerwise forward passes (no gradients). A model's forward as one graph
// unrolls every layer: XLA's compile time grows with the depth (a 6-model
// scoring graph of 32-layer models did not compile within 10 minutes on an
// H200), and GoMLX v0.26 has no While loop to roll the layers up. Layerwise
// instead compiles a few small programs per model shape: the embedding, ONE
// decoder layer, and the head. The layer program is called once per layer
// from the host with that layer's weights, the activations staying on the
// device between calls. Weights are program inputs, not context variables,
// so one compiled layer serves every layer of every model of the same shape
// (actor and reference, reward model and critics), and compile time does not
// depend on the number of layers. On the pure-Go backend the programs run the
// same ops as the whole-model graph, so the results are bit-identical.

// paramBound names the context parameter holding the weights bound to graph
// nodes (a boundWeights) when a program takes its weights as inputs.
const paramBound = "saferlhf_model_bound"

// boundWeights maps HF weight names to the graph nodes standing for them.
type boundWeights map[string]*G.Node

// boundOf returns the weights bound in ctx, or nil when the model reads its
// context variables.
func boundOf(ctx *context.Context) boundWeights {
	if v, ok := ctx.GetParam(paramBound); ok {
		if b, ok := v.(boundWeights); ok {
			return b
		}
	}
	return nil
}

// hasWeight reports whether the model in ctx has the weight name.
func hasWeight(ctx *context.Context, name string) bool {
	if b := boundOf(ctx); b != nil {
		_, ok := b[name]
		return ok
	}
	return lookupVar(ctx, name) != nil
}

// Source returns a model's weight by HF name, nil when the model has none.
type Source func(name string) (*tensors.Tensor, error)

// Model is what a layerwise pass needs of one model.
type Model struct {
	Cfg       *Config
	Weights   Source
	DType     dtypes.DType // compute dtype
	LoRAScale float64      // α/r of its adapters (1 without)
}

// ScopeModel describes the model in ctx's scope: its weights are read at
// every pass from the scope's variables (its own, else its shared base's,
// see ShareBase), so updated variables are seen without a host copy.
func ScopeModel(ctx *context.Context, cfg *Config) Model {
	return Model{Cfg: cfg, DType: ComputeDType(ctx), LoRAScale: context.GetParamOr(ctx, paramLoRAScale, 1.0),
		Weights: func(name string) (*tensors.Tensor, error) {
			v := lookupVar(ctx, name)
			if v == nil {
				return nil, nil
			}
			return v.Value()
		}}
}

// layerWeights are a decoder layer's weight names (suffixes of LayerName)
// in program-argument order; absent ones (biases, adapters) are skipped.
var layerWeights = func() []string {
	var s []string
	for _, p := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
		"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
		s = append(s, p+".weight", p+".bias", p+".lora_A.weight", p+".lora_B.weight")
	}
	return append(s, "input_layernorm.weight", "post_attention_layernorm.weight")
}()

// ProgramStat describes one compiled program of a Layerwise: its kind and
// model shape (Program), argument shapes, graph size, compile time (graph
// building and backend compilation) and how often it ran.
type ProgramStat struct {
	Program        string  `json:"program"`
	Shapes         string  `json:"shapes"`
	Nodes          int     `json:"nodes"`
	CompileSeconds float64 `json:"compile_seconds"`
	Calls          int     `json:"calls"`
}

// Layerwise runs forward passes as per-layer programs (see above). Safe for
// use by one goroutine at a time.
type Layerwise struct {
	be backends.Backend
	// RowChunk, when > 0, runs each pass over at most RowChunk rows at a
	// time, so attention never holds the whole batch's B×H×T×T scores.
	RowChunk int

	mu    sync.Mutex
	execs map[string]*G.Exec
	index map[string]int // program key + argument shapes → stats index
	stats []ProgramStat
	zeros map[string]*tensors.Tensor
}

// NewLayerwise returns a Layerwise on be; programs compile on first use.
func NewLayerwise(be backends.Backend) *Layerwise {
	return &Layerwise{be: be, execs: map[string]*G.Exec{}, index: map[string]int{}, zeros: map[string]*tensors.Tensor{}}
}

// Programs returns the statistics of every program compiled so far.
func (lw *Layerwise) Programs() []ProgramStat {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return append([]ProgramStat(nil), lw.stats...)
}

// ZeroAdapters returns m reading zero LoRA adapters wherever like has
// adapters and m has none, with like's LoRA scale: the frozen reference then
// runs the actor's programs, exactly (x·Wᵀ + s·(x·Aᵀ)·0ᵀ = x·Wᵀ). The zero
// tensors live on the device, one per shape.
func (lw *Layerwise) ZeroAdapters(m, like Model) Model {
	out := m
	out.LoRAScale = like.LoRAScale
	out.Weights = func(name string) (*tensors.Tensor, error) {
		t, err := m.Weights(name)
		if t != nil || err != nil || !strings.Contains(name, ".lora_") {
			return t, err
		}
		lt, err := like.Weights(name)
		if lt == nil || err != nil {
			return nil, err
		}
		return lw.zero(lt.Shape())
	}
	return out
}

// zero returns a device-resident zero tensor of shape s.
func (lw *Layerwise) zero(s shapes.Shape) (*tensors.Tensor, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	key := s.String()
	if t, ok := lw.zeros[key]; ok {
		return t, nil
	}
	t := tensors.FromShape(s)
	if err := t.MaterializeOnDevice(lw.be, false, 0); err != nil {
		return nil, err
	}
	t.FinalizeLocal()
	lw.zeros[key] = t
	return t, nil
}

// graphKey is the part of a config that shapes a program of kind: the
// embedding and layer programs do not depend on the head (so LMs and score
// models of one trunk shape share them), nor any program on the depth.
func graphKey(cfg *Config, kind string) string {
	c := *cfg
	c.Architecture, c.ModelType, c.NumLayers, c.TorchDType = "", "", 0, ""
	c.BOS, c.EOS, c.Pad, c.Score = 0, 0, 0, ScoreConfig{}
	if kind == "embed" || kind == "layer" || kind == "embed_bwd" || kind == "layer_bwd" {
		c.ScoreDim, c.TieWordEmbeddings, c.VocabSize = 0, false, 0
	}
	b, _ := json.Marshal(c)
	return string(b)
}

// program is a program's kind and the names of the weights it takes; a
// backward program also names the trained weights (a subset of names, whose
// gradient accumulators it takes and returns) and the gradient scale.
type program struct {
	kind     string // embed, layer, lm_head, score_head; embed_bwd, layer_bwd, loss
	names    []string
	trained  []string
	scale    float64
	lossName string
	loss     HeadLoss
}

// run executes program p of model m on args (activations first, then
// the weights p.names bound, in order, then the accumulators of p.trained
// read from tr); layer is the layer whose weights fill a layer program's
// layer-0 names.
func (lw *Layerwise) run(m Model, p program, layer int, tr *Train, args ...any) ([]*tensors.Tensor, error) {
	bound := len(args)
	full := func(name string) string {
		if strings.HasPrefix(p.kind, "layer") {
			return LayerName(layer, strings.TrimPrefix(name, LayerName(0, "")))
		}
		return name
	}
	for _, name := range p.names {
		t, err := m.Weights(full(name))
		if err != nil {
			return nil, fmt.Errorf("layerwise: weight %q: %w", full(name), err)
		}
		if t == nil {
			return nil, fmt.Errorf("layerwise: weight %q missing", full(name))
		}
		args = append(args, t)
	}
	var accs []*context.Variable
	for _, name := range p.trained {
		v := tr.Accum[full(name)]
		t, err := v.Value()
		if err != nil {
			return nil, fmt.Errorf("layerwise: accumulator of %q: %w", full(name), err)
		}
		accs = append(accs, v)
		args = append(args, t)
	}
	key := fmt.Sprintf("%s|%s|%s|%g|%s|%s|%g|%s", p.kind, graphKey(m.Cfg, p.kind), m.DType, m.LoRAScale,
		strings.Join(p.names, ","), strings.Join(p.trained, ","), p.scale, p.lossName)
	lw.mu.Lock()
	ex, ok := lw.execs[key]
	lw.mu.Unlock()
	if !ok {
		cfg, dt, scale := m.Cfg, m.DType, m.LoRAScale
		var err error
		ex, err = G.NewExec(lw.be, func(in []*G.Node) []*G.Node {
			ctx := context.New()
			SetComputeDType(ctx, dt)
			ctx.SetParam(paramLoRAScale, scale)
			b := boundWeights{}
			for i, name := range p.names {
				b[name] = in[bound+i]
			}
			ctx.SetParam(paramBound, b)
			return programGraph(ctx, cfg, p, in[:bound], b, in[bound+len(p.names):])
		})
		if err != nil {
			return nil, fmt.Errorf("layerwise: %w", err)
		}
		ex.SetMaxCache(-1)
		lw.mu.Lock()
		lw.execs[key] = ex
		lw.mu.Unlock()
	}
	var sh []string
	for _, a := range args {
		if t, ok := a.(*tensors.Tensor); ok {
			sh = append(sh, t.Shape().String())
		}
	}
	skey := key + "|" + strings.Join(sh, ",")
	lw.mu.Lock()
	i, seen := lw.index[skey]
	lw.mu.Unlock()
	var compile time.Duration
	if !seen {
		start := time.Now()
		if err := catch(func() {
			if err := ex.PreCompile(args...); err != nil {
				panic(err)
			}
		}); err != nil {
			return nil, fmt.Errorf("layerwise: compile %s: %w", p.kind, err)
		}
		compile = time.Since(start)
	}
	var out []*tensors.Tensor
	var g *G.Graph
	if err := catch(func() {
		var err error
		if out, g, err = ex.ExecWithGraph(args...); err != nil {
			panic(err)
		}
	}); err != nil {
		return nil, fmt.Errorf("layerwise: %s: %w", p.kind, err)
	}
	// Backward programs return the updated accumulators last.
	if n := len(accs); n > 0 {
		for j, v := range accs {
			if err := v.SetValue(out[len(out)-n+j]); err != nil {
				return nil, fmt.Errorf("layerwise: accumulator of %q: %w", v.Name(), err)
			}
		}
		out = out[:len(out)-n]
	}
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if !seen {
		h := fnv.New32a()
		h.Write([]byte(key))
		kind := p.kind
		if p.lossName != "" {
			kind += ":" + p.lossName
		}
		lw.stats = append(lw.stats, ProgramStat{Program: fmt.Sprintf("%s/%08x", kind, h.Sum32()),
			Shapes: strings.Join(sh[:bound], " "), Nodes: len(g.Nodes()), CompileSeconds: compile.Seconds()})
		i = len(lw.stats) - 1
		lw.index[skey] = i
	}
	lw.stats[i].Calls++
	return out, nil
}

// programGraph builds one program's graph: in are its activation inputs, b
// the bound weights, accs the accumulators of p.trained (backward programs).
func programGraph(ctx *context.Context, cfg *Config, p program, in []*G.Node, b boundWeights, accs []*G.Node) []*G.Node {
	// grads returns the gradients of loss w.r.t. the activations wrt and the trained weights,
	// the latter added (times p.scale) to their accumulators.
	grads := func(loss *G.Node, wrt ...*G.Node) []*G.Node {
		nodes := append([]*G.Node(nil), wrt...)
		for _, name := range p.trained {
			nodes = append(nodes, b[name])
		}
		gs := G.Gradient(loss, nodes...)
		out := gs[:len(wrt)]
		for j, acc := range accs {
			out = append(out, G.Add(acc, G.MulScalar(G.ConvertDType(gs[len(wrt)+j], dtypes.Float32), p.scale)))
		}
		return out
	}
	switch p.kind {
	case "embed": // ids → x
		return []*G.Node{embed(ctx, in[0])}
	case "layer": // x, mask → x
		r, bias := layerInputs(cfg, in[1])
		return []*G.Node{block(ctx, cfg, in[0], 0, r, bias, nil)}
	case "lm_head": // x, ids → token log-probs [B, T-1]
		return []*G.Node{tokenLogProbsFromLogits(logitsOf(ctx, cfg, rmsScale(in[0], cfg.RMSNormEps)), in[1])}
	case "score_head": // x, mask → scores [B, T], end scores [B]
		s := scoresOf(ctx, rmsScale(in[0], cfg.RMSNormEps))
		return []*G.Node{s, AtEnd(s, in[1])}
	case "embed_bwd": // ids, dX → accumulators
		return grads(G.ReduceAllSum(G.Mul(embed(ctx, in[0]), in[1])))
	case "layer_bwd": // x, mask, dY → dX, accumulators (the layer's forward recomputed)
		r, bias := layerInputs(cfg, in[1])
		y := block(ctx, cfg, in[0], 0, r, bias, nil)
		return grads(G.ReduceAllSum(G.Mul(y, in[2])), in[0])
	case "loss": // h, inputs... → loss, metrics..., dH, accumulators
		loss, metrics := p.loss(ctx, cfg, in[0], in[1:])
		loss = G.ConvertDType(G.Reshape(loss), dtypes.Float32)
		out := []*G.Node{loss}
		for _, m := range metrics {
			out = append(out, G.StopGradient(G.ConvertDType(G.Reshape(m), dtypes.Float32)))
		}
		return append(out, grads(loss, in[0])...)
	}
	panic(fmt.Errorf("layerwise: unknown program %q", p.kind))
}

// layerNames returns layer l's weight names present in m, in their layer-0
// form (a layer program's argument names).
func layerNames(m Model, l int) ([]string, error) {
	var names []string
	for _, s := range layerWeights {
		t, err := m.Weights(LayerName(l, s))
		if err != nil {
			return nil, fmt.Errorf("layerwise: %s: %w", LayerName(l, s), err)
		}
		if t != nil {
			names = append(names, LayerName(0, s))
		}
	}
	return names, nil
}

// trunkPass runs the embedding and every layer on ids/mask, returning the
// last layer's activations (on the device). With keep, the inputs of every
// layer are returned too (xs[l] is layer l's input), for a backward pass.
func (lw *Layerwise) trunkPass(m Model, ids, mask *tensors.Tensor, keep bool) (x *tensors.Tensor, xs []*tensors.Tensor, err error) {
	out, err := lw.run(m, program{kind: "embed", names: []string{NameEmbed}}, 0, nil, ids)
	if err != nil {
		return nil, nil, err
	}
	x = out[0]
	for l := 0; l < m.Cfg.NumLayers; l++ {
		names, err := layerNames(m, l)
		if err != nil {
			return nil, nil, err
		}
		out, err := lw.run(m, program{kind: "layer", names: names}, l, nil, x, mask)
		if keep {
			xs = append(xs, x)
		} else {
			x.FinalizeAll()
		}
		if err != nil {
			finalize(xs)
			return nil, nil, err
		}
		x = out[0]
	}
	return x, xs, nil
}

// finalize frees device tensors.
func finalize(ts []*tensors.Tensor) {
	for _, t := range ts {
		if t != nil {
			t.FinalizeAll()
		}
	}
}

// headNames are the weights a model's head reads: the score head for a
// score model, else the LM head (the embedding when tied).
func headNames(m Model) ([]string, error) {
	if m.Cfg.ScoreDim > 0 {
		return []string{NameFinalNorm, NameScoreW, NameScoreB}, nil
	}
	head := []string{NameFinalNorm, NameEmbed}
	if !m.Cfg.TieWordEmbeddings {
		if t, err := m.Weights(NameLMHead); err != nil {
			return nil, err
		} else if t != nil {
			head[1] = NameLMHead
		}
	}
	return head, nil
}

// HeadLoss builds a scalar loss and scalar metrics from the last layer's
// activations h [B, T, D] (before the final norm) and the batch inputs; ctx
// reads the model's head weights (use HeadTokenLogProbs, HeadScores).
type HeadLoss func(ctx *context.Context, cfg *Config, h *G.Node, inputs []*G.Node) (loss *G.Node, metrics []*G.Node)

// HeadTokenLogProbs is TokenLogProbs from the last layer's activations h.
func HeadTokenLogProbs(ctx *context.Context, cfg *Config, h, ids *G.Node) *G.Node {
	return tokenLogProbsFromLogits(logitsOf(ctx, cfg, rmsScale(h, cfg.RMSNormEps)), ids)
}

// HeadScores is Scores from the last layer's activations h.
func HeadScores(ctx *context.Context, cfg *Config, h *G.Node) *G.Node {
	return scoresOf(ctx, rmsScale(h, cfg.RMSNormEps))
}

// Train says what a layerwise backward pass trains: Accum maps the HF name
// of every trained weight of the model to its gradient accumulator (a
// float32 variable of the weight's shape, e.g. trainer.Stepper's), to which
// Scale × the gradient is added.
type Train struct {
	Accum map[string]*context.Variable
	Scale float64
}

// Backward runs loss (lossName identifies it among programs: one name, one
// function) on model m over ids and mask [B, T] and inputs, layer by layer:
// forward keeping each layer's input on the device, then the loss program
// (loss, metrics and the gradient of the last activations), then each
// layer's backward program from the last to the first, which recomputes the
// layer's forward (so activation memory is the layer inputs plus one
// layer's intermediates: rematerialisation), and the embedding's when it is
// trained. Gradients of the trained weights are added to tr's accumulators.
// Returns the loss and the metrics.
func (lw *Layerwise) Backward(m Model, tr Train, lossName string, loss HeadLoss, ids, mask *tensors.Tensor, inputs ...*tensors.Tensor) (float64, []float64, error) {
	trained := func(names []string, layer int) []string {
		var out []string
		for _, n := range names {
			full := n
			if layer >= 0 {
				full = LayerName(layer, strings.TrimPrefix(n, LayerName(0, "")))
			}
			if tr.Accum[full] != nil {
				out = append(out, n)
			}
		}
		return out
	}
	h, xs, err := lw.trunkPass(m, ids, mask, true)
	if err != nil {
		return 0, nil, err
	}
	defer finalize(xs)
	head, err := headNames(m)
	if err != nil {
		h.FinalizeAll()
		return 0, nil, err
	}
	args := []any{h}
	for _, t := range inputs {
		args = append(args, t)
	}
	out, err := lw.run(m, program{kind: "loss", names: head, trained: trained(head, -1), scale: tr.Scale,
		lossName: lossName, loss: loss}, 0, &tr, args...)
	h.FinalizeAll()
	if err != nil {
		return 0, nil, err
	}
	vals := make([]float64, len(out)-1)
	for i, t := range out[:len(out)-1] {
		vals[i] = float64(tensors.ToScalar[float32](t))
		t.FinalizeAll()
	}
	dy := out[len(out)-1]
	for l := m.Cfg.NumLayers - 1; l >= 0; l-- {
		names, err := layerNames(m, l)
		if err != nil {
			dy.FinalizeAll()
			return 0, nil, err
		}
		out, err := lw.run(m, program{kind: "layer_bwd", names: names, trained: trained(names, l), scale: tr.Scale}, l, &tr, xs[l], mask, dy)
		dy.FinalizeAll()
		if err != nil {
			return 0, nil, err
		}
		dy = out[0]
	}
	if tr.Accum[NameEmbed] != nil {
		_, err = lw.run(m, program{kind: "embed_bwd", names: []string{NameEmbed}, trained: []string{NameEmbed}, scale: tr.Scale}, 0, &tr, ids, dy)
	}
	dy.FinalizeAll()
	if err != nil {
		return 0, nil, err
	}
	return vals[0], vals[1:], nil
}

// TokenLogProbs is TokenLogProbs (no gradients) of the LM m on ids and
// mask [B, T] (row-major host data): [B, T-1].
func (lw *Layerwise) TokenLogProbs(m Model, ids []int32, mask []float32, B, T int) ([]float32, error) {
	out, err := lw.TokenLogProbsOn(m, tensors.FromFlatDataAndDimensions(ids, B, T), tensors.FromFlatDataAndDimensions(mask, B, T))
	if err != nil {
		return nil, err
	}
	defer out.FinalizeAll()
	return tensors.CopyFlatData[float32](out)
}

// TokenLogProbsOn is TokenLogProbs on tensors ids (int32) and mask (float32)
// [B, T], typically already on the device: the log-probs [B, T-1] stay there.
func (lw *Layerwise) TokenLogProbsOn(m Model, ids, mask *tensors.Tensor) (*tensors.Tensor, error) {
	lm := m
	lm.Cfg = &Config{}
	*lm.Cfg = *m.Cfg
	lm.Cfg.ScoreDim = 0
	head, err := headNames(lm)
	if err != nil {
		return nil, err
	}
	var parts []*tensors.Tensor
	err = lw.chunksOn(ids, mask, func(ids, mask *tensors.Tensor) error {
		x, _, err := lw.trunkPass(m, ids, mask, false)
		if err != nil {
			return err
		}
		out, err := lw.run(m, program{kind: "lm_head", names: head}, 0, nil, x, ids)
		x.FinalizeAll()
		if err != nil {
			return err
		}
		parts = append(parts, out[0])
		return nil
	})
	if err != nil {
		finalize(parts)
		return nil, err
	}
	return lw.concatRows(parts)
}

// Scores is the score model m's per-token scores [B, T] and end scores [B]
// (score_dim 1) on ids and mask [B, T] (row-major host data).
func (lw *Layerwise) Scores(m Model, ids []int32, mask []float32, B, T int) (scores, end []float32, err error) {
	s, e, err := lw.ScoresOn(m, tensors.FromFlatDataAndDimensions(ids, B, T), tensors.FromFlatDataAndDimensions(mask, B, T))
	if err != nil {
		return nil, nil, err
	}
	defer finalize([]*tensors.Tensor{s, e})
	if scores, err = tensors.CopyFlatData[float32](s); err != nil {
		return nil, nil, err
	}
	if end, err = tensors.CopyFlatData[float32](e); err != nil {
		return nil, nil, err
	}
	return scores, end, nil
}

// ScoresOn is Scores on tensors ids (int32) and mask (float32) [B, T],
// typically already on the device: the scores [B, T] and end scores [B]
// stay there.
func (lw *Layerwise) ScoresOn(m Model, ids, mask *tensors.Tensor) (scores, end *tensors.Tensor, err error) {
	if m.Cfg.ScoreDim != 1 {
		return nil, nil, fmt.Errorf("layerwise: score_dim %d, want 1", m.Cfg.ScoreDim)
	}
	var ss, es []*tensors.Tensor
	err = lw.chunksOn(ids, mask, func(ids, mask *tensors.Tensor) error {
		x, _, err := lw.trunkPass(m, ids, mask, false)
		if err != nil {
			return err
		}
		out, err := lw.run(m, program{kind: "score_head", names: []string{NameFinalNorm, NameScoreW, NameScoreB}}, 0, nil, x, mask)
		x.FinalizeAll()
		if err != nil {
			return err
		}
		ss, es = append(ss, out[0]), append(es, out[1])
		return nil
	})
	if err != nil {
		finalize(ss)
		finalize(es)
		return nil, nil, err
	}
	if scores, err = lw.concatRows(ss); err != nil {
		finalize(es)
		return nil, nil, err
	}
	if end, err = lw.concatRows(es); err != nil {
		scores.FinalizeAll()
		return nil, nil, err
	}
	return scores, end, nil
}

// chunksOn calls fn on row blocks of ids and mask (RowChunk rows at most
// each, sliced on the device; the tensors themselves when one block).
func (lw *Layerwise) chunksOn(ids, mask *tensors.Tensor, fn func(ids, mask *tensors.Tensor) error) error {
	B := ids.Shape().Dimensions[0]
	c := lw.RowChunk
	if c <= 0 || c >= B {
		return fn(ids, mask)
	}
	for lo := 0; lo < B; lo += c {
		hi := min(lo+c, B)
		i, err := lw.SliceRows(ids, lo, hi)
		if err != nil {
			return err
		}
		m, err := lw.SliceRows(mask, lo, hi)
		if err != nil {
			i.FinalizeAll()
			return err
		}
		err = fn(i, m)
		i.FinalizeAll()
		m.FinalizeAll()
		if err != nil {
			return err
		}
	}
	return nil
}

// SliceRows returns rows [lo, hi) of x (any dtype, rank ≥ 1) as a new tensor
// computed where x lives: a device tensor is sliced on the device, with no
// host copy (one small program per (lo, hi), compiled per shape). A range
// that is empty or outside x is an error.
func (lw *Layerwise) SliceRows(x *tensors.Tensor, lo, hi int) (*tensors.Tensor, error) {
	if dims := x.Shape().Dimensions; len(dims) == 0 || lo < 0 || hi > dims[0] || lo >= hi {
		return nil, fmt.Errorf("layerwise: rows [%d, %d) of a %s tensor", lo, hi, x.Shape())
	}
	key := fmt.Sprintf("rows|%d|%d", lo, hi)
	ex, err := lw.util(key, func(in []*G.Node) []*G.Node {
		return []*G.Node{G.Slice(in[0], G.AxisRange(lo, hi))}
	})
	if err != nil {
		return nil, err
	}
	return execOne(ex, x)
}

// concatRows concatenates tensors along their first axis on the device
// (one tensor is returned as is).
func (lw *Layerwise) concatRows(xs []*tensors.Tensor) (*tensors.Tensor, error) {
	if len(xs) == 1 {
		return xs[0], nil
	}
	ex, err := lw.util(fmt.Sprintf("concat|%d", len(xs)), func(in []*G.Node) []*G.Node {
		return []*G.Node{G.Concatenate(in, 0)}
	})
	if err != nil {
		finalize(xs)
		return nil, err
	}
	args := make([]any, len(xs))
	for i, x := range xs {
		args[i] = x
	}
	out, err := execOne(ex, args...)
	finalize(xs)
	return out, err
}

// util returns the cached utility program of key (built by fn on first use).
func (lw *Layerwise) util(key string, fn func([]*G.Node) []*G.Node) (*G.Exec, error) {
	key = "util|" + key
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if ex, ok := lw.execs[key]; ok {
		return ex, nil
	}
	ex, err := G.NewExec(lw.be, fn)
	if err != nil {
		return nil, fmt.Errorf("layerwise: %w", err)
	}
	ex.SetMaxCache(-1)
	lw.execs[key] = ex
	return ex, nil
}

// execOne runs a one-output program, turning GoMLX panics into errors.
func execOne(ex *G.Exec, args ...any) (out *tensors.Tensor, err error) {
	err = catch(func() {
		outs, e := ex.Exec(args...)
		if e != nil {
			panic(e)
		}
		out = outs[0]
	})
	if err != nil {
		return nil, fmt.Errorf("layerwise: %w", err)
	}
	return out, nil
}
