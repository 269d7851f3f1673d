package model

import (
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
)

// Sampling inside the decoding graph (Generator.DeviceSampling): only the
// sampled ids leave the device. GoMLX has no sort or top-k op, so top-k is k
// rounds of max-and-mask, which also yields the kept values in descending
// order; top-p and the draw then work on those k values. Differences from
// the host sampler: float32 instead of float64, the draw walks tokens by
// descending probability (the host walks ids in order unless top-p is on),
// and tokens tied at the k-th value are all kept (as HF's TopKLogitsWarper)
// while ties among the k values count once each.

// sampleNext draws one token per row from logits z [B, V] (float32): the
// repetition penalty already applied, then temperature, top-k (topK ≥ 1),
// top-p and an inverse-CDF draw with u [B] uniform in [0, 1). temp and topP
// are float32 scalars; temp ≤ 0 is greedy (the lowest id among the
// maxima). Returns ids [B] int32.
func sampleNext(z, u, temp, topP *G.Node, topK int) *G.Node {
	g := z.Graph()
	dims := z.Shape().Dimensions
	b, v := dims[0], dims[1]
	f32 := dtypes.Float32
	negInf := G.Infinity(g, f32, -1)
	// Greedy when temp ≤ 0: divide by 1 instead and keep only the top value below.
	greedy := G.LessOrEqual(temp, G.ScalarZero(g, f32))
	t := G.Where(greedy, G.ScalarOne(g, f32), temp)
	z = G.Div(z, G.BroadcastToDims(t, b, v))
	// k rounds of max-and-mask: vals[:, i] is the i-th largest distinct value.
	k := min(topK, v)
	vals := make([]*G.Node, k)
	prev := G.ReduceMax(z, 1) // [B]
	vals[0] = prev
	for i := 1; i < k; i++ {
		below := G.LessThan(z, G.BroadcastToDims(G.InsertAxes(prev, 1), b, v))
		prev = G.ReduceMax(G.Where(below, z, G.BroadcastToDims(negInf, b, v)), 1)
		vals[i] = prev
	}
	top := G.Stack(vals, 1) // [B, k], descending; −inf once a row has fewer distinct values
	// Probabilities of the kept values over the top-k set (HF renormalises after top-k).
	mx := G.InsertAxes(vals[0], 1)
	e := G.Exp(G.Sub(top, G.BroadcastToDims(mx, b, k)))
	// Each kept value counts once per token holding it (only the last one can be tied in
	// practice; counting all keeps the masses exact).
	cnt := make([]*G.Node, k)
	for i := range vals {
		eq := G.Equal(z, G.BroadcastToDims(G.InsertAxes(vals[i], 1), b, v))
		cnt[i] = G.ReduceSum(G.ConvertDType(eq, f32), 1)
	}
	mass := G.Mul(e, G.Stack(cnt, 1))
	total := G.ReduceAndKeep(mass, G.ReduceSum, 1)
	p := G.Div(mass, G.BroadcastToDims(total, b, k))
	cum := G.CumSum(p, 1) // inclusive
	// Top-p: keep value i when the mass before it is < topP (the first always).
	before := G.Sub(cum, p)
	keep := G.LessThan(before, G.BroadcastToDims(topP, b, k))
	first := G.Equal(G.Iota(g, shapes.Make(dtypes.Int32, b, k), 1), G.ScalarZero(g, dtypes.Int32))
	keep = G.Where(G.BroadcastToDims(greedy, b, k), first, G.LogicalOr(keep, first))
	kept := G.Where(keep, p, G.ZerosLike(p))
	keptCum := G.CumSum(kept, 1)
	keptTotal := G.ReduceAndKeep(kept, G.ReduceSum, 1)
	// The first kept value whose cumulative mass exceeds u·total.
	target := G.Mul(G.InsertAxes(u, 1), keptTotal)
	over := G.LogicalAnd(G.GreaterThan(keptCum, G.BroadcastToDims(target, b, k)), keep)
	idx := G.Iota(g, shapes.Make(dtypes.Int32, b, k), 1)
	big := G.Const(g, int32(k))
	j := G.ReduceMin(G.Where(over, idx, G.BroadcastToDims(big, b, k)), 1) // [B]
	// u·total rounding past the last kept value: take the last kept one.
	lastKept := G.ReduceMax(G.Where(keep, idx, G.ZerosLike(idx)), 1)
	j = G.Min(j, lastKept)
	// The chosen value, then the lowest token id holding it.
	sel := G.Equal(idx, G.BroadcastToDims(G.InsertAxes(j, 1), b, k))
	chosen := G.ReduceMax(G.Where(sel, top, G.BroadcastToDims(negInf, b, k)), 1)
	ids := G.Iota(g, shapes.Make(dtypes.Int32, b, v), 1)
	hit := G.Equal(z, G.BroadcastToDims(G.InsertAxes(chosen, 1), b, v))
	return G.ReduceMin(G.Where(hit, ids, G.BroadcastToDims(G.Const(g, int32(v)), b, v)), 1)
}

// seenTokens marks, per row, the ids [B, P] whose mask [B, P] is 1: a [B, V]
// float32 of counts (> 0: seen), built by scattering (no B×P×V one-hot).
func seenTokens(ids, mask *G.Node, v int) *G.Node {
	g := ids.Graph()
	dims := ids.Shape().Dimensions
	b, p := dims[0], dims[1]
	rows := G.Iota(g, shapes.Make(dtypes.Int32, b, p, 1), 0)
	idx := G.Concatenate([]*G.Node{rows, G.InsertAxes(G.ConvertDType(ids, dtypes.Int32), -1)}, 2)
	return G.ScatterSum(G.Zeros(g, shapes.Make(dtypes.Float32, b, v)), idx, G.ConvertDType(mask, dtypes.Float32), false, false)
}

// sampleInputs are the sampling inputs of the device-sampling graphs, after
// the model's own: u [B] uniforms, temperature, top-p, repetition penalty
// (float32 scalars), pad id (int32 scalar) and seen [B, V].
const numSampleInputs = 6

// sampleOutputs samples from logits [B, V] with the sampling inputs in[0:6]
// and returns the ids [B] and the updated seen counts.
func sampleOutputs(logits *G.Node, in []*G.Node, topK int) (ids, seen *G.Node) {
	u, temp, topP, rp, pad, seen := in[0], in[1], in[2], in[3], in[4], in[5]
	b := logits.Shape().Dimensions[0]
	pen := G.Where(G.LessThan(logits, G.ZerosLike(logits)), G.Mul(logits, G.BroadcastToDims(rp, logits.Shape().Dimensions...)),
		G.Div(logits, G.BroadcastToDims(rp, logits.Shape().Dimensions...)))
	z := G.Where(G.GreaterThan(seen, G.ZerosLike(seen)), pen, logits)
	ids = sampleNext(z, u, temp, topP, topK)
	real := G.ConvertDType(G.NotEqual(ids, G.BroadcastToDims(pad, b)), dtypes.Float32)
	seen = seenTokens(G.Reshape(ids, b, 1), G.Reshape(real, b, 1), logits.Shape().Dimensions[1])
	return ids, G.Add(in[5], seen)
}
