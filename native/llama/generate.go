package llama

import (
	"fmt"
	"math"

	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/model"
)

// Generate samples a response for each prompt (token ids, BOS included, no
// padding) with a KV cache, exactly as model.Generator does: prompts
// left-padded to a multiple of model.PromptBucket, the same sampler and random
// stream, the same rollout layout.
func (m *Model) Generate(prompts [][]int32, opts model.GenerateOptions) (ro *model.Rollout, err error) {
	defer catch(&err)
	cfg := m.Cfg
	dec, err := model.NewDecode(prompts, &opts, cfg.VocabSize, model.PromptBucket, func(pw int) int { return pw + opts.MaxNewTokens })
	if err != nil {
		return nil, err
	}
	if opts.Pad < 0 || int(opts.Pad) >= cfg.VocabSize {
		return nil, fmt.Errorf("generate: pad id %d outside vocabulary [0, %d)", opts.Pad, cfg.VocabSize)
	}
	b, pw, s := dec.B, dec.PW, dec.S
	ids, keyMask, tok, pos := dec.IDs, dec.KeyMask, dec.Tok, dec.Pos
	d, dh, f, v := cfg.HiddenSize, cfg.Dh(), cfg.IntermediateSize, cfg.VocabSize
	hq, hkv := cfg.NumHeads, cfg.NumKVHeads
	kw := hkv * dh
	pmask := make([]float32, b*pw) // the prompt columns of the key mask
	for r := 0; r < b; r++ {
		copy(pmask[r*pw:(r+1)*pw], keyMask[r*s:r*s+pw])
	}

	// Prefill: the whole prompt, keeping every layer's keys and values.
	tp, err := m.forward(b, pw, ids, pmask, s)
	if err != nil {
		return nil, fmt.Errorf("generate: prefill: %w", err)
	}
	kc, vc := make([][]float32, cfg.NumLayers), make([][]float32, cfg.NumLayers)
	for l := range kc {
		kc[l], vc[l] = make([]float32, b*s*kw), make([]float32, b*s*kw)
		for r := 0; r < b; r++ {
			for p := 0; p < pw; p++ {
				cacheWrite(kc[l], vc[l], tp.layers[l].k[(r*pw+p)*kw:], tp.layers[l].v[(r*pw+p)*kw:], r, p, s, hkv, dh)
			}
		}
	}
	head := m.Params[m.headName()]
	logits := make([]float32, b*v)
	last := make([]float32, b*d)
	for r := 0; r < b; r++ {
		copy(last[r*d:(r+1)*d], tp.Hidden[(r*pw+pw-1)*d:])
	}
	fail(engine.Sgemm(false, true, b, v, d, 1, last, d, head, d, 0, logits, v))
	tp = nil

	// Decode: each layer is one engine call for the whole batch, on weights
	// packed (transposed, LoRA merged) once per call of Generate.
	lws := make([][]float32, cfg.NumLayers)
	for l := range lws {
		lws[l] = m.decodeLayer(l)
	}
	headT := make([]float32, d*v)
	transpose(head, v, d, headT, v, 0)
	cos, sin := m.rope(s, s)
	eps := float32(cfg.RMSNormEps)
	qs := float32(1 / math.Sqrt(float64(dh)))
	x, h := make([]float32, b*d), make([]float32, b*d)
	emb := m.Params[model.NameEmbed]
	for i := 0; ; i++ {
		if dec.Sample(i, logits) {
			break
		}
		at := dec.Next(i)
		for r := 0; r < b; r++ {
			copy(x[r*d:(r+1)*d], emb[int(tok[r])*d:])
		}
		for l := range lws {
			fail(engine.DecodeLayer(b, d, hq, hkv, dh, f, at, s, eps, qs, lws[l], pos, cos, sin, keyMask, x, kc[l], vc[l]))
		}
		fail(engine.RMSNorm(b, d, x, m.Params[model.NameFinalNorm], eps, h, nil))
		fail(engine.Sgemm(false, false, b, v, d, 1, h, d, headT, v, 0, logits, v))
	}
	return dec.Rollout(), nil
}

// decodeLayer packs layer l for engine.DecodeLayer: norms, the projections
// transposed to [in, out] with their LoRA adapters merged (W + s·B·A), and
// their biases (zeros when absent).
func (m *Model) decodeLayer(l int) []float32 {
	cfg := m.Cfg
	d, f, hq, hkv, dh := cfg.HiddenSize, cfg.IntermediateSize, cfg.NumHeads, cfg.NumKVHeads, cfg.Dh()
	off := engine.DecodeLayout(d, hq, hkv, dh, f)
	lw := make([]float32, off[10])
	ln := func(s string) string { return model.LayerName(l, s) }
	copy(lw[off[0]:off[1]], m.Params[ln("input_layernorm.weight")])
	copy(lw[off[5]:off[6]], m.Params[ln("post_attention_layernorm.weight")])
	// put writes linear stem's Wᵀ into the [in, width] block at w, columns
	// from col, and its bias to bias[col:].
	put := func(stem string, w []float32, width, col int, bias []float32) {
		wt := m.Params[stem+".weight"]
		sh := m.Shapes[stem+".weight"]
		out, in := sh[0], sh[1]
		if a := m.Params[stem+".lora_A.weight"]; a != nil {
			rank := m.Shapes[stem+".lora_A.weight"][0]
			wt = append([]float32(nil), wt...)
			fail(engine.Sgemm(false, false, out, in, rank, m.LoRAScale, m.Params[stem+".lora_B.weight"], rank, a, in, 1, wt, in))
		}
		transpose(wt, out, in, w, width, col)
		if bb := m.Params[stem+".bias"]; bb != nil {
			copy(bias[col:col+out], bb)
		}
	}
	q, kw := hq*dh, hkv*dh
	w, bqkv := lw[off[1]:off[2]], lw[off[2]:off[3]]
	put(ln("self_attn.q_proj"), w, q+2*kw, 0, bqkv)
	put(ln("self_attn.k_proj"), w, q+2*kw, q, bqkv)
	put(ln("self_attn.v_proj"), w, q+2*kw, q+kw, bqkv)
	put(ln("self_attn.o_proj"), lw[off[3]:off[4]], d, 0, lw[off[4]:off[5]])
	w, bgu := lw[off[6]:off[7]], lw[off[7]:off[8]]
	put(ln("mlp.gate_proj"), w, 2*f, 0, bgu)
	put(ln("mlp.up_proj"), w, 2*f, f, bgu)
	put(ln("mlp.down_proj"), lw[off[8]:off[9]], d, 0, lw[off[9]:off[10]])
	return lw
}

// transpose writes the transpose of a [rows, cols] into columns [col,
// col+rows) of dst [cols, width].
func transpose(a []float32, rows, cols int, dst []float32, width, col int) {
	for r := 0; r < rows; r++ {
		row := a[r*cols : (r+1)*cols]
		for c, x := range row {
			dst[c*width+col+r] = x
		}
	}
}

// cacheWrite stores one position's keys and values k, v [hkv·dh] of batch row
// r at position p of caches laid out [B, hkv, dh, s] (engine.AttentionDecode's).
func cacheWrite(kc, vc, k, v []float32, r, p, s, hkv, dh int) {
	for h := 0; h < hkv; h++ {
		base := (r*hkv + h) * dh * s
		for d := 0; d < dh; d++ {
			kc[base+d*s+p] = k[h*dh+d]
			vc[base+d*s+p] = v[h*dh+d]
		}
	}
}
