package model

import (
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// GenerateOptions are the sampling settings of Generate (HF generate's, as
// Safe-RLHF's rollout uses them, spec §1.2).
type GenerateOptions struct {
	// MaxNewTokens bounds the response length (> 0).
	MaxNewTokens int
	// Temperature divides the logits; 0 means greedy (ties to the lowest id).
	Temperature float64
	// TopK keeps the TopK most likely tokens (ties at the K-th value kept,
	// as HF's TopKLogitsWarper) before top-p (0: off; the flags' default is
	// HF's 50).
	TopK int
	// TopP keeps the smallest set of most likely tokens whose probability
	// reaches TopP (0 or 1: off).
	TopP float64
	// RepetitionPenalty divides positive (multiplies negative) logits of every
	// token already in the row, prompt included (0 or 1: off), as HF's
	// RepetitionPenaltyLogitsProcessor (pads excluded).
	RepetitionPenalty float64
	// Seed makes sampling reproducible: row r draws from its own stream,
	// DeriveSeed(Seed, FirstRow+r) (see Uniform), so the same prompt, options,
	// seed and global row index give the same response in any batch.
	Seed uint64
	// FirstRow is the global index of the batch's first row (e.g. its offset
	// in a prompt file or a global rollout batch split across ranks).
	FirstRow uint64
	// EOS stops a row once sampled (kept in the row); < 0: never stop early.
	EOS int32
	// Pad fills the left of short prompts and the right of finished rows.
	Pad int32
	// Unk, when >= 0, is also masked out of AttentionMask (spec §1.2:
	// mask = seq≠pad ∧ seq≠unk).
	Unk int32
}

// Rollout is a batch of generated sequences as Safe-RLHF's rollout returns
// them (spec §1.2): each row is the left-padded prompt, the response, then
// right pads, all rows of one width T = PromptWidth + longest response.
type Rollout struct {
	Seq           [][]int32 // [B][T]
	AttentionMask [][]int32 // [B][T], 1 where Seq ≠ Pad (and ≠ Unk)
	PromptWidth   int       // prompt columns (left-padded), response starts here
	// ResponseLen is each row's number of sampled tokens (EOS included).
	ResponseLen []int
}

// Generator samples batches with a KV cache. It reads the model's variables
// from the context scope it was built with, so weight updates there (an
// optimizer step, SetWeights) apply to the next Generate without
// recompiling. Shapes are bucketed (prompt width to a multiple of
// PromptBucket, cache length to a multiple of CacheBucket) so each
// (batch, bucket) compiles once. It runs on the pure-Go backend (the cache is
// updated with ScatterSum into zero slots: there is no DynamicUpdateSlice
// there) and on XLA. A Generator is not safe for concurrent Generate calls.
type Generator struct {
	be           backends.Backend
	cfg          *Config
	ctx          *context.Context
	prefill      *context.Exec
	step         *context.Exec
	PromptBucket int
	CacheBucket  int
	// DeviceSampling samples inside the decoding graph when TopK > 0 (see
	// sampleNext): per token only the sampled ids come back to the host
	// instead of the B×V logits. Off by default: the pure-Go path keeps the
	// float64 host sampler, bit for bit.
	DeviceSampling bool
	// Transfers, when set, counts the bytes Generate moves between host and device: prompt
	// ids, key masks, fed tokens, positions, slots, uniforms and scalars up; logits (host
	// sampling) or sampled ids down.
	Transfers *Transfers
	sampling  map[int][2]*context.Exec // by top-k: prefill and step with sampling
	mu        sync.Mutex
}

// NewGenerator returns a generator for the model whose weights are in ctx's
// current scope (see SetWeights).
func NewGenerator(be backends.Backend, cfg *Config, ctx *context.Context) (*Generator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if lookupVar(ctx, NameEmbed) == nil {
		return nil, fmt.Errorf("generator: no model weights in scope %q (call SetWeights first)", ctx.Scope())
	}
	gen := &Generator{be: be, cfg: cfg, ctx: ctx, PromptBucket: 16, CacheBucket: 64}
	var err error
	gen.prefill, err = context.NewExecAny(be, ctx.Reuse(), gen.prefillGraph)
	if err != nil {
		return nil, fmt.Errorf("generator: %w", err)
	}
	gen.step, err = context.NewExecAny(be, ctx.Reuse(), gen.stepGraph)
	if err != nil {
		return nil, fmt.Errorf("generator: %w", err)
	}
	return gen, nil
}

// NewGeneratorFromWeights puts w in a private context and returns a
// generator over it (use SetWeights on Context() to update it).
func NewGeneratorFromWeights(be backends.Backend, cfg *Config, w Weights) (*Generator, error) {
	ctx := context.New().In("model")
	if err := SetWeights(ctx, cfg, w); err != nil {
		return nil, err
	}
	return NewGenerator(be, cfg, ctx)
}

// Context returns the context scope the generator reads its weights from.
func (gen *Generator) Context() *context.Context { return gen.ctx }

// SetWeights replaces the generator's weights (same shapes: no recompilation).
func (gen *Generator) SetWeights(w Weights) error { return SetWeights(gen.ctx, gen.cfg, w) }

// headLogits applies the final norm and the LM head to x [B, 1, D] → [B, V].
func headLogits(ctx *context.Context, cfg *Config, x *G.Node) *G.Node {
	g := x.Graph()
	b := x.Shape().Dimensions[0]
	xs := rmsScale(x, cfg.RMSNormEps)
	xin, ws := normed(xs, vecParam(ctx, g, NameFinalNorm), lmHead(ctx, cfg, g))
	return chunkedLinear(G.Reshape(xin, b, cfg.HiddenSize), ws[0].w)
}

// smallDotCrosses is the pure-Go backend's threshold (GoMLX v0.26
// simplego: 16 blocks of 32×32) above which a DotGeneral takes its blocked
// path, which re-blocks both operands on every call and computes whole
// 32-row blocks: for one token per row that wastes up to 32× on the LM head.
const smallDotCrosses = 16 * 32 * 32

// chunkedLinear computes x·Wᵀ for few rows x [B, D] and a wide W [V, D] by
// splitting V into nc chunks used as a batch axis, so that each batch
// element stays on the backend's unblocked path (and batch elements run in
// parallel). Falls back to one matmul when V has no suitable divisor.
func chunkedLinear(x, w *G.Node) *G.Node {
	b, d := x.Shape().Dimensions[0], x.Shape().Dimensions[1]
	v := w.Shape().Dimensions[0]
	if b*v <= smallDotCrosses || !pureGo(x.Graph()) {
		return linear(x, w)
	}
	nc := 0
	for c := (b*v + smallDotCrosses - 1) / smallDotCrosses; c <= v; c++ {
		if v%c == 0 {
			nc = c
			break
		}
	}
	if nc == 0 || nc > 4096 {
		return linear(x, w)
	}
	wc := G.Reshape(w, nc, v/nc, d)
	xc := G.BroadcastToDims(G.Reshape(x, 1, b, d), nc, b, d)
	out := cast(G.DotGeneral(cast(xc, w.DType()), []int{2}, []int{0}, wc, []int{2}, []int{0}), x.DType()) // [nc, B, V/nc]
	return G.Reshape(G.TransposeAllAxes(out, 1, 0, 2), b, v)
}

// prefillGraph runs the left-padded prompts ids [B, P] with the cache's key
// mask [B, S] (its first P columns are the prompt mask). Outputs: logits of
// the last prompt column [B, V], then per layer the K and V caches
// [B, S, Hkv, dh] (zero beyond P).
func (gen *Generator) prefillGraph(ctx *context.Context, inputs []*G.Node) []*G.Node {
	cfg := gen.cfg
	ids, keyMask := inputs[0], inputs[1]
	g := ids.Graph()
	b, p := ids.Shape().Dimensions[0], ids.Shape().Dimensions[1]
	s := keyMask.Shape().Dimensions[1]
	mask := G.Slice(keyMask, G.AxisRange(), G.AxisRange(0, p))
	x := cast(G.Gather(param(ctx, g, NameEmbed), G.InsertAxes(ids, -1)), dtypes.Float32)
	r := newRope(cfg, g, positions(mask), p, s)
	bias := attnBias(cfg, causalBias(mask))
	dh, hkv := cfg.Dh(), cfg.NumKVHeads
	caches := make([]*G.Node, 0, 2*cfg.NumLayers)
	hook := func(_ int, k4, v4 *G.Node) (*G.Node, *G.Node, bool) {
		// Caches in head-major layouts: K [B, Hkv, S, dh], V [B, Hkv, dh, S].
		kc := G.TransposeAllAxes(k4, 0, 2, 1, 3)
		vc := G.TransposeAllAxes(v4, 0, 2, 3, 1)
		if s > p {
			kc = G.Concatenate([]*G.Node{kc, G.Zeros(g, shapes.Make(kc.DType(), b, hkv, s-p, dh))}, 2)
			vc = G.Concatenate([]*G.Node{vc, G.Zeros(g, shapes.Make(vc.DType(), b, hkv, dh, s-p))}, 3)
		}
		caches = append(caches, kc, vc)
		return k4, v4, false
	}
	for l := 0; l < cfg.NumLayers; l++ {
		x = block(ctx, cfg, x, l, r, bias, hook)
	}
	last := G.Slice(x, G.AxisRange(), G.AxisRange(p-1, p))
	return append([]*G.Node{headLogits(ctx, cfg, last)}, caches...)
}

// stepGraph feeds one token per row. Inputs: tok [B, 1] int32, rope
// position [B, 1] int32, the cache slot written [1] int32 (the same for all
// rows: prompts are left-padded to one width), key mask [B, S] float32
// (slots the token may attend to, itself included), then the 2L caches (K
// [B, Hkv, S, dh], V [B, Hkv, dh, S]). Outputs: logits [B, V] and the
// updated caches.
func (gen *Generator) stepGraph(ctx *context.Context, inputs []*G.Node) []*G.Node {
	cfg := gen.cfg
	tok, pos, slot, keyMask := inputs[0], inputs[1], inputs[2], inputs[3]
	caches := inputs[4:]
	g := tok.Graph()
	b, s := keyMask.Shape().Dimensions[0], keyMask.Shape().Dimensions[1]
	x := cast(G.Gather(param(ctx, g, NameEmbed), G.InsertAxes(tok, -1)), dtypes.Float32)
	r := newRope(cfg, g, pos, s, s)
	keys := G.Reshape(G.MulScalar(G.AddScalar(keyMask, -1), -maskBias), b, 1, s)
	bias := attnBias(cfg, keys)
	dh, hkv := cfg.Dh(), cfg.NumKVHeads
	out := make([]*G.Node, 2*cfg.NumLayers)
	// Scatter indices of the new token's K (b, h, slot) and V (b, h, d, slot).
	i32 := func(dims ...int) shapes.Shape { return shapes.Make(dtypes.Int32, dims...) }
	at := func(dims ...int) *G.Node {
		return G.BroadcastToDims(G.Reshape(slot, ones(len(dims))...), dims...)
	}
	kIdx := G.Concatenate([]*G.Node{G.Iota(g, i32(b, hkv, 1), 0), G.Iota(g, i32(b, hkv, 1), 1), at(b, hkv, 1)}, 2)
	vIdx := G.Concatenate([]*G.Node{G.Iota(g, i32(b, hkv, dh, 1), 0), G.Iota(g, i32(b, hkv, dh, 1), 1),
		G.Iota(g, i32(b, hkv, dh, 1), 2), at(b, hkv, dh, 1)}, 3)
	hook := func(l int, k4, v4 *G.Node) (*G.Node, *G.Node, bool) {
		// The slot is zero (never written): adding is writing.
		k := G.ScatterSum(caches[2*l], kIdx, G.Reshape(k4, b, hkv, dh), true, true)
		v := G.ScatterSum(caches[2*l+1], vIdx, G.Reshape(v4, b, hkv, dh), false, true)
		out[2*l], out[2*l+1] = k, v
		return k, v, true
	}
	for l := 0; l < cfg.NumLayers; l++ {
		x = block(ctx, cfg, x, l, r, bias, hook)
	}
	return append([]*G.Node{headLogits(ctx, cfg, x)}, out...)
}

func roundUp(n, m int) int {
	if m <= 1 {
		return n
	}
	return (n + m - 1) / m * m
}

// Generate samples a response for each prompt (token ids, BOS included, no
// padding) and returns the rollout.
func (gen *Generator) Generate(prompts [][]int32, opts GenerateOptions) (*Rollout, error) {
	gen.mu.Lock()
	defer gen.mu.Unlock()
	d, err := NewDecode(prompts, &opts, gen.cfg.VocabSize, gen.PromptBucket, func(pw int) int {
		return max(roundUp(pw+opts.MaxNewTokens-1, gen.CacheBucket), pw+1)
	})
	if err != nil {
		return nil, err
	}
	if gen.DeviceSampling && opts.TopK > 0 {
		if err := gen.generateOnDevice(d); err != nil {
			return nil, err
		}
		return d.Rollout(), nil
	}
	b, pw, s := d.B, d.PW, d.S
	x := gen.Transfers
	out, err := gen.prefill.Exec(upload(x, true, d.IDs, b, pw), upload(x, false, d.KeyMask, b, s))
	if err != nil {
		return nil, fmt.Errorf("generate: prefill: %w", err)
	}
	for i := 0; ; i++ {
		logits, err := download[float32](x, out[0])
		if err != nil {
			return nil, fmt.Errorf("generate: %w", err)
		}
		out[0].FinalizeAll()
		if d.Sample(i, logits) {
			break
		}
		at := d.Next(i) // feed the sampled tokens at cache slot pw+i
		args := []any{upload(x, true, d.Tok, b, 1), upload(x, false, d.Pos, b, 1),
			upload(x, false, []int32{int32(at)}, 1), upload(x, false, d.KeyMask, b, s)}
		if out, err = gen.stepExec(gen.step, out, args, i); err != nil {
			return nil, err
		}
	}
	for _, c := range out[1:] {
		c.FinalizeAll()
	}
	return d.Rollout(), nil
}

// stepExec runs one decode step: args, then the caches of the previous step's outputs
// (out[1:]), donated.
func (gen *Generator) stepExec(ex *context.Exec, out []*tensors.Tensor, args []any, i int) ([]*tensors.Tensor, error) {
	for _, c := range out[1:] {
		dc, err := G.DonateTensorBuffer(c, gen.be, 0)
		if err != nil {
			return nil, fmt.Errorf("generate: %w", err)
		}
		args = append(args, dc)
	}
	out, err := ex.Exec(args...)
	if err != nil {
		return nil, fmt.Errorf("generate: step %d: %w", i, err)
	}
	return out, nil
}

// samplingExecs returns the prefill and step executables that sample in graph with top-k k.
func (gen *Generator) samplingExecs(k int) ([2]*context.Exec, error) {
	if e, ok := gen.sampling[k]; ok {
		return e, nil
	}
	var e [2]*context.Exec
	var err error
	e[0], err = context.NewExecAny(gen.be, gen.ctx.Reuse(), func(ctx *context.Context, in []*G.Node) []*G.Node {
		out := gen.prefillGraph(ctx, in[:2])
		p := in[0].Shape().Dimensions[1]
		seen := seenTokens(in[0], G.Slice(in[1], G.AxisRange(), G.AxisRange(0, p)), gen.cfg.VocabSize)
		sin := append(append([]*G.Node{}, in[2:2+numSampleInputs-1]...), seen)
		ids, seen := sampleOutputs(out[0], sin, k)
		return append([]*G.Node{ids, seen}, out[1:]...)
	})
	if err != nil {
		return e, fmt.Errorf("generator: %w", err)
	}
	e[1], err = context.NewExecAny(gen.be, gen.ctx.Reuse(), func(ctx *context.Context, in []*G.Node) []*G.Node {
		out := gen.stepGraph(ctx, append(append([]*G.Node{}, in[:4]...), in[4+numSampleInputs:]...))
		ids, seen := sampleOutputs(out[0], in[4:4+numSampleInputs], k)
		return append([]*G.Node{ids, seen}, out[1:]...)
	})
	if err != nil {
		return e, fmt.Errorf("generator: %w", err)
	}
	if gen.sampling == nil {
		gen.sampling = map[int][2]*context.Exec{}
	}
	gen.sampling[k] = e
	return e, nil
}

// generateOnDevice is Generate's loop with sampling in graph: per token, B uniforms and the fed
// tokens go up, the B sampled ids come back.
func (gen *Generator) generateOnDevice(d *Decode) error {
	opts := d.opts
	ex, err := gen.samplingExecs(opts.TopK)
	if err != nil {
		return err
	}
	topP := opts.TopP
	if topP <= 0 || topP >= 1 {
		topP = 2 // off: every value's preceding mass is < 2
	}
	rp := opts.RepetitionPenalty
	if rp <= 0 {
		rp = 1
	}
	b, pw, s := d.B, d.PW, d.S
	x := gen.Transfers
	u := make([]float32, b)
	draw := func(i int) *tensors.Tensor { // the uniforms of response token i
		for r := range u {
			u[r] = float32(d.Uniform(r, i))
		}
		return upload(x, false, u, b)
	}
	// Uploaded at the first call; the tensors keep their device copies for the others.
	scalars := []any{uploadScalar(x, float32(opts.Temperature)), uploadScalar(x, float32(topP)),
		uploadScalar(x, float32(rp)), uploadScalar(x, opts.Pad)}
	args := append([]any{upload(x, true, d.IDs, b, pw), upload(x, false, d.KeyMask, b, s), draw(0)}, scalars...)
	out, err := ex[0].Exec(args...)
	if err != nil {
		return fmt.Errorf("generate: prefill: %w", err)
	}
	for i := 0; ; i++ {
		sampled, err := download[int32](x, out[0])
		if err != nil {
			return fmt.Errorf("generate: %w", err)
		}
		out[0].FinalizeAll()
		if d.Record(i, func(r int) int32 { return sampled[r] }) {
			break
		}
		at := d.Next(i)
		args := []any{upload(x, true, d.Tok, b, 1), upload(x, false, d.Pos, b, 1),
			upload(x, false, []int32{int32(at)}, 1), upload(x, false, d.KeyMask, b, s), draw(i + 1)}
		if out, err = gen.stepExec(ex[1], out, append(args, scalars...), i); err != nil {
			return err
		}
	}
	for _, c := range out[1:] {
		c.FinalizeAll()
	}
	return nil
}

// sampler holds scratch buffers for sampling one row.
type sampler struct {
	z, heap []float64
	idx     []int
}

// kthLargest returns the k-th largest value of z (1 ≤ k < len(z)), counting
// repeats, with a min-heap of the k largest.
func (sc *sampler) kthLargest(z []float64, k int) float64 {
	h := append(sc.heap[:0], z[:k]...)
	down := func(i int) {
		for {
			l := 2*i + 1
			if l >= len(h) {
				return
			}
			if r := l + 1; r < len(h) && h[r] < h[l] {
				l = r
			}
			if h[i] <= h[l] {
				return
			}
			h[i], h[l] = h[l], h[i]
			i = l
		}
	}
	for i := k/2 - 1; i >= 0; i-- {
		down(i)
	}
	for _, x := range z[k:] {
		if x > h[0] {
			h[0] = x
			down(0)
		}
	}
	sc.heap = h
	return h[0]
}

// max64 is math.Max(x, y), with the common case inlined (math.Max is an
// assembly call on amd64: 5% of a top-p batch-32 generation profile).
func max64(x, y float64) float64 {
	if x > y {
		return x
	}
	if y > x {
		return y
	}
	return math.Max(x, y) // equal, or a NaN
}

// sample picks the next token from one row's logits: repetition penalty,
// then greedy (Temperature 0) or temperature + top-p sampling with the
// uniform u in [0, 1), the order of HF's logits processors and warpers.
func (sc *sampler) sample(logits []float32, history []int32, opts *GenerateOptions, u float64) int32 {
	v := len(logits)
	if cap(sc.z) < v {
		sc.z, sc.idx = make([]float64, v), make([]int, v)
	}
	z := sc.z[:v]
	for i, x := range logits {
		z[i] = float64(x)
	}
	if rp := opts.RepetitionPenalty; rp > 0 && rp != 1 {
		for _, id := range history {
			if id == opts.Pad || id < 0 || int(id) >= v {
				continue
			}
			// From the original logit: a repeated id is penalised once.
			if x := float64(logits[id]); x < 0 {
				z[id] = x * rp
			} else {
				z[id] = x / rp
			}
		}
	}
	if opts.Temperature <= 0 {
		best := 0
		for i, x := range z {
			if x > z[best] {
				best = i
			}
		}
		return int32(best)
	}
	maxz := math.Inf(-1)
	if t := opts.Temperature; t != 1 { // x/1 is x
		for i := range z {
			z[i] /= t
		}
	}
	for _, x := range z {
		maxz = max64(maxz, x)
	}
	thr := math.Inf(-1)
	if opts.TopK > 0 && opts.TopK < v {
		thr = sc.kthLargest(z, opts.TopK)
	}
	sum := 0.0
	for i := range z {
		if z[i] < thr {
			z[i] = 0 // outside the top k
			continue
		}
		z[i] = math.Exp(z[i] - maxz)
		sum += z[i]
	}
	idx := sc.idx[:0]
	if opts.TopP > 0 && opts.TopP < 1 {
		// Nucleus: the most likely tokens (ties to the lower id) until their
		// mass reaches TopP. Only tokens above a probability threshold can
		// be in it once the candidates' mass reaches TopP, so sort those
		// few instead of the whole vocabulary, lowering the threshold until
		// enough mass is covered.
		keep := 0
		for thr := 1e-3; ; thr /= 100 {
			idx = idx[:0]
			mass := 0.0
			for i, p := range z {
				if p/sum >= thr || thr < 1e-12 {
					idx = append(idx, i)
					mass += p / sum
				}
			}
			if mass < opts.TopP && thr >= 1e-12 {
				continue
			}
			slices.SortFunc(idx, func(a, b int) int {
				if z[a] != z[b] {
					if z[a] > z[b] {
						return -1
					}
					return 1
				}
				return a - b
			})
			cum := 0.0
			keep = len(idx)
			for k, i := range idx {
				cum += z[i] / sum
				if cum >= opts.TopP {
					keep = k + 1
					break
				}
			}
			break
		}
		idx = idx[:keep]
		sum = 0
		for _, i := range idx {
			sum += z[i]
		}
	} else {
		for i := range z {
			idx = append(idx, i)
		}
	}
	keep := len(idx)
	u *= sum
	for _, i := range idx[:keep] {
		u -= z[i]
		if u < 0 {
			return int32(i)
		}
	}
	return int32(idx[keep-1])
}
