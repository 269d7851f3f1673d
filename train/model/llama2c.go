package model

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// LoadLlama2C reads a llama2.c checkpoint (karpathy/llama2.c run.c format:
// a 7×int32 header dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size, seq_len, then float32 weights). A positive vocab_size means the
// classifier is the embedding table (TieWordEmbeddings). Weights come back in
// HF layout: q_proj/k_proj rows are permuted from llama2.c's interleaved RoPE
// pairs to HF's rotate-half halves, as transformers' convert script does.
func LoadLlama2C(path string) (*Config, Weights, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	cfg, err := readLlama2CHeader(path, f, st.Size())
	if err != nil {
		return nil, nil, err
	}
	dim, hidden, nl, nh, nkv, vocab, seqLen := cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.NumKVHeads, cfg.VocabSize, cfg.MaxPositions
	shared := cfg.TieWordEmbeddings
	dh := dim / nh
	kvd := nkv * dh
	read := func(name string, shape ...int) (*Tensor, error) {
		t := NewTensor(shape...)
		if err := binary.Read(f, binary.LittleEndian, t.Data); err != nil {
			return nil, fmt.Errorf("%s: tensor %s: %w", path, name, err)
		}
		return t, nil
	}
	// stacked reads an [nl, shape...] block and splits it per layer.
	w := Weights{}
	stacked := func(suffix string, perm bool, heads int, shape ...int) error {
		for l := 0; l < nl; l++ {
			t, err := read(suffix, shape...)
			if err != nil {
				return err
			}
			if perm {
				t = permuteRope(t, heads, dh)
			}
			w[LayerName(l, suffix)] = t
		}
		return nil
	}
	if w[NameEmbed], err = read(NameEmbed, vocab, dim); err != nil {
		return nil, nil, err
	}
	steps := []struct {
		suffix string
		perm   bool
		heads  int
		shape  []int
	}{
		{"input_layernorm.weight", false, 0, []int{dim}},
		{"self_attn.q_proj.weight", true, nh, []int{nh * dh, dim}},
		{"self_attn.k_proj.weight", true, nkv, []int{kvd, dim}},
		{"self_attn.v_proj.weight", false, 0, []int{kvd, dim}},
		{"self_attn.o_proj.weight", false, 0, []int{dim, nh * dh}},
		{"post_attention_layernorm.weight", false, 0, []int{dim}},
		{"mlp.gate_proj.weight", false, 0, []int{hidden, dim}}, // w1
		{"mlp.down_proj.weight", false, 0, []int{dim, hidden}}, // w2
		{"mlp.up_proj.weight", false, 0, []int{hidden, dim}},   // w3
	}
	for _, s := range steps {
		if err := stacked(s.suffix, s.perm, s.heads, s.shape...); err != nil {
			return nil, nil, err
		}
	}
	if w[NameFinalNorm], err = read(NameFinalNorm, dim); err != nil {
		return nil, nil, err
	}
	// Skip the legacy freq_cis_real/imag tables (seq_len × head_size/2 each).
	if _, err := f.Seek(int64(seqLen*dh)*4, io.SeekCurrent); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if !shared {
		if w[NameLMHead], err = read(NameLMHead, vocab, dim); err != nil {
			return nil, nil, err
		}
	}
	for _, name := range w.Names() {
		if err := checkFinite(path, name, w[name].Data); err != nil {
			return nil, nil, err
		}
	}
	return cfg, w, nil
}

// permuteRope reorders the rows of a q/k projection [heads*dh, in] from
// llama2.c's interleaved pairs (2i, 2i+1) to HF's halves (i, i+dh/2):
// HF row h*dh/2+i = llama2.c row 2i+h, within each head.
func permuteRope(t *Tensor, heads, dh int) *Tensor {
	in := t.Shape[1]
	out := NewTensor(t.Shape...)
	half := dh / 2
	for hd := 0; hd < heads; hd++ {
		for h := 0; h < 2; h++ {
			for i := 0; i < half; i++ {
				src := (hd*dh + 2*i + h) * in
				dst := (hd*dh + h*half + i) * in
				copy(out.Data[dst:dst+in], t.Data[src:src+in])
			}
		}
	}
	return out
}

// readLlama2CHeader reads and checks the header of a llama2.c checkpoint of size bytes from r:
// every field in range, a valid configuration, and the file size it implies.
func readLlama2CHeader(path string, r io.Reader, size int64) (*Config, error) {
	var hdr [7]int32
	if err := binary.Read(r, binary.LittleEndian, &hdr); err != nil {
		return nil, fmt.Errorf("%s: header: %w", path, err)
	}
	dim, hidden, nl, nh, nkv, vocab, seqLen := int(hdr[0]), int(hdr[1]), int(hdr[2]), int(hdr[3]), int(hdr[4]), int(hdr[5]), int(hdr[6])
	shared := vocab > 0
	if vocab < 0 {
		vocab = -vocab
	}
	cfg := &Config{
		Architecture: "LlamaForCausalLM", ModelType: "llama",
		HiddenSize: dim, IntermediateSize: hidden, NumLayers: nl, NumHeads: nh, NumKVHeads: nkv,
		VocabSize: vocab, MaxPositions: seqLen, RMSNormEps: 1e-5, RopeTheta: 10000,
		TieWordEmbeddings: shared, BOS: 1, EOS: 2, Pad: 0,
	}
	const limit = 1 << 20
	for i, v := range []int{dim, hidden, nl, nh, nkv, vocab, seqLen} {
		if v <= 0 || v > limit {
			return nil, fmt.Errorf("%s: header field %d = %d out of range", path, i, v)
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dh := dim / nh
	kvd := nkv * dh
	// Rough size first, in float64, so absurd headers cannot overflow the
	// exact computation below.
	approx := 4 * (2*float64(vocab)*float64(dim) + float64(nl)*(4*float64(dim)*float64(dim)+3*float64(dim)*float64(hidden)) + float64(seqLen)*float64(dh))
	if approx > 4*float64(size)+1e6 {
		return nil, fmt.Errorf("%s: header %v implies about %.0f bytes, file has %d", path, hdr, approx, size)
	}
	want := int64(28) + 4*int64(vocab*dim+nl*(2*dim+dim*dim+2*dim*kvd+dim*dim+3*dim*hidden)+dim+seqLen*dh)
	if !shared {
		want += 4 * int64(vocab*dim)
	}
	if size != want {
		return nil, fmt.Errorf("%s: file has %d bytes, header %v implies %d", path, size, hdr, want)
	}
	return cfg, nil
}
