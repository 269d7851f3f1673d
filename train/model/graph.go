package model

import (
	"fmt"
	"math"
	"slices"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// maskBias is the additive attention bias of a masked key: finite, so a query
// row with every key masked (a left-pad query) gives a uniform softmax instead
// of NaN.
const maskBias = -1e9

// SetWeights stores w in ctx's current scope, one variable per HF tensor name
// (creating or overwriting them). Call it with ctx.In("actor") etc. so several
// models coexist in one context. Compiled graphs that read these variables
// keep working: variables are graph parameters, so updating them never
// recompiles.
func SetWeights(ctx *context.Context, cfg *Config, w Weights) error {
	return SetWeightsWith(ctx, cfg, w, Storage{})
}

// GetWeights copies the model's variables in ctx's current scope back to host
// tensors with HF names (the LM head when present, the score head when
// cfg.ScoreDim > 0). Shared-base weights (ShareBase) are included and LoRA
// adapters are merged, so the result is the effective model, ready for Save.
func GetWeights(ctx *context.Context, cfg *Config) (Weights, error) {
	w := Weights{}
	exp := ExpectedShapes(cfg, true)
	for name := range exp {
		v := lookupVar(ctx, name)
		if v == nil {
			if name == NameLMHead {
				continue
			}
			return nil, fmt.Errorf("weights: variable %q missing in scope %q", name, ctx.Scope())
		}
		data, err := VariableData(v)
		if err != nil {
			return nil, err
		}
		w[name] = &Tensor{Shape: slices.Clone(v.Shape().Dimensions), Data: data}
	}
	if err := mergeLoRA(ctx, w); err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	return w, nil
}

// SetTrainable marks every variable under ctx's current scope trainable or
// frozen (frozen variables get no gradient from
// ctx.BuildTrainableVariablesGradientsGraph and are not touched by optimizers).
func SetTrainable(ctx *context.Context, trainable bool) {
	ctx.EnumerateVariablesInScope(func(v *context.Variable) { v.Trainable = trainable })
}

// catch turns a GoMLX panic into an error.
func catch(fn func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok {
				err = e
			} else {
				err = fmt.Errorf("%v", r)
			}
		}
	}()
	fn()
	return nil
}

// param returns the graph value of the model variable name in ctx's scope
// (or, with ShareBase, its base scope), cast to the compute dtype.
func param(ctx *context.Context, g *G.Graph, name string) *G.Node {
	return cast(rawParam(ctx, g, name), ComputeDType(ctx))
}

// rawParam is param in the variable's own dtype (or the node bound to name,
// see bindWeights).
func rawParam(ctx *context.Context, g *G.Graph, name string) *G.Node {
	if b := boundOf(ctx); b != nil {
		n, ok := b[name]
		if !ok {
			panic(fmt.Errorf("model: weight %q not bound", name))
		}
		return n
	}
	v := lookupVar(ctx, name)
	if v == nil {
		panic(fmt.Errorf("model: variable %q not in scope %q (call model.SetWeights first)", name, ctx.Scope()))
	}
	return v.ValueGraph(g)
}

// vecParam returns a vector weight (a norm weight, a bias) in float32: the
// activations between matmuls are float32.
func vecParam(ctx *context.Context, g *G.Graph, name string) *G.Node {
	return cast(rawParam(ctx, g, name), dtypes.Float32)
}

// optParam is vecParam for tensors that may be absent (biases): nil when absent.
func optParam(ctx *context.Context, g *G.Graph, name string) *G.Node {
	if b := boundOf(ctx); b != nil {
		if n, ok := b[name]; ok {
			return cast(n, dtypes.Float32)
		}
		return nil
	}
	v := lookupVar(ctx, name)
	if v == nil {
		return nil
	}
	return cast(v.ValueGraph(g), dtypes.Float32)
}

// proj is a linear layer's weight W [out, in] and, when ctx's scope holds
// adapters for it, its LoRA factors A [r, in] and B [out, r] with their
// scale α/r: apply computes x·Wᵀ + scale·(x·Aᵀ)·Bᵀ, never forming a
// weight-sized W + scale·B·A (nor its gradient).
type proj struct {
	w, a, b *G.Node
	scale   float64
}

// projParam returns the linear layer of weight name, with its adapters.
func projParam(ctx *context.Context, g *G.Graph, name string) proj {
	p := proj{w: param(ctx, g, name)}
	an, bn, ok := loraNames(name)
	if !ok {
		return p
	}
	dt := ComputeDType(ctx)
	if b := boundOf(ctx); b != nil {
		a, okA := b[an]
		bb, okB := b[bn]
		if !okA || !okB {
			return p
		}
		p.a, p.b = cast(a, dt), cast(bb, dt)
		p.scale = context.GetParamOr(ctx, paramLoRAScale, 1.0)
		return p
	}
	av := ctx.GetVariableByScopeAndName(ctx.Scope(), an)
	bv := ctx.GetVariableByScopeAndName(ctx.Scope(), bn)
	if av == nil || bv == nil {
		return p
	}
	p.a, p.b = cast(av.ValueGraph(g), dt), cast(bv.ValueGraph(g), dt)
	p.scale = context.GetParamOr(ctx, paramLoRAScale, 1.0)
	return p
}

// apply computes x·Wᵀ (+ the LoRA term) over x's last axis.
func (p proj) apply(x *G.Node) *G.Node {
	y := linear(x, p.w)
	if p.a != nil {
		y = G.Add(y, G.MulScalar(linear(linear(x, p.a), p.b), p.scale))
	}
	return y
}

// scaleIn returns the layer with its input scaled by nw [in] (folded into
// W and A).
func (p proj) scaleIn(nw *G.Node) proj {
	fold := func(w *G.Node) *G.Node {
		return G.Mul(w, G.BroadcastToDims(G.InsertAxes(cast(nw, w.DType()), 0), w.Shape().Dimensions...))
	}
	q := p
	q.w = fold(p.w)
	if p.a != nil {
		q.a = fold(p.a)
	}
	return q
}

// linear computes x·Wᵀ for a PyTorch-layout weight W [out, in] over x's
// last axis. The product runs in W's dtype (bf16 GEMMs accumulate in
// float32 on XLA's GPU path) and the result has x's dtype.
func linear(x, w *G.Node) *G.Node {
	return cast(G.DotGeneral(cast(x, w.DType()), []int{x.Rank() - 1}, nil, w, []int{1}, nil), x.DType())
}

// addBias adds a [out] bias to x [..., out].
func addBias(x, b *G.Node) *G.Node {
	if b == nil {
		return x
	}
	return G.Add(x, bcast(b, x.Shape().Dimensions...))
}

// rmsScale returns x/sqrt(mean(x²)+eps) over the last axis, without the norm
// weight (folded into the next matmul by normed). Written with Sqrt and Div:
// GoMLX v0.26 has no gradient for Rsqrt.
// The statistics and the scaling are float32 (as HF's LlamaRMSNorm); the
// result has x's dtype.
func rmsScale(x *G.Node, eps float64) *G.Node {
	dt := x.DType()
	x = cast(x, dtypes.Float32)
	ms := G.ReduceAndKeep(G.Mul(x, x), G.ReduceMean, -1)
	r := G.Div(G.ScalarOne(x.Graph(), x.DType()), G.Sqrt(G.AddScalar(ms, eps)))
	return cast(G.Mul(x, G.BroadcastToDims(r, x.Shape().Dimensions...)), dt)
}

// normed applies an RMSNorm weight nw [D] to the scaled activations xs for a
// group of linears ps. On the pure-Go backend, when the activations have
// more rows than the weights' total output width, the weight is folded into
// each W (W·diag(nw): a weight-sized product, cheaper there than a
// broadcast over the activations); elsewhere (XLA fuses the broadcast) it
// scales the activations. Returns the inputs and layers to use.
func normed(xs, nw *G.Node, ps ...proj) (*G.Node, []proj) {
	rows := xs.Shape().Size() / xs.Shape().Dimensions[xs.Rank()-1]
	out := 0
	for _, p := range ps {
		out += p.w.Shape().Dimensions[0]
	}
	if pureGo(xs.Graph()) && rows > out {
		folded := make([]proj, len(ps))
		for i, p := range ps {
			folded[i] = p.scaleIn(nw)
		}
		return xs, folded
	}
	return G.Mul(xs, bcast(nw, xs.Shape().Dimensions...)), ps
}

// pureGo reports whether g runs on a backend without Pad (GoMLX's pure-Go
// one), where Slice has no gradient and the 0/1-matrix forms below are used;
// on XLA the exact Slice/Concatenate forms are used (a matmul by a 0/1
// matrix is not exact under TF32).
func pureGo(g *G.Graph) bool { return !forceXLAForms && PureGo(g.Backend()) }

// forceXLAForms makes tests build the XLA forms on the pure-Go backend
// (forward only: Slice has no gradient there).
var forceXLAForms = false

// PureGo reports whether be is GoMLX's pure-Go backend (no Pad op).
func PureGo(be backends.Backend) bool {
	return !be.Capabilities().Operations[backends.OpTypePad]
}

// invFreq returns RoPE's inverse frequencies θ^(-2i/dh) for i < dh/2, with
// HF's rope_scaling applied (seqLen: the longest sequence this graph sees,
// for "dynamic").
func invFreq(cfg *Config, seqLen int) []float64 {
	dh := cfg.Dh()
	base := cfg.RopeTheta
	rs := cfg.RopeScaling
	if rs != nil && rs.Type == "dynamic" {
		orig := rs.OriginalMaxPositions
		if orig == 0 {
			orig = cfg.MaxPositions
		}
		if seqLen > orig {
			base *= math.Pow(rs.Factor*float64(seqLen)/float64(orig)-(rs.Factor-1), float64(dh)/float64(dh-2))
		}
	}
	f := make([]float64, dh/2)
	for i := range f {
		f[i] = 1 / math.Pow(base, float64(2*i)/float64(dh))
	}
	if rs != nil {
		switch rs.Type {
		case "linear":
			for i := range f {
				f[i] /= rs.Factor
			}
		case "llama3":
			// transformers' _compute_llama3_parameters.
			orig := float64(rs.OriginalMaxPositions)
			lowWL := orig / rs.LowFreqFactor
			highWL := orig / rs.HighFreqFactor
			for i, fr := range f {
				wl := 2 * math.Pi / fr
				switch {
				case wl < highWL:
				case wl > lowWL:
					f[i] = fr / rs.Factor
				default:
					s := (orig/wl - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor)
					f[i] = (1-s)*fr/rs.Factor + s*fr
				}
			}
		}
	}
	return f
}

// ropeTables builds host tables cos/sin [npos, heads*dh] (each head's row
// repeated, HF rotate-half layout, times scale) so that one Gather by
// position yields full-shape tables and RoPE is two same-shape Muls.
func ropeTables(cfg *Config, npos, heads int, scale float64, seqLen int) (cos, sin *tensors.Tensor) {
	dh := cfg.Dh()
	f := invFreq(cfg, seqLen)
	w := heads * dh
	c := make([]float32, npos*w)
	s := make([]float32, npos*w)
	for p := 0; p < npos; p++ {
		for j := 0; j < dh; j++ {
			a := float64(p) * f[j%(dh/2)]
			cv, sv := float32(math.Cos(a)*scale), float32(math.Sin(a)*scale)
			for h := 0; h < heads; h++ {
				c[p*w+h*dh+j] = cv
				s[p*w+h*dh+j] = sv
			}
		}
	}
	return tensors.FromFlatDataAndDimensions(c, npos, w), tensors.FromFlatDataAndDimensions(s, npos, w)
}

// rotateHalfMatrix is R with x·R = rotate_half(x) = concat(-x[dh/2:], x[:dh/2]).
func rotateHalfMatrix(dh int) *tensors.Tensor {
	r := make([]float32, dh*dh)
	half := dh / 2
	for j := 0; j < dh; j++ {
		if j < half {
			r[(j+half)*dh+j] = -1
		} else {
			r[(j-half)*dh+j] = 1
		}
	}
	return tensors.FromFlatDataAndDimensions(r, dh, dh)
}

// rope holds the per-forward RoPE tables, already gathered at each token's
// position: full shape [B, T, heads*dh], so applying them needs no broadcast.
type rope struct {
	cosQ, sinQ, cosK, sinK *G.Node
	rot                    *G.Node // [dh, dh] rotate-half matrix (pure-Go backend only)
}

// newRope gathers the tables at positions pos [B, T] int32 (values < npos).
// The query tables carry the 1/sqrt(dh) attention scale.
// Tables and rotation are float32.
func newRope(cfg *Config, g *G.Graph, pos *G.Node, npos, seqLen int) *rope {
	dh := cfg.Dh()
	idx := G.InsertAxes(pos, -1)
	cq, sq := ropeTables(cfg, npos, cfg.NumHeads, 1/math.Sqrt(float64(dh)), seqLen)
	r := &rope{}
	if pureGo(g) {
		r.rot = G.Const(g, rotateHalfMatrix(dh))
	}
	r.cosQ = G.Gather(G.Const(g, cq), idx)
	r.sinQ = G.Gather(G.Const(g, sq), idx)
	ck, sk := ropeTables(cfg, npos, cfg.NumKVHeads, 1, seqLen)
	r.cosK = G.Gather(G.Const(g, ck), idx)
	r.sinK = G.Gather(G.Const(g, sk), idx)
	return r
}

// apply rotates x [B, T, heads*dh] with tables cos/sin of the same shape.
func (r *rope) apply(x, cos, sin *G.Node, heads, dh int) *G.Node {
	dims := x.Shape().Dimensions
	x4 := G.Reshape(x, dims[0], dims[1], heads, dh)
	var rot *G.Node
	if r.rot != nil {
		rot = G.DotGeneral(x4, []int{3}, nil, r.rot, []int{0}, nil)
	} else {
		half := dh / 2
		x1 := G.Slice(x4, G.AxisRange(), G.AxisRange(), G.AxisRange(), G.AxisRange(0, half))
		x2 := G.Slice(x4, G.AxisRange(), G.AxisRange(), G.AxisRange(), G.AxisRange(half, dh))
		rot = G.Concatenate([]*G.Node{G.Neg(x2), x1}, 3)
	}
	rot = G.Reshape(rot, dims...)
	return G.Add(G.Mul(x, cos), G.Mul(rot, sin))
}

// positions returns RoPE positions cumsum(mask)-1 clamped at 0, int32 [B, T],
// computed as mask·U (U upper-triangular ones) so it is one fast matmul.
func positions(mask *G.Node) *G.Node {
	g := mask.Graph()
	t := mask.Shape().Dimensions[1]
	u := make([]float32, t*t)
	for i := 0; i < t; i++ {
		for j := i; j < t; j++ {
			u[i*t+j] = 1
		}
	}
	cs := G.DotGeneral(mask, []int{1}, nil, G.Const(g, tensors.FromFlatDataAndDimensions(u, t, t)), []int{0}, nil)
	pos := G.Max(G.AddScalar(cs, -1), G.ScalarZero(g, cs.DType()))
	return G.ConvertDType(pos, dtypes.Int32)
}

// attnBias expands a [B, Tq, S] additive bias to the scores' layout
// [B, Hkv, Tq, G, S] once per forward, so every layer adds it same-shape.
func attnBias(cfg *Config, b3 *G.Node) *G.Node {
	d := b3.Shape().Dimensions
	grp := cfg.NumHeads / cfg.NumKVHeads
	return G.BroadcastToDims(G.Reshape(b3, d[0], 1, d[1], 1, d[2]), d[0], cfg.NumKVHeads, d[1], grp, d[2])
}

// causalBias builds the [B, T, T] bias of causal attention restricted to
// keys with mask 1.
func causalBias(mask *G.Node) *G.Node {
	g := mask.Graph()
	dims := mask.Shape().Dimensions
	b, t := dims[0], dims[1]
	c := make([]float32, t*t)
	for i := 0; i < t; i++ {
		for j := i + 1; j < t; j++ {
			c[i*t+j] = maskBias
		}
	}
	causal := G.BroadcastToDims(G.Const(g, tensors.FromFlatDataAndDimensions(c, 1, t, t)), b, t, t)
	keys := G.MulScalar(G.AddScalar(mask, -1), -maskBias) // 0 for real keys, maskBias for pads
	keys = G.BroadcastToDims(G.Reshape(keys, b, 1, t), b, t, t)
	return G.Add(causal, keys)
}

// kvHook lets the generator substitute the keys/values a layer attends to
// (the KV cache) for the ones computed from the current tokens, k4 and v4
// [B, T, Hkv, dh]. With headMajor the returned keys are [B, Hkv, S, dh] and
// values [B, Hkv, dh, S]: the layouts the pure-Go DotGeneral works on
// directly, so a cache kept in them is not transposed at every step.
type kvHook func(layer int, k4, v4 *G.Node) (kAll, vAll *G.Node, headMajor bool)

// lname is LayerName bound to one layer.
type lname int

func (l lname) n(s string) string { return LayerName(int(l), s) }

// block runs one decoder layer on x [B, T, D].
func block(ctx *context.Context, cfg *Config, x *G.Node, l int, r *rope, bias *G.Node, hook kvHook) *G.Node {
	g := x.Graph()
	ln := lname(l)
	dims := x.Shape().Dimensions
	b, t := dims[0], dims[1]
	dh := cfg.Dh()
	hq, hkv := cfg.NumHeads, cfg.NumKVHeads

	// Attention.
	xs := rmsScale(x, cfg.RMSNormEps)
	xin, ws := normed(xs, vecParam(ctx, g, ln.n("input_layernorm.weight")),
		projParam(ctx, g, ln.n("self_attn.q_proj.weight")),
		projParam(ctx, g, ln.n("self_attn.k_proj.weight")),
		projParam(ctx, g, ln.n("self_attn.v_proj.weight")))
	q := addBias(ws[0].apply(xin), optParam(ctx, g, ln.n("self_attn.q_proj.bias")))
	k := addBias(ws[1].apply(xin), optParam(ctx, g, ln.n("self_attn.k_proj.bias")))
	v := addBias(ws[2].apply(xin), optParam(ctx, g, ln.n("self_attn.v_proj.bias")))
	// q, k, v enter the attention matmuls (and the KV cache) in the compute dtype.
	cdt := ComputeDType(ctx)
	q = cast(r.apply(q, r.cosQ, r.sinQ, hq, dh), cdt)
	k = cast(r.apply(k, r.cosK, r.sinK, hkv, dh), cdt)
	k4 := G.Reshape(k, b, t, hkv, dh)
	v4 := G.Reshape(cast(v, cdt), b, t, hkv, dh)
	headMajor := false
	if hook != nil {
		k4, v4, headMajor = hook(l, k4, v4)
	}
	q5 := G.Reshape(q, b, t, hkv, hq/hkv, dh)
	var scores, o *G.Node
	if headMajor {
		scores = G.DotGeneral(q5, []int{4}, []int{0, 2}, k4, []int{3}, []int{0, 1}) // [B, Hkv, T, G, S]
	} else {
		scores = G.DotGeneral(q5, []int{4}, []int{0, 2}, k4, []int{3}, []int{0, 2})
	}
	// Softmax in float32 (as HF), probabilities back in the compute dtype.
	p := cast(G.Softmax(G.Add(cast(scores, dtypes.Float32), bias), -1), q5.DType())
	if headMajor {
		o = G.DotGeneral(p, []int{4}, []int{0, 1}, v4, []int{3}, []int{0, 1}) // [B, Hkv, T, G, dh]
	} else {
		o = G.DotGeneral(p, []int{4}, []int{0, 1}, v4, []int{1}, []int{0, 2})
	}
	o = cast(G.Reshape(G.TransposeAllAxes(o, 0, 2, 1, 3, 4), b, t, hq*dh), dtypes.Float32)
	o = addBias(projParam(ctx, g, ln.n("self_attn.o_proj.weight")).apply(o), optParam(ctx, g, ln.n("self_attn.o_proj.bias")))
	x = G.Add(x, o)

	// SwiGLU feed-forward.
	xs = rmsScale(x, cfg.RMSNormEps)
	xin, ws = normed(xs, vecParam(ctx, g, ln.n("post_attention_layernorm.weight")),
		projParam(ctx, g, ln.n("mlp.gate_proj.weight")),
		projParam(ctx, g, ln.n("mlp.up_proj.weight")))
	gate := ws[0].apply(xin)
	up := ws[1].apply(xin)
	h := G.Mul(G.Mul(gate, G.Logistic(gate)), up)
	return G.Add(x, projParam(ctx, g, ln.n("mlp.down_proj.weight")).apply(h))
}

// trunk runs embedding and all layers; it returns the final activations
// scaled by RMS but without the final norm weight (see normed).
func trunk(ctx *context.Context, cfg *Config, ids, mask *G.Node) *G.Node {
	x := embed(ctx, ids)
	r, bias := layerInputs(cfg, mask)
	for l := 0; l < cfg.NumLayers; l++ {
		x = block(ctx, cfg, x, l, r, bias, nil)
	}
	return rmsScale(x, cfg.RMSNormEps)
}

// embed returns the token embeddings of ids [B, T], float32 [B, T, D].
func embed(ctx *context.Context, ids *G.Node) *G.Node {
	return cast(G.Gather(param(ctx, ids.Graph(), NameEmbed), G.InsertAxes(G.ConvertDType(ids, dtypes.Int32), -1)), dtypes.Float32)
}

// layerInputs returns what every decoder layer reads besides its input
// activations: the RoPE tables at each token's position and the attention
// bias, both derived from the attention mask [B, T].
func layerInputs(cfg *Config, mask *G.Node) (*rope, *G.Node) {
	mask = G.ConvertDType(mask, dtypes.Float32)
	t := mask.Shape().Dimensions[1]
	return newRope(cfg, mask.Graph(), positions(mask), t, t), attnBias(cfg, causalBias(mask))
}

// lmHead returns the LM head [V, D] (the embedding table when tied).
func lmHead(ctx *context.Context, cfg *Config, g *G.Graph) proj {
	if hasWeight(ctx, NameLMHead) && !cfg.TieWordEmbeddings {
		return proj{w: param(ctx, g, NameLMHead)}
	}
	return proj{w: param(ctx, g, NameEmbed)}
}

// Hidden returns the last hidden state [B, T, D] (after the final RMSNorm,
// as HF's last_hidden_state) of token ids [B, T] (int32) with attention mask
// [B, T] (1 real token, 0 pad; left or right padding). Variables are read from
// ctx's current scope.
func Hidden(ctx *context.Context, cfg *Config, ids, mask *G.Node) *G.Node {
	xs := trunk(ctx, cfg, ids, mask)
	nw := vecParam(ctx, ids.Graph(), NameFinalNorm)
	return cast(G.Mul(xs, bcast(nw, xs.Shape().Dimensions...)), dtypes.Float32)
}

// Logits returns the LM logits [B, T, V], float32 (computed in the compute
// dtype, as HF's lm_head, then widened).
func Logits(ctx *context.Context, cfg *Config, ids, mask *G.Node) *G.Node {
	return logitsOf(ctx, cfg, trunk(ctx, cfg, ids, mask))
}

// logitsOf applies the final norm and the LM head to the trunk's output xs.
func logitsOf(ctx *context.Context, cfg *Config, xs *G.Node) *G.Node {
	g := xs.Graph()
	xin, ws := normed(xs, vecParam(ctx, g, NameFinalNorm), lmHead(ctx, cfg, g))
	return ws[0].apply(xin)
}

// TokenLogProbs returns log p(ids[:, t+1] | ids[:, :t+1]) for t < T-1, shape
// [B, T-1]: log_softmax(logits[:, :-1]) gathered at ids[:, 1:] (spec §1.2),
// computed as target logit minus log-sum-exp so no log-softmax of B×T×V is
// materialised. Differentiable on every backend.
func TokenLogProbs(ctx *context.Context, cfg *Config, ids, mask *G.Node) *G.Node {
	logits := Logits(ctx, cfg, ids, mask)
	return tokenLogProbsFromLogits(logits, ids)
}

// tokenLogProbsFromLogits is TokenLogProbs given the logits [B, T, V].
func tokenLogProbsFromLogits(logits, ids *G.Node) *G.Node {
	g := logits.Graph()
	dims := logits.Shape().Dimensions
	b, t := dims[0], dims[1]
	ids = G.ConvertDType(ids, dtypes.Int32)
	// Targets ids[:, t+1], with a dummy 0 for the last column (dropped below).
	next := G.Concatenate([]*G.Node{G.Slice(ids, G.AxisRange(), G.AxisRangeToEnd(1)), G.Zeros(g, shapes.Make(dtypes.Int32, b, 1))}, 1)
	idx := G.Concatenate([]*G.Node{
		G.Iota(g, shapes.Make(dtypes.Int32, b, t, 1), 0),
		G.Iota(g, shapes.Make(dtypes.Int32, b, t, 1), 1),
		G.InsertAxes(next, -1),
	}, 2)
	target := G.Gather(logits, idx) // [B, T]
	m := G.StopGradient(G.ReduceAndKeep(logits, G.ReduceMax, -1))
	sum := G.ReduceSum(G.Exp(G.Sub(logits, G.BroadcastToDims(m, dims...))), -1)
	lse := G.Add(G.Log(sum), G.Reshape(m, b, t))
	return dropLast(G.Sub(target, lse))
}

// dropLast returns x[:, :-1] of a [B, T] tensor as a matmul with a constant
// 0/1 selection matrix: Slice's gradient needs Pad, which GoMLX's pure-Go
// backend lacks.
func dropLast(x *G.Node) *G.Node {
	t := x.Shape().Dimensions[1]
	if !pureGo(x.Graph()) {
		return G.Slice(x, G.AxisRange(), G.AxisRange(0, t-1))
	}
	sel := make([]float32, t*(t-1))
	for i := 0; i < t-1; i++ {
		sel[i*(t-1)+i] = 1
	}
	return G.DotGeneral(x, []int{1}, nil, G.Const(x.Graph(), tensors.FromFlatDataAndDimensions(sel, t, t-1)), []int{0}, nil)
}

// Scores returns the score head's per-token output: [B, T] when
// cfg.ScoreDim == 1, else [B, T, ScoreDim] (Safe-RLHF ScoreModel.scores).
func Scores(ctx *context.Context, cfg *Config, ids, mask *G.Node) *G.Node {
	return scoresOf(ctx, trunk(ctx, cfg, ids, mask))
}

// scoresOf applies the final norm and the score head to the trunk's output xs.
func scoresOf(ctx *context.Context, xs *G.Node) *G.Node {
	g := xs.Graph()
	xin, ws := normed(xs, vecParam(ctx, g, NameFinalNorm), proj{w: param(ctx, g, NameScoreW)})
	s := ws[0].apply(xin)
	bias := cast(rawParam(ctx, g, NameScoreB), dtypes.Float32)
	dims := s.Shape().Dimensions
	if dims[2] == 1 {
		return G.Add(G.Reshape(s, dims[0], dims[1]), G.Reshape(bias))
	}
	return addBias(s, bias)
}

// EndScores returns the score at each row's last mask==1 position, [B] (or
// [B, ScoreDim]), and the per-token scores (Safe-RLHF end_scores and scores).
func EndScores(ctx *context.Context, cfg *Config, ids, mask *G.Node) (end, scores *G.Node) {
	scores = Scores(ctx, cfg, ids, mask)
	return AtEnd(scores, mask), scores
}

// AtEnd gathers x [B, T, ...] at each row's last mask==1 position (index 0
// for an all-pad row), differentiably.
func AtEnd(x, mask *G.Node) *G.Node {
	g := x.Graph()
	dims := mask.Shape().Dimensions
	b, t := dims[0], dims[1]
	maskF := G.ConvertDType(mask, dtypes.Float32)
	iota := G.Iota(g, shapes.Make(dtypes.Float32, b, t), 1)
	last := G.ReduceAndKeep(G.Mul(iota, maskF), G.ReduceMax, 1)
	onehot := G.ConvertDType(G.Equal(iota, G.BroadcastToDims(last, b, t)), x.DType())
	if x.Rank() == 2 {
		return G.ReduceSum(G.Mul(x, onehot), 1)
	}
	oh := G.BroadcastToDims(G.Reshape(onehot, append([]int{b, t}, ones(x.Rank()-2)...)...), x.Shape().Dimensions...)
	return G.ReduceSum(G.Mul(x, oh), 1)
}

func ones(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

// bcast broadcasts x to dims, aligning x's axes with the trailing ones.
func bcast(x *G.Node, dims ...int) *G.Node {
	if x.Rank() < len(dims) {
		x = G.Reshape(x, append(ones(len(dims)-x.Rank()), x.Shape().Dimensions...)...)
	}
	return G.BroadcastToDims(x, dims...)
}
