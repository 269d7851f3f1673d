package tokenizer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
)

// Llama2C is a llama2.c vocabulary (tokenizer.bin, tok512.bin) with run.c's encoder.
type Llama2C struct {
	table       mergeTable
	maxTokenLen int
	space       int32 // id of " " (the dummy prefix)
	chunked     bool  // no piece crosses the start of a space run: encode per chunk
	cache       chunkCache
	info        Info
}

// ParseLlama2C parses a llama2.c tokenizer file: int32 max_token_length, then per
// token float32 score, int32 len, len bytes (little-endian, run.c build_tokenizer).
func ParseLlama2C(b []byte) (*Llama2C, error) {
	if len(b) < 4 {
		return nil, errors.New("llama2.c tokenizer: file shorter than its header")
	}
	t := &Llama2C{maxTokenLen: int(int32(binary.LittleEndian.Uint32(b)))}
	t.table.mergeable = make(map[string]int32)
	off := 4
	for off < len(b) {
		if off+8 > len(b) {
			return nil, fmt.Errorf("llama2.c tokenizer: token %d at offset %d: truncated header", len(t.table.pieces), off)
		}
		score := math.Float32frombits(binary.LittleEndian.Uint32(b[off:]))
		n := int(int32(binary.LittleEndian.Uint32(b[off+4:])))
		off += 8
		if n < 0 || off+n > len(b) {
			return nil, fmt.Errorf("llama2.c tokenizer: token %d at offset %d: length %d past the end", len(t.table.pieces), off-4, n)
		}
		p := string(b[off : off+n])
		off += n
		id := int32(len(t.table.pieces))
		t.table.pieces = append(t.table.pieces, p)
		t.table.scores = append(t.table.scores, score)
		// run.c's str_lookup finds any vocabulary string; keep the first on duplicates.
		if _, dup := t.table.mergeable[p]; !dup {
			t.table.mergeable[p] = id
		}
	}
	if len(t.table.pieces) < 259 {
		return nil, fmt.Errorf("llama2.c tokenizer: %d tokens, want at least 259 (3 control + 256 byte pieces)", len(t.table.pieces))
	}
	sp, ok := t.table.mergeable[" "]
	if !ok {
		return nil, errors.New(`llama2.c tokenizer: no " " token for the dummy prefix`)
	}
	t.space = sp
	t.chunked = true
	for _, p := range t.table.pieces {
		if crossesSpace(p, " ") {
			t.chunked = false
			break
		}
	}
	t.info = Info{Kind: "llama2c", VocabSize: len(t.table.pieces), BOS: 1, EOS: 2, Pad: 0, Unk: 0}
	return t, nil
}

// Encode implements run.c encode(text, bos, eos=0).
func (t *Llama2C) Encode(text string, addBOS bool) []int32 {
	out := make([]int32, 0, len(text)/3+2)
	if addBOS {
		out = append(out, 1)
	}
	if text == "" {
		return out
	}
	// The dummy prefix is run.c's lookup of " ", the same id as the character " ".
	full := " " + text
	if !t.chunked {
		return t.encodeChunk(full, out)
	}
	return t.cache.encode(full, " ", out, t.encodeChunk)
}

// encodeChunk appends the run.c BPE ids of text.
func (t *Llama2C) encodeChunk(text string, out []int32) []int32 {
	st := statePool.Get().(*bpeState)
	defer statePool.Put(st)
	st.syms = st.syms[:0]
	// run.c groups a lead byte with up to 3 following continuation bytes, whether
	// or not that is valid UTF-8, then falls back to byte tokens when absent.
	for i := 0; i < len(text); {
		j := i + 1
		for j < len(text) && text[j]&0xC0 == 0x80 && j-i < 4 {
			j++
		}
		if id, ok := t.table.mergeable[text[i:j]]; ok {
			st.syms = append(st.syms, symbol{piece: t.table.pieces[id], id: id})
		} else {
			for k := i; k < j; k++ {
				id := int32(text[k]) + 3
				st.syms = append(st.syms, symbol{piece: t.table.pieces[id], id: id})
			}
		}
		i = j
	}
	st.link()
	st.merge(&t.table)
	for i := int32(0); len(st.syms) > 0 && i >= 0; i = st.syms[i].next {
		out = append(out, st.syms[i].id)
	}
	return out
}

// Decode joins the pieces (run.c decode: <0xNN> pieces are raw bytes), skipping
// the control ids 0-2 and dropping the first piece's leading space (the dummy prefix).
func (t *Llama2C) Decode(ids []int32) string {
	buf := make([]byte, 0, len(ids)*4)
	first := true
	for _, id := range ids {
		if id <= 2 || int(id) >= len(t.table.pieces) {
			continue
		}
		if id < 259 {
			buf = append(buf, byte(id-3))
			first = false
			continue
		}
		p := t.table.pieces[id]
		if first && strings.HasPrefix(p, " ") {
			p = p[1:]
		}
		first = false
		buf = append(buf, p...)
	}
	return decodeBytes(buf)
}

// BOS implements Tokenizer.
func (t *Llama2C) BOS() int32 { return 1 }

// EOS implements Tokenizer.
func (t *Llama2C) EOS() int32 { return 2 }

// Pad implements Tokenizer: 0 (<unk>), llama2.c vocabularies have no pad token.
func (t *Llama2C) Pad() int32 { return 0 }

// Unk implements Tokenizer.
func (t *Llama2C) Unk() int32 { return 0 }

// VocabSize implements Tokenizer.
func (t *Llama2C) VocabSize() int { return len(t.table.pieces) }

// Piece implements Tokenizer.
func (t *Llama2C) Piece(id int32) string {
	if id < 0 || int(id) >= len(t.table.pieces) {
		return ""
	}
	return t.table.pieces[id]
}

// Info implements Tokenizer.
func (t *Llama2C) Info() Info { return t.info }
