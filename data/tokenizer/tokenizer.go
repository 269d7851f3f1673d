// Package tokenizer implements the two LLaMA tokenizers the project uses, exactly:
// SentencePiece BPE models (tokenizer.model, Llama 2) and llama2.c's exported
// vocabularies (tokenizer.bin, tok512.bin), both with run.c / SentencePiece
// semantics (BOS first, dummy-prefix space only for non-empty text, whitespace
// runs kept, no NFKC, byte fallback <0xNN> = id byte+3, literal "<s>" is text).
//
// Pad: neither vocabulary has a pad token. Pad() returns 0 (<unk>), as the
// reference's attention mask is seq != pad && seq != unk, so pad = unk loses nothing.
package tokenizer

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Tokenizer turns text into LLaMA token ids and back. Implementations are safe for
// concurrent use.
type Tokenizer interface {
	// Encode returns the ids of text, with BOS first when addBOS is set.
	Encode(text string, addBOS bool) []int32
	// Decode returns the text of ids: control tokens are skipped, byte pieces are
	// joined and decoded as UTF-8, and the leading dummy-prefix space is dropped.
	Decode(ids []int32) string
	// BOS is the begin-of-sequence id (1 for LLaMA).
	BOS() int32
	// EOS is the end-of-sequence id (2 for LLaMA).
	EOS() int32
	// Pad is the padding id: 0 (<unk>) since LLaMA vocabularies have none.
	Pad() int32
	// Unk is the unknown-token id (0 for LLaMA).
	Unk() int32
	// VocabSize is the number of ids.
	VocabSize() int
	// Piece returns the vocabulary string of id ("" when out of range).
	Piece(id int32) string
	// Info describes the tokenizer (kind, file hash) for manifests and checkpoints.
	Info() Info
}

// Info identifies a loaded tokenizer.
type Info struct {
	// Kind is "sentencepiece" or "llama2c".
	Kind string `json:"kind"`
	// Path is the file it was loaded from.
	Path string `json:"path"`
	// SHA256 is the hex sha256 of the file's bytes.
	SHA256    string `json:"sha256"`
	VocabSize int    `json:"vocab_size"`
	BOS       int32  `json:"bos"`
	EOS       int32  `json:"eos"`
	Pad       int32  `json:"pad"`
	Unk       int32  `json:"unk"`
}

// Load reads a tokenizer file, choosing the format by content: a SentencePiece
// ModelProto (tokenizer.model) or a llama2.c vocabulary (*.bin).
func Load(path string) (Tokenizer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	sum := sha256.Sum256(b)
	hash := hex.EncodeToString(sum[:])
	ext := strings.ToLower(filepath.Ext(path))
	if ext == ".bin" || (ext != ".model" && looksLlama2C(b)) {
		t, err := ParseLlama2C(b)
		if err != nil {
			return nil, fmt.Errorf("tokenizer %s: %w", path, err)
		}
		t.info.Path, t.info.SHA256 = path, hash
		return t, nil
	}
	t, err := ParseSentencePiece(b)
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", path, err)
	}
	t.info.Path, t.info.SHA256 = path, hash
	return t, nil
}

// MustLoad is Load for tests and main: it panics on error.
func MustLoad(path string) Tokenizer {
	t, err := Load(path)
	if err != nil {
		panic(err)
	}
	return t
}

// looksLlama2C reports whether b parses as a llama2.c vocabulary header followed by
// a first entry "<unk>".
func looksLlama2C(b []byte) bool {
	if len(b) < 4+8+5 {
		return false
	}
	n := int(uint32(b[8]) | uint32(b[9])<<8 | uint32(b[10])<<16 | uint32(b[11])<<24)
	return n == 5 && string(b[12:17]) == "<unk>"
}

// decodeBytes turns the raw bytes of decoded pieces into a valid UTF-8 string,
// replacing each byte of an invalid sequence with U+FFFD (as SentencePiece does).
func decodeBytes(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n <= 1 {
			sb.WriteString("\uFFFD")
			b = b[1:]
			continue
		}
		sb.Write(b[:n])
		b = b[n:]
	}
	return sb.String()
}
