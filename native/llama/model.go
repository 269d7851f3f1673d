// Package llama is the LLaMA family of train/model on the native C engine
// (native/engine): forward with a saved tape, the backward of every weight
// (LoRA adapters included), the LM head's fused log-softmax-gather token
// log-probs, the score head with its end-score gather, and AdamW with
// clipping and accumulation as train/optim applies it. Matmuls, norms,
// attention and the optimizer run in C; this package only sequences them.
//
// Built without cgo, New returns engine.ErrUnavailable.
package llama

import (
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/model"
)

// Model holds one model's parameters by HF name (PEFT names for LoRA
// adapters) as flat float32 slices; several Models may share slices (a frozen
// base read by an actor and a reference model).
type Model struct {
	Cfg *model.Config
	// Params maps every tensor name to its values.
	Params map[string][]float32
	// Shapes maps every tensor name to its shape.
	Shapes map[string][]int
	// LoRAScale is α/r of the adapters present in Params.
	LoRAScale float32
	// Trainable lists the names that receive gradients (default: every name).
	Trainable map[string]bool

	ropeKey        [2]int
	ropeCos, ropeS []float32
}

// linear names of one layer, in forward order.
var attnLinears = []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}

// New builds a model from HF-named weights (LoRA adapters "<linear>.lora_A.weight"
// and ".lora_B.weight" may be included; loraScale is then α/r). The weights are
// copied.
func New(cfg *model.Config, w model.Weights, loraScale float64) (*Model, error) {
	if !engine.Available {
		return nil, engine.ErrUnavailable
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := w.Check(cfg, !cfg.TieWordEmbeddings && cfg.ScoreDim == 0); err != nil {
		return nil, err
	}
	m := &Model{Cfg: cfg, Params: map[string][]float32{}, Shapes: map[string][]int{}, LoRAScale: float32(loraScale), Trainable: map[string]bool{}}
	exp := model.ExpectedShapes(cfg, true)
	for name, t := range w {
		if _, ok := exp[name]; !ok {
			if !isLoRA(name) {
				if name == model.NameLMHead && cfg.TieWordEmbeddings {
					continue
				}
				return nil, fmt.Errorf("llama: unexpected tensor %q for this config", name)
			}
		}
		if len(t.Data) != t.Size() {
			return nil, fmt.Errorf("llama: tensor %q has %d values for shape %v", name, len(t.Data), t.Shape)
		}
		m.Params[name] = slices.Clone(t.Data)
		m.Shapes[name] = slices.Clone(t.Shape)
		m.Trainable[name] = true
	}
	for name := range m.Params {
		if !isLoRA(name) {
			continue
		}
		stem := loraStem(name)
		ws, ok := m.Shapes[stem+".weight"]
		a, b := m.Shapes[stem+".lora_A.weight"], m.Shapes[stem+".lora_B.weight"]
		if !ok || len(a) != 2 || len(b) != 2 || a[1] != ws[1] || b[0] != ws[0] || a[0] != b[1] {
			return nil, fmt.Errorf("llama: LoRA adapter %q does not fit its linear %v (A %v, B %v)", name, ws, a, b)
		}
	}
	return m, nil
}

func isLoRA(name string) bool {
	return hasSuffix(name, ".lora_A.weight") || hasSuffix(name, ".lora_B.weight")
}

func loraStem(name string) string { return name[:len(name)-len(".lora_A.weight")] }

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

// Names returns the parameter names, sorted.
func (m *Model) Names() []string {
	names := make([]string, 0, len(m.Params))
	for n := range m.Params {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// SetTrainable marks only the names for which keep returns true as trainable.
func (m *Model) SetTrainable(keep func(name string) bool) {
	for n := range m.Params {
		m.Trainable[n] = keep(n)
	}
}

// Grads holds gradients by parameter name (trainable names only).
type Grads map[string][]float32

// NewGrads returns zero gradients for the trainable parameters.
func (m *Model) NewGrads() Grads {
	g := Grads{}
	for n, p := range m.Params {
		if m.Trainable[n] {
			g[n] = make([]float32, len(p))
		}
	}
	return g
}

// Zero sets every gradient to 0.
func (g Grads) Zero() {
	for _, v := range g {
		clear(v)
	}
}

// layerActs are one decoder layer's saved activations.
type layerActs struct {
	x, h1, q, k, v, o, lse, x2, h2, gate, up, act []float32
	rstd1, rstd2                                  []float32
	xa                                            map[string][]float32 // LoRA x·Aᵀ by linear stem
}

// Tape is a forward pass's saved state, consumed by the backward.
type Tape struct {
	B, T, N     int
	seqLen      int
	IDs         []int32
	Mask        []float32
	pos         []int32
	layers      []layerActs
	xf, rstdf   []float32
	Hidden      []float32 // final normed hidden state [N, D]
	lse, tgt    []float32 // LM head per-row log-sum-exp (TokenLogProbs)
	tgtIDs      []int32
	headChunked bool
}

// fail turns an engine error into a panic caught at the API boundary.
func fail(err error) {
	if err != nil {
		panic(err)
	}
}

// catch recovers fail's panics as an error.
func catch(err *error) {
	if r := recover(); r != nil {
		if e, ok := r.(error); ok {
			*err = fmt.Errorf("llama: %w", e)
			return
		}
		panic(r)
	}
}

// rope returns cos/sin tables [npos, dh/2] built for sequences of length
// seqLen (which only "dynamic" rope scaling reads).
func (m *Model) rope(t, seqLen int) (cos, sin []float32) {
	if m.ropeKey == [2]int{t, seqLen} {
		return m.ropeCos, m.ropeS
	}
	dh := m.Cfg.Dh()
	f := model.RopeInvFreq(m.Cfg, seqLen)
	cos, sin = make([]float32, t*dh/2), make([]float32, t*dh/2)
	for p := 0; p < t; p++ {
		for i := 0; i < dh/2; i++ {
			a := float64(p) * f[i]
			cos[p*dh/2+i], sin[p*dh/2+i] = float32(math.Cos(a)), float32(math.Sin(a))
		}
	}
	m.ropeKey, m.ropeCos, m.ropeS = [2]int{t, seqLen}, cos, sin
	return cos, sin
}

// Positions returns RoPE positions max(cumsum(mask)−1, 0) of a [b, t] mask.
func Positions(b, t int, mask []float32) []int32 {
	pos := make([]int32, b*t)
	for r := 0; r < b; r++ {
		c := int32(0)
		for i := 0; i < t; i++ {
			if mask[r*t+i] != 0 {
				c++
			}
			p := c - 1
			if p < 0 {
				p = 0
			}
			pos[r*t+i] = p
		}
	}
	return pos
}

// lin computes y = x·Wᵀ (+ bias) (+ s·(x·Aᵀ)·Bᵀ) for the linear stem over n
// rows; it returns x·Aᵀ when the linear has an adapter.
func (m *Model) lin(stem string, x []float32, n int, y []float32) (xa []float32) {
	w := m.Params[stem+".weight"]
	sh := m.Shapes[stem+".weight"]
	out, in := sh[0], sh[1]
	fail(engine.Sgemm(false, true, n, out, in, 1, x, in, w, in, 0, y, out))
	if b := m.Params[stem+".bias"]; b != nil {
		for r := 0; r < n; r++ {
			row := y[r*out : (r+1)*out]
			for i := range row {
				row[i] += b[i]
			}
		}
	}
	if a := m.Params[stem+".lora_A.weight"]; a != nil {
		bm := m.Params[stem+".lora_B.weight"]
		rank := m.Shapes[stem+".lora_A.weight"][0]
		xa = make([]float32, n*rank)
		fail(engine.Sgemm(false, true, n, rank, in, 1, x, in, a, in, 0, xa, rank))
		fail(engine.Sgemm(false, true, n, out, rank, m.LoRAScale, xa, rank, bm, rank, 1, y, out))
	}
	return xa
}

// linBack adds the gradients of linear stem given its input x, x·Aᵀ and
// output gradient dy; dx receives dy·W_eff (added when accumulate).
func (m *Model) linBack(stem string, x, xa, dy []float32, n int, dx []float32, accumulate bool, g Grads) {
	w := m.Params[stem+".weight"]
	sh := m.Shapes[stem+".weight"]
	out, in := sh[0], sh[1]
	beta := float32(0)
	if accumulate {
		beta = 1
	}
	if dx != nil {
		fail(engine.Sgemm(false, false, n, in, out, 1, dy, out, w, in, beta, dx, in))
	}
	if gw := g[stem+".weight"]; gw != nil {
		fail(engine.Sgemm(true, false, out, in, n, 1, dy, out, x, in, 1, gw, in))
	}
	if gb := g[stem+".bias"]; gb != nil {
		colSum(dy, n, out, gb)
	}
	if a := m.Params[stem+".lora_A.weight"]; a != nil {
		bm := m.Params[stem+".lora_B.weight"]
		rank := m.Shapes[stem+".lora_A.weight"][0]
		s := m.LoRAScale
		u := make([]float32, n*rank)
		fail(engine.Sgemm(false, false, n, rank, out, 1, dy, out, bm, rank, 0, u, rank))
		if dx != nil {
			fail(engine.Sgemm(false, false, n, in, rank, s, u, rank, a, in, 1, dx, in))
		}
		if ga := g[stem+".lora_A.weight"]; ga != nil {
			fail(engine.Sgemm(true, false, rank, in, n, s, u, rank, x, in, 1, ga, in))
		}
		if gbm := g[stem+".lora_B.weight"]; gbm != nil {
			fail(engine.Sgemm(true, false, out, rank, n, s, dy, out, xa, rank, 1, gbm, rank))
		}
	}
}

// colSum adds the column sums of x [n, w] to dst in row order.
func colSum(x []float32, n, w int, dst []float32) {
	acc := make([]float64, w)
	for r := 0; r < n; r++ {
		for i, v := range x[r*w : (r+1)*w] {
			acc[i] += float64(v)
		}
	}
	for i := range dst[:w] {
		dst[i] += float32(acc[i])
	}
}

// Forward runs the trunk on ids and mask [b, t] (1 real, 0 pad; left or right
// padding) and returns the tape with the final hidden state.
func (m *Model) Forward(b, t int, ids []int32, mask []float32) (tp *Tape, err error) {
	return m.forward(b, t, ids, mask, t)
}

// Infer is Forward for passes without a backward (evaluation, scoring,
// reference log-probs): it saves no activations, running every layer in one
// layer's reused buffers, so it allocates about one layer's activations
// instead of all of them. Its tape serves Logits, TokenLogProbs and Scores;
// Backward refuses it.
func (m *Model) Infer(b, t int, ids []int32, mask []float32) (tp *Tape, err error) {
	return m.run(b, t, ids, mask, t, false)
}

// forward is Forward with RoPE tables built for sequences of length seqLen.
func (m *Model) forward(b, t int, ids []int32, mask []float32, seqLen int) (tp *Tape, err error) {
	return m.run(b, t, ids, mask, seqLen, true)
}

// run is the forward pass; keep saves every layer's activations in the tape
// for Backward, else one set of buffers is reused layer after layer.
func (m *Model) run(b, t int, ids []int32, mask []float32, seqLen int, keep bool) (tp *Tape, err error) {
	defer catch(&err)
	cfg := m.Cfg
	n := b * t
	if b <= 0 || t <= 0 || len(ids) != n || len(mask) != n {
		return nil, fmt.Errorf("llama: forward: ids %d and mask %d values, want %d×%d", len(ids), len(mask), b, t)
	}
	d, dh, f := cfg.HiddenSize, cfg.Dh(), cfg.IntermediateSize
	hq, hkv := cfg.NumHeads, cfg.NumKVHeads
	emb := m.Params[model.NameEmbed]
	tp = &Tape{B: b, T: t, N: n, IDs: slices.Clone(ids), Mask: slices.Clone(mask), pos: Positions(b, t, mask)}
	x := make([]float32, n*d)
	for r, id := range ids {
		if id < 0 || int(id) >= cfg.VocabSize {
			return nil, fmt.Errorf("llama: forward: token id %d at position %d outside the vocabulary [0, %d)", id, r, cfg.VocabSize)
		}
		copy(x[r*d:(r+1)*d], emb[int(id)*d:])
	}
	cos, sin := m.rope(t, seqLen)
	tp.seqLen = seqLen
	eps := float32(cfg.RMSNormEps)
	qs := float32(1 / math.Sqrt(float64(dh)))
	alloc := func(la *layerActs) {
		la.xa = map[string][]float32{}
		la.h1, la.rstd1 = make([]float32, n*d), make([]float32, n)
		la.q, la.k, la.v = make([]float32, n*hq*dh), make([]float32, n*hkv*dh), make([]float32, n*hkv*dh)
		la.o, la.lse = make([]float32, n*hq*dh), make([]float32, b*hq*t)
		la.x2 = make([]float32, n*d)
		la.h2, la.rstd2 = make([]float32, n*d), make([]float32, n)
		la.gate, la.up, la.act = make([]float32, n*f), make([]float32, n*f), make([]float32, n*f)
	}
	var scratch layerActs
	if keep {
		tp.layers = make([]layerActs, cfg.NumLayers)
	} else {
		alloc(&scratch)
	}
	for l := range cfg.NumLayers {
		la := &scratch
		if keep {
			la = &tp.layers[l]
			alloc(la)
		}
		ln := func(s string) string { return model.LayerName(l, s) }
		la.x = x
		fail(engine.RMSNorm(n, d, x, m.Params[ln("input_layernorm.weight")], eps, la.h1, la.rstd1))
		for i, dst := range [][]float32{la.q, la.k, la.v} {
			stem := ln(attnLinears[i])
			if xa := m.lin(stem, la.h1, n, dst); xa != nil {
				la.xa[stem] = xa
			}
		}
		fail(engine.RoPE(n, hq, dh, tp.pos, cos, sin, qs, la.q, false))
		fail(engine.RoPE(n, hkv, dh, tp.pos, cos, sin, 1, la.k, false))
		fail(engine.Attention(b, t, hq, hkv, dh, la.q, la.k, la.v, mask, la.o, la.lse))
		x2 := la.x2
		stem := ln("self_attn.o_proj")
		if xa := m.lin(stem, la.o, n, x2); xa != nil {
			la.xa[stem] = xa
		}
		for i := range x2 {
			x2[i] += x[i]
		}
		fail(engine.RMSNorm(n, d, x2, m.Params[ln("post_attention_layernorm.weight")], eps, la.h2, la.rstd2))
		for _, p := range []struct {
			s   string
			dst []float32
		}{{"mlp.gate_proj", la.gate}, {"mlp.up_proj", la.up}} {
			if xa := m.lin(ln(p.s), la.h2, n, p.dst); xa != nil {
				la.xa[ln(p.s)] = xa
			}
		}
		fail(engine.SwiGLU(la.gate, la.up, la.act))
		x3 := x // without a tape the layer's input is dead once x2 exists
		if keep {
			x3 = make([]float32, n*d)
		}
		stem = ln("mlp.down_proj")
		if xa := m.lin(stem, la.act, n, x3); xa != nil {
			la.xa[stem] = xa
		}
		for i := range x3 {
			x3[i] += x2[i]
		}
		x = x3
	}
	tp.xf = x
	tp.Hidden, tp.rstdf = make([]float32, n*d), make([]float32, n)
	fail(engine.RMSNorm(n, d, x, m.Params[model.NameFinalNorm], eps, tp.Hidden, tp.rstdf))
	return tp, nil
}

// Backward propagates dHidden [N, D] (the gradient of the final normed hidden
// state) through the trunk, adding every trainable weight's gradient to g.
func (m *Model) Backward(tp *Tape, dHidden []float32, g Grads) (err error) {
	defer catch(&err)
	cfg := m.Cfg
	b, t, n := tp.B, tp.T, tp.N
	d, dh, f := cfg.HiddenSize, cfg.Dh(), cfg.IntermediateSize
	hq, hkv := cfg.NumHeads, cfg.NumKVHeads
	if len(dHidden) != n*d {
		return fmt.Errorf("llama: backward: dHidden has %d values, want %d", len(dHidden), n*d)
	}
	if len(tp.layers) != cfg.NumLayers {
		return fmt.Errorf("llama: backward: the tape has no saved activations (from Infer, not Forward)")
	}
	cos, sin := m.rope(t, tp.seqLen)
	qs := float32(1 / math.Sqrt(float64(dh)))
	dx := make([]float32, n*d)
	fail(engine.RMSNormBackward(n, d, tp.xf, m.Params[model.NameFinalNorm], tp.rstdf, dHidden, dx, false, g[model.NameFinalNorm]))
	dact, dgate, dup := make([]float32, n*f), make([]float32, n*f), make([]float32, n*f)
	dh2 := make([]float32, n*d)
	do := make([]float32, n*hq*dh)
	dq, dk, dv := make([]float32, n*hq*dh), make([]float32, n*hkv*dh), make([]float32, n*hkv*dh)
	dh1 := make([]float32, n*d)
	for l := cfg.NumLayers - 1; l >= 0; l-- {
		la := &tp.layers[l]
		ln := func(s string) string { return model.LayerName(l, s) }
		// FFN: x3 = x2 + down(swiglu(gate(h2), up(h2))).
		stem := ln("mlp.down_proj")
		m.linBack(stem, la.act, la.xa[stem], dx, n, dact, false, g)
		fail(engine.SwiGLUBackward(la.gate, la.up, dact, dgate, dup))
		stem = ln("mlp.gate_proj")
		m.linBack(stem, la.h2, la.xa[stem], dgate, n, dh2, false, g)
		stem = ln("mlp.up_proj")
		m.linBack(stem, la.h2, la.xa[stem], dup, n, dh2, true, g)
		nw := ln("post_attention_layernorm.weight")
		fail(engine.RMSNormBackward(n, d, la.x2, m.Params[nw], la.rstd2, dh2, dx, true, g[nw]))
		// Attention: x2 = x + o_proj(attn(rope(q), rope(k), v)).
		stem = ln("self_attn.o_proj")
		m.linBack(stem, la.o, la.xa[stem], dx, n, do, false, g)
		fail(engine.AttentionBackward(b, t, hq, hkv, dh, la.q, la.k, la.v, tp.Mask, la.o, la.lse, do, dq, dk, dv))
		fail(engine.RoPE(n, hq, dh, tp.pos, cos, sin, qs, dq, true))
		fail(engine.RoPE(n, hkv, dh, tp.pos, cos, sin, 1, dk, true))
		for i, dy := range [][]float32{dq, dk, dv} {
			stem := ln(attnLinears[i])
			m.linBack(stem, la.h1, la.xa[stem], dy, n, dh1, i > 0, g)
		}
		nw = ln("input_layernorm.weight")
		fail(engine.RMSNormBackward(n, d, la.x, m.Params[nw], la.rstd1, dh1, dx, true, g[nw]))
	}
	if ge := g[model.NameEmbed]; ge != nil {
		for r, id := range tp.IDs {
			dst := ge[int(id)*d : (int(id)+1)*d]
			for i, v := range dx[r*d : (r+1)*d] {
				dst[i] += v
			}
		}
	}
	return nil
}

// headName returns the LM head's tensor (the embedding table when tied).
func (m *Model) headName() string {
	if _, ok := m.Params[model.NameLMHead]; ok && !m.Cfg.TieWordEmbeddings {
		return model.NameLMHead
	}
	return model.NameEmbed
}

// Logits returns the LM logits [N, V] of a tape.
func (m *Model) Logits(tp *Tape) ([]float32, error) {
	v, d := m.Cfg.VocabSize, m.Cfg.HiddenSize
	out := make([]float32, tp.N*v)
	if err := engine.Sgemm(false, true, tp.N, v, d, 1, tp.Hidden, d, m.Params[m.headName()], d, 0, out, v); err != nil {
		return nil, fmt.Errorf("llama: logits: %w", err)
	}
	return out, nil
}

// LogitsBackward adds the head's weight gradient for dLogits [N, V] to g and
// returns the hidden state's gradient.
func (m *Model) LogitsBackward(tp *Tape, dLogits []float32, g Grads) ([]float32, error) {
	v, d := m.Cfg.VocabSize, m.Cfg.HiddenSize
	dh := make([]float32, tp.N*d)
	head := m.headName()
	if err := engine.Sgemm(false, false, tp.N, d, v, 1, dLogits, v, m.Params[head], d, 0, dh, d); err != nil {
		return nil, fmt.Errorf("llama: logits backward: %w", err)
	}
	if gw := g[head]; gw != nil {
		if err := engine.Sgemm(true, false, v, d, tp.N, 1, dLogits, v, tp.Hidden, d, 1, gw, d); err != nil {
			return nil, fmt.Errorf("llama: logits backward: %w", err)
		}
	}
	return dh, nil
}

// headChunk is the number of rows whose logits exist at once in TokenLogProbs.
const headChunk = 256

// TokenLogProbs returns log p(ids[:, t+1] | ids[:, :t+1]) for t < T−1, [B, T−1],
// computing the LM head in chunks of rows with a fused log-softmax-gather so
// no [N, V] logits exist; the backward recomputes each chunk.
func (m *Model) TokenLogProbs(tp *Tape) (out []float32, err error) {
	defer catch(&err)
	v, d := m.Cfg.VocabSize, m.Cfg.HiddenSize
	b, t := tp.B, tp.T
	tp.tgtIDs = make([]int32, tp.N)
	for r := 0; r < b; r++ {
		for i := 0; i+1 < t; i++ {
			tp.tgtIDs[r*t+i] = tp.IDs[r*t+i+1]
		}
	}
	tp.lse = make([]float32, tp.N)
	logp := make([]float32, tp.N)
	logits := make([]float32, min(headChunk, tp.N)*v)
	head := m.Params[m.headName()]
	for r0 := 0; r0 < tp.N; r0 += headChunk {
		rows := min(headChunk, tp.N-r0)
		fail(engine.Sgemm(false, true, rows, v, d, 1, tp.Hidden[r0*d:], d, head, d, 0, logits, v))
		fail(engine.LogSoftmaxGather(rows, v, logits, v, tp.tgtIDs[r0:], logp[r0:], tp.lse[r0:]))
	}
	tp.headChunked = true
	out = make([]float32, b*(t-1))
	for r := 0; r < b; r++ {
		copy(out[r*(t-1):(r+1)*(t-1)], logp[r*t:r*t+t-1])
	}
	return out, nil
}

// TokenLogProbsBackward adds the LM head's weight gradient for dLogp [B, T−1]
// to g and returns the hidden state's gradient [N, D].
func (m *Model) TokenLogProbsBackward(tp *Tape, dLogp []float32, g Grads) (dh []float32, err error) {
	defer catch(&err)
	if !tp.headChunked {
		return nil, fmt.Errorf("llama: TokenLogProbsBackward before TokenLogProbs")
	}
	v, d := m.Cfg.VocabSize, m.Cfg.HiddenSize
	b, t := tp.B, tp.T
	if len(dLogp) != b*(t-1) {
		return nil, fmt.Errorf("llama: dLogp has %d values, want %d", len(dLogp), b*(t-1))
	}
	gr := make([]float32, tp.N)
	for r := 0; r < b; r++ {
		copy(gr[r*t:r*t+t-1], dLogp[r*(t-1):(r+1)*(t-1)])
	}
	dh = make([]float32, tp.N*d)
	headName := m.headName()
	head, gw := m.Params[headName], g[headName]
	logits := make([]float32, min(headChunk, tp.N)*v)
	for r0 := 0; r0 < tp.N; r0 += headChunk {
		rows := min(headChunk, tp.N-r0)
		fail(engine.Sgemm(false, true, rows, v, d, 1, tp.Hidden[r0*d:], d, head, d, 0, logits, v))
		fail(engine.LogSoftmaxGatherBackward(rows, v, logits, v, tp.tgtIDs[r0:], tp.lse[r0:], gr[r0:]))
		fail(engine.Sgemm(false, false, rows, d, v, 1, logits, v, head, d, 0, dh[r0*d:], d))
		if gw != nil {
			fail(engine.Sgemm(true, false, v, d, rows, 1, logits, v, tp.Hidden[r0*d:], d, 1, gw, d))
		}
	}
	return dh, nil
}

// Scores returns the score head's output [N, ScoreDim].
func (m *Model) Scores(tp *Tape) ([]float32, error) {
	s, d := m.Cfg.ScoreDim, m.Cfg.HiddenSize
	w, bias := m.Params[model.NameScoreW], m.Params[model.NameScoreB]
	if s <= 0 || w == nil || bias == nil {
		return nil, fmt.Errorf("llama: the model has no score head")
	}
	out := make([]float32, tp.N*s)
	if err := engine.Sgemm(false, true, tp.N, s, d, 1, tp.Hidden, d, w, d, 0, out, s); err != nil {
		return nil, fmt.Errorf("llama: scores: %w", err)
	}
	for r := 0; r < tp.N; r++ {
		for i := 0; i < s; i++ {
			out[r*s+i] += bias[i]
		}
	}
	return out, nil
}

// ScoresBackward adds the score head's gradients for dScores [N, ScoreDim] to
// g and returns the hidden state's gradient.
func (m *Model) ScoresBackward(tp *Tape, dScores []float32, g Grads) ([]float32, error) {
	s, d := m.Cfg.ScoreDim, m.Cfg.HiddenSize
	if len(dScores) != tp.N*s {
		return nil, fmt.Errorf("llama: dScores has %d values, want %d", len(dScores), tp.N*s)
	}
	dh := make([]float32, tp.N*d)
	if err := engine.Sgemm(false, false, tp.N, d, s, 1, dScores, s, m.Params[model.NameScoreW], d, 0, dh, d); err != nil {
		return nil, err
	}
	if gw := g[model.NameScoreW]; gw != nil {
		if err := engine.Sgemm(true, false, s, d, tp.N, 1, dScores, s, tp.Hidden, d, 1, gw, d); err != nil {
			return nil, err
		}
	}
	if gb := g[model.NameScoreB]; gb != nil {
		colSum(dScores, tp.N, s, gb)
	}
	return dh, nil
}

// EndScores returns each row's score at its last mask==1 position (position 0 for an
// all-pad row), as model.AtEnd picks a sequence's score from a [b, t] row of scores.
func EndScores(b, t int, mask, scores []float32) []float32 {
	end := make([]float32, b)
	for r := 0; r < b; r++ {
		last := 0
		for i := 0; i < t; i++ {
			if mask[r*t+i] != 0 {
				last = i
			}
		}
		end[r] = scores[r*t+last]
	}
	return end
}
