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

	cos, sin := m.rope(s, s)
	eps := float32(cfg.RMSNormEps)
	qs := float32(1 / math.Sqrt(float64(dh)))
	x, h := make([]float32, b*d), make([]float32, b*d)
	q, k, vv, o := make([]float32, b*hq*dh), make([]float32, b*kw), make([]float32, b*kw), make([]float32, b*hq*dh)
	y := make([]float32, b*d)
	gate, up, act := make([]float32, b*f), make([]float32, b*f), make([]float32, b*f)
	emb := m.Params[model.NameEmbed]

	for i := 0; ; i++ {
		if dec.Sample(i, logits) {
			break
		}
		at := dec.Next(i)
		for r := 0; r < b; r++ {
			copy(x[r*d:(r+1)*d], emb[int(tok[r])*d:])
		}
		for l := 0; l < cfg.NumLayers; l++ {
			ln := func(s string) string { return model.LayerName(l, s) }
			fail(engine.RMSNorm(b, d, x, m.Params[ln("input_layernorm.weight")], eps, h, nil))
			m.lin(ln("self_attn.q_proj"), h, b, q)
			m.lin(ln("self_attn.k_proj"), h, b, k)
			m.lin(ln("self_attn.v_proj"), h, b, vv)
			fail(engine.RoPE(b, hq, dh, pos, cos, sin, qs, q, false))
			fail(engine.RoPE(b, hkv, dh, pos, cos, sin, 1, k, false))
			for r := 0; r < b; r++ {
				cacheWrite(kc[l], vc[l], k[r*kw:], vv[r*kw:], r, at, s, hkv, dh)
			}
			fail(engine.AttentionDecode(b, at+1, s, hq, hkv, dh, q, kc[l], vc[l], keyMask, o))
			m.lin(ln("self_attn.o_proj"), o, b, y)
			for j := range x {
				x[j] += y[j]
			}
			fail(engine.RMSNorm(b, d, x, m.Params[ln("post_attention_layernorm.weight")], eps, h, nil))
			m.lin(ln("mlp.gate_proj"), h, b, gate)
			m.lin(ln("mlp.up_proj"), h, b, up)
			fail(engine.SwiGLU(gate, up, act))
			m.lin(ln("mlp.down_proj"), act, b, y)
			for j := range x {
				x[j] += y[j]
			}
		}
		fail(engine.RMSNorm(b, d, x, m.Params[model.NameFinalNorm], eps, h, nil))
		fail(engine.Sgemm(false, true, b, v, d, 1, h, d, head, d, 0, logits, v))
	}
	return dec.Rollout(), nil
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
