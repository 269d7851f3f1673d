package llama

import (
	"fmt"
	"math"
	"slices"

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
	b := len(prompts)
	if b == 0 {
		return nil, fmt.Errorf("generate: no prompts")
	}
	if opts.MaxNewTokens <= 0 {
		return nil, fmt.Errorf("generate: MaxNewTokens %d must be > 0", opts.MaxNewTokens)
	}
	maxLen := 0
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("generate: prompt %d is empty (it needs at least BOS)", i)
		}
		for _, id := range p {
			if id < 0 || int(id) >= cfg.VocabSize {
				return nil, fmt.Errorf("generate: prompt %d: token %d outside vocabulary [0, %d)", i, id, cfg.VocabSize)
			}
		}
		maxLen = max(maxLen, len(p))
	}
	if opts.Pad < 0 || int(opts.Pad) >= cfg.VocabSize {
		return nil, fmt.Errorf("generate: pad id %d outside vocabulary [0, %d)", opts.Pad, cfg.VocabSize)
	}
	pw := (maxLen + model.PromptBucket - 1) / model.PromptBucket * model.PromptBucket
	s := pw + opts.MaxNewTokens
	d, dh, f, v := cfg.HiddenSize, cfg.Dh(), cfg.IntermediateSize, cfg.VocabSize
	hq, hkv := cfg.NumHeads, cfg.NumKVHeads
	kw := hkv * dh

	ids := make([]int32, b*pw)
	keyMask := make([]float32, b*s)
	pmask := make([]float32, b*pw)
	history := make([][]int32, b)
	nreal := make([]int32, b)
	for r, p := range prompts {
		off := pw - len(p)
		for i := 0; i < pw; i++ {
			ids[r*pw+i] = opts.Pad
		}
		copy(ids[r*pw+off:], p)
		for i := off; i < pw; i++ {
			keyMask[r*s+i] = 1
			pmask[r*pw+i] = 1
		}
		history[r] = slices.Clone(p)
		nreal[r] = int32(len(p))
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

	rng := model.NewSamplingRNG(opts.Seed)
	resp := make([][]int32, b)
	done := make([]bool, b)
	tok := make([]int32, b)
	pos := make([]int32, b)
	var sc model.Sampler
	for i := 0; ; i++ {
		allDone := true
		for r := 0; r < b; r++ {
			if done[r] {
				tok[r] = opts.Pad
				continue
			}
			t := sc.Sample(logits[r*v:(r+1)*v], history[r], &opts, rng)
			resp[r] = append(resp[r], t)
			history[r] = append(history[r], t)
			tok[r] = t
			if t == opts.EOS && opts.EOS >= 0 {
				done[r] = true
			} else {
				allDone = false
			}
		}
		if allDone || i == opts.MaxNewTokens-1 {
			break
		}
		at := pw + i
		for r := 0; r < b; r++ {
			pos[r] = nreal[r]
			if len(resp[r]) == i+1 {
				keyMask[r*s+at] = 1
				nreal[r]++
			}
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
	longest := 0
	for _, rr := range resp {
		longest = max(longest, len(rr))
	}
	ro = &model.Rollout{PromptWidth: pw, Seq: make([][]int32, b), AttentionMask: make([][]int32, b), ResponseLen: make([]int, b)}
	t := pw + longest
	for r := 0; r < b; r++ {
		row := make([]int32, t)
		copy(row, ids[r*pw:(r+1)*pw])
		copy(row[pw:], resp[r])
		for i := pw + len(resp[r]); i < t; i++ {
			row[i] = opts.Pad
		}
		mk := make([]int32, t)
		for i, id := range row {
			if id != opts.Pad && (opts.Unk < 0 || id != opts.Unk) {
				mk[i] = 1
			}
		}
		ro.Seq[r], ro.AttentionMask[r], ro.ResponseLen[r] = row, mk, len(resp[r])
	}
	return ro, nil
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
