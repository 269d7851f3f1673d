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
	if kind == "embed" || kind == "layer" {
		c.ScoreDim, c.TieWordEmbeddings, c.VocabSize = 0, false, 0
	}
	b, _ := json.Marshal(c)
	return string(b)
}

// program is a program's kind and the names of the weights it takes.
type program struct {
	kind  string // embed, layer, lm_head, score_head
	names []string
}

// run executes program p of model m on args (activations first, then
// the weights p.names bound, in order); layer is the layer whose weights
// fill a layer program's layer-0 names.
func (lw *Layerwise) run(m Model, p program, layer int, args ...any) ([]*tensors.Tensor, error) {
	bound := len(args)
	for _, name := range p.names {
		full := name
		if p.kind == "layer" {
			full = LayerName(layer, strings.TrimPrefix(name, LayerName(0, "")))
		}
		t, err := m.Weights(full)
		if err != nil {
			return nil, fmt.Errorf("layerwise: weight %q: %w", full, err)
		}
		if t == nil {
			return nil, fmt.Errorf("layerwise: weight %q missing", full)
		}
		args = append(args, t)
	}
	key := fmt.Sprintf("%s|%s|%s|%g|%s", p.kind, graphKey(m.Cfg, p.kind), m.DType, m.LoRAScale, strings.Join(p.names, ","))
	lw.mu.Lock()
	ex, ok := lw.execs[key]
	lw.mu.Unlock()
	if !ok {
		cfg, dt, scale, names, kind := m.Cfg, m.DType, m.LoRAScale, p.names, p.kind
		var err error
		ex, err = G.NewExec(lw.be, func(in []*G.Node) []*G.Node {
			ctx := context.New()
			SetComputeDType(ctx, dt)
			ctx.SetParam(paramLoRAScale, scale)
			b := boundWeights{}
			for i, name := range names {
				b[name] = in[bound+i]
			}
			ctx.SetParam(paramBound, b)
			return programGraph(ctx, cfg, kind, in[:bound])
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
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if !seen {
		h := fnv.New32a()
		h.Write([]byte(key))
		lw.stats = append(lw.stats, ProgramStat{Program: fmt.Sprintf("%s/%08x", p.kind, h.Sum32()),
			Shapes: strings.Join(sh[:bound], " "), Nodes: len(g.Nodes()), CompileSeconds: compile.Seconds()})
		i = len(lw.stats) - 1
		lw.index[skey] = i
	}
	lw.stats[i].Calls++
	return out, nil
}

// programGraph builds one program's graph; in are its activation inputs.
func programGraph(ctx *context.Context, cfg *Config, kind string, in []*G.Node) []*G.Node {
	switch kind {
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
	}
	panic(fmt.Errorf("layerwise: unknown program %q", kind))
}

// trunkPass runs the embedding and every layer on ids/mask, returning the
// last layer's activations (on the device).
func (lw *Layerwise) trunkPass(m Model, ids, mask *tensors.Tensor) (*tensors.Tensor, error) {
	out, err := lw.run(m, program{kind: "embed", names: []string{NameEmbed}}, 0, ids)
	if err != nil {
		return nil, err
	}
	x := out[0]
	for l := 0; l < m.Cfg.NumLayers; l++ {
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
		out, err := lw.run(m, program{kind: "layer", names: names}, l, x, mask)
		x.FinalizeAll()
		if err != nil {
			return nil, err
		}
		x = out[0]
	}
	return x, nil
}

// chunks calls fn on row blocks [lo, hi) of a B-row batch (RowChunk rows at
// most each).
func (lw *Layerwise) chunks(B int, fn func(lo, hi int) error) error {
	c := lw.RowChunk
	if c <= 0 || c > B {
		c = B
	}
	for lo := 0; lo < B; lo += c {
		if err := fn(lo, min(lo+c, B)); err != nil {
			return err
		}
	}
	return nil
}

// TokenLogProbs is TokenLogProbs (no gradients) of the LM m on ids and
// mask [B, T] (row-major host data): [B, T-1].
func (lw *Layerwise) TokenLogProbs(m Model, ids []int32, mask []float32, B, T int) ([]float32, error) {
	head := []string{NameFinalNorm, NameEmbed}
	if !m.Cfg.TieWordEmbeddings {
		if t, err := m.Weights(NameLMHead); err != nil {
			return nil, err
		} else if t != nil {
			head[1] = NameLMHead
		}
	}
	res := make([]float32, 0, B*(T-1))
	err := lw.chunks(B, func(lo, hi int) error {
		idsT := tensors.FromFlatDataAndDimensions(ids[lo*T:hi*T], hi-lo, T)
		x, err := lw.trunkPass(m, idsT, tensors.FromFlatDataAndDimensions(mask[lo*T:hi*T], hi-lo, T))
		if err != nil {
			return err
		}
		out, err := lw.run(m, program{kind: "lm_head", names: head}, 0, x, idsT)
		x.FinalizeAll()
		if err != nil {
			return err
		}
		res = append(res, tensors.MustCopyFlatData[float32](out[0])...)
		out[0].FinalizeAll()
		return nil
	})
	return res, err
}

// Scores is the score model m's per-token scores [B, T] and end scores [B]
// (score_dim 1) on ids and mask [B, T] (row-major host data).
func (lw *Layerwise) Scores(m Model, ids []int32, mask []float32, B, T int) (scores, end []float32, err error) {
	if m.Cfg.ScoreDim != 1 {
		return nil, nil, fmt.Errorf("layerwise: score_dim %d, want 1", m.Cfg.ScoreDim)
	}
	err = lw.chunks(B, func(lo, hi int) error {
		maskT := tensors.FromFlatDataAndDimensions(mask[lo*T:hi*T], hi-lo, T)
		x, err := lw.trunkPass(m, tensors.FromFlatDataAndDimensions(ids[lo*T:hi*T], hi-lo, T), maskT)
		if err != nil {
			return err
		}
		out, err := lw.run(m, program{kind: "score_head", names: []string{NameFinalNorm, NameScoreW, NameScoreB}}, 0, x, maskT)
		x.FinalizeAll()
		if err != nil {
			return err
		}
		scores = append(scores, tensors.MustCopyFlatData[float32](out[0])...)
		end = append(end, tensors.MustCopyFlatData[float32](out[1])...)
		for _, t := range out {
			t.FinalizeAll()
		}
		return nil
	})
	return scores, end, err
}
