package tokenizer

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// SentencePiece piece types (sentencepiece_model.proto ModelProto.SentencePiece.Type).
const (
	spNormal      = 1
	spUnknown     = 2
	spControl     = 3
	spUserDefined = 4
	spUnused      = 5
	spByte        = 6
)

// SentencePiece is a SentencePiece BPE model (Llama 2's tokenizer.model) with its
// encoder written here: github.com/eliben/go-sentencepiece v0.6.0 refuses Llama 2's
// normalizer spec, so the ModelProto is read with protowire and the BPE of
// bpe_model.cc is reimplemented (identity normalization only).
type SentencePiece struct {
	table       mergeTable
	types       []int8
	all         map[string]int32 // every piece (PieceToId: normal and reserved)
	userDefined map[string]struct{}
	maxUserLen  int
	byteIDs     [256]int32
	byteOK      bool
	bos, eos    int32
	unk, pad    int32
	chunked     bool // no piece crosses the start of a ▁ run: encode per chunk (bpe.go)
	cache       chunkCache
	// Normalizer spec.
	addDummyPrefix, removeExtraWS, escapeWS bool
	info                                    Info
}

// ParseSentencePiece parses a serialized ModelProto of model type BPE.
func ParseSentencePiece(b []byte) (*SentencePiece, error) {
	t := &SentencePiece{
		all:            map[string]int32{},
		userDefined:    map[string]struct{}{},
		unk:            0,
		bos:            1,
		eos:            2,
		pad:            -1,
		addDummyPrefix: true, removeExtraWS: true, escapeWS: true,
	}
	t.table.mergeable = map[string]int32{}
	modelType := int64(1) // UNIGRAM is the proto default
	byteFallback := false
	normName := ""
	var charsmap []byte
	err := walkProto(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch num {
		case 1: // pieces
			if typ != protowire.BytesType {
				return errors.New("pieces: wrong wire type")
			}
			piece, score, ptype := "", float32(0), int64(spNormal)
			if err := walkProto(v, func(n protowire.Number, ty protowire.Type, v2 []byte, x2 uint64) error {
				switch n {
				case 1:
					piece = string(v2)
				case 2:
					score = math.Float32frombits(uint32(x2))
				case 3:
					ptype = int64(x2)
				}
				return nil
			}); err != nil {
				return fmt.Errorf("piece %d: %w", len(t.table.pieces), err)
			}
			id := int32(len(t.table.pieces))
			t.table.pieces = append(t.table.pieces, piece)
			t.table.scores = append(t.table.scores, score)
			t.types = append(t.types, int8(ptype))
			if _, dup := t.all[piece]; dup {
				return fmt.Errorf("piece %d %q: duplicated", id, piece)
			}
			t.all[piece] = id
			switch ptype {
			case spNormal, spUserDefined, spUnused:
				t.table.mergeable[piece] = id
			}
			if ptype == spUserDefined {
				t.userDefined[piece] = struct{}{}
				t.maxUserLen = max(t.maxUserLen, len(piece))
			}
			if ptype == spUnknown {
				t.unk = id
			}
		case 2: // trainer_spec
			if typ != protowire.BytesType {
				return errors.New("trainer_spec: wrong wire type")
			}
			return walkProto(v, func(n protowire.Number, ty protowire.Type, v2 []byte, x2 uint64) error {
				switch n {
				case 3:
					modelType = int64(x2)
				case 35:
					byteFallback = x2 != 0
				case 41:
					t.bos = int32(x2)
				case 42:
					t.eos = int32(x2)
				case 43:
					t.pad = int32(x2)
				}
				return nil
			})
		case 3: // normalizer_spec
			if typ != protowire.BytesType {
				return errors.New("normalizer_spec: wrong wire type")
			}
			return walkProto(v, func(n protowire.Number, ty protowire.Type, v2 []byte, x2 uint64) error {
				switch n {
				case 1:
					normName = string(v2)
				case 2:
					charsmap = v2
				case 3:
					t.addDummyPrefix = x2 != 0
				case 4:
					t.removeExtraWS = x2 != 0
				case 5:
					t.escapeWS = x2 != 0
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sentencepiece model: %w", err)
	}
	if modelType != 2 {
		return nil, fmt.Errorf("sentencepiece model: model type %d, only BPE (2) is supported", modelType)
	}
	if len(charsmap) > 0 || (normName != "" && normName != "identity") {
		return nil, fmt.Errorf("sentencepiece model: normalizer %q with a precompiled charsmap is not supported (only identity)", normName)
	}
	n := len(t.table.pieces)
	if n == 0 {
		return nil, errors.New("sentencepiece model: no pieces")
	}
	for _, id := range []int32{t.bos, t.eos, t.unk} {
		if id < 0 || int(id) >= n {
			return nil, fmt.Errorf("sentencepiece model: special id %d out of range [0,%d)", id, n)
		}
	}
	if byteFallback {
		t.byteOK = true
		for c := 0; c < 256; c++ {
			id, ok := t.all[fmt.Sprintf("<0x%02X>", c)]
			if !ok || t.types[id] != spByte {
				return nil, fmt.Errorf("sentencepiece model: byte_fallback set but piece <0x%02X> is missing", c)
			}
			t.byteIDs[c] = id
		}
	}
	// Chunking needs escaped whitespace, no user-defined symbols and no piece that
	// crosses the start of a ▁ run.
	t.chunked = t.escapeWS && t.maxUserLen == 0
	for p := range t.table.mergeable {
		if t.chunked && crossesSpace(p, spaceSymbol) {
			t.chunked = false
		}
	}
	pad := t.pad
	if pad < 0 {
		pad = t.unk // no pad piece: use <unk> (the reference masks seq != unk anyway)
	}
	t.info = Info{Kind: "sentencepiece", VocabSize: n, BOS: t.bos, EOS: t.eos, Pad: pad, Unk: t.unk}
	return t, nil
}

// walkProto calls f for each field of a protobuf message: v is the payload of a
// bytes field, x the value of a varint/fixed field.
func walkProto(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var y uint32
			y, n = protowire.ConsumeFixed32(b)
			x = uint64(y)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

const spaceSymbol = "\u2581" // ▁

// normalize applies the identity normalizer spec: malformed UTF-8 bytes become
// U+FFFD, optional removal of extra whitespace, the dummy prefix, and spaces -> ▁
// (normalizer.cc Normalizer::Normalize with an empty charsmap).
func (t *SentencePiece) normalize(text string) string {
	if !utf8.ValidString(text) {
		text = decodeBytes([]byte(text))
	}
	if t.removeExtraWS {
		text = strings.Join(strings.FieldsFunc(text, func(r rune) bool { return r == ' ' }), " ")
	}
	if text == "" {
		return ""
	}
	if t.addDummyPrefix {
		text = " " + text
	}
	if t.escapeWS {
		text = strings.ReplaceAll(text, " ", spaceSymbol)
	}
	return text
}

// Encode implements SentencePieceProcessor.Encode(text, add_bos=addBOS).
func (t *SentencePiece) Encode(text string, addBOS bool) []int32 {
	norm := t.normalize(text)
	out := make([]int32, 0, len(norm)/3+2)
	if addBOS {
		out = append(out, t.bos)
	}
	if !t.chunked {
		return t.encodeChunk(norm, out)
	}
	return t.cache.encode(norm, spaceSymbol, out, t.encodeChunk)
}

// encodeChunk appends the BPE ids of normalized text (bpe_model.cc Encode, then
// byte fallback for pieces outside the vocabulary).
func (t *SentencePiece) encodeChunk(norm string, out []int32) []int32 {
	st := statePool.Get().(*bpeState)
	defer statePool.Put(st)
	st.syms = st.syms[:0]
	for i := 0; i < len(norm); {
		n := 0
		if t.maxUserLen > 0 { // user-defined symbols are atomic, longest match first
			for l := min(t.maxUserLen, len(norm)-i); l > 0; l-- {
				if _, ok := t.userDefined[norm[i:i+l]]; ok {
					n = l
					break
				}
			}
		}
		if n == 0 {
			_, n = utf8.DecodeRuneInString(norm[i:])
		}
		st.syms = append(st.syms, symbol{piece: norm[i : i+n], id: -1})
		i += n
	}
	st.link()
	st.merge(&t.table)
	for i := int32(0); len(st.syms) > 0 && i >= 0; i = st.syms[i].next {
		s := &st.syms[i]
		id, ok := t.all[s.piece]
		if ok && t.types[id] == spUnused {
			ok = false // unused pieces are never emitted
		}
		switch {
		case ok:
			out = append(out, id)
		case t.byteOK:
			for k := 0; k < len(s.piece); k++ {
				out = append(out, t.byteIDs[s.piece[k]])
			}
		default:
			out = append(out, t.unk)
		}
	}
	return out
}

// Decode implements SentencePieceProcessor.Decode: control pieces are dropped,
// byte pieces are joined as bytes, ▁ becomes a space and the dummy-prefix space of
// the first piece is removed. <unk> is the pad id and is skipped like padding
// (SentencePiece prints " ⁇ "; with byte fallback the encoder never emits it).
func (t *SentencePiece) Decode(ids []int32) string {
	buf := make([]byte, 0, len(ids)*4)
	first := true
	for _, id := range ids {
		if id < 0 || int(id) >= len(t.table.pieces) {
			continue
		}
		switch t.types[id] {
		case spControl:
			continue
		case spByte:
			p := t.table.pieces[id]
			var c byte
			for k := 3; k < 5 && k < len(p); k++ {
				c = c<<4 | unhex(p[k])
			}
			buf = append(buf, c)
			first = false
			continue
		case spUnknown:
			if id == t.info.Pad {
				continue // padding (pad = <unk>); the encoder never emits <unk> with byte fallback
			}
			buf = append(buf, " \u2047 "...)
			first = false
			continue
		}
		p := t.table.pieces[id]
		if first && t.addDummyPrefix && strings.HasPrefix(p, spaceSymbol) {
			p = p[len(spaceSymbol):]
		}
		first = false
		if t.escapeWS {
			buf = appendUnescaped(buf, p)
		} else {
			buf = append(buf, p...)
		}
	}
	return decodeBytes(buf)
}

func appendUnescaped(buf []byte, p string) []byte {
	for {
		i := strings.Index(p, spaceSymbol)
		if i < 0 {
			return append(buf, p...)
		}
		buf = append(append(buf, p[:i]...), ' ')
		p = p[i+len(spaceSymbol):]
	}
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	}
	return 0
}

// BOS implements Tokenizer.
func (t *SentencePiece) BOS() int32 { return t.bos }

// EOS implements Tokenizer.
func (t *SentencePiece) EOS() int32 { return t.eos }

// Pad implements Tokenizer: the model's pad id, or <unk> (0 for Llama 2) when it has none.
func (t *SentencePiece) Pad() int32 { return t.info.Pad }

// Unk implements Tokenizer.
func (t *SentencePiece) Unk() int32 { return t.unk }

// VocabSize implements Tokenizer.
func (t *SentencePiece) VocabSize() int { return len(t.table.pieces) }

// Piece implements Tokenizer.
func (t *SentencePiece) Piece(id int32) string {
	if id < 0 || int(id) >= len(t.table.pieces) {
		return ""
	}
	return t.table.pieces[id]
}

// Info implements Tokenizer.
func (t *SentencePiece) Info() Info { return t.info }
