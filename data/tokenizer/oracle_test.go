package tokenizer

import (
	"bytes"
	"os"
	"slices"
	"testing"

	sentencepiece "github.com/eliben/go-sentencepiece"
	"google.golang.org/protobuf/encoding/protowire"
)

// elibenOracle loads tokenizer.model into github.com/eliben/go-sentencepiece, an
// independent BPE implementation, after switching the normalizer's
// add_dummy_prefix off (the library refuses it); callers prepend the dummy " ".
func elibenOracle(t testing.TB) *sentencepiece.Processor {
	b, err := os.ReadFile(asset(t, "data/models/tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	err = walkProto(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		if num != 3 {
			return nil
		}
		var ns []byte
		if err := walkProto(v, func(n protowire.Number, ty protowire.Type, v2 []byte, x2 uint64) error {
			switch {
			case n == 3 || n == 4: // add_dummy_prefix, remove_extra_whitespaces: false
				ns = protowire.AppendTag(ns, n, protowire.VarintType)
				ns = protowire.AppendVarint(ns, 0)
			case ty == protowire.BytesType:
				ns = protowire.AppendTag(ns, n, ty)
				ns = protowire.AppendBytes(ns, v2)
			case ty == protowire.VarintType:
				ns = protowire.AppendTag(ns, n, ty)
				ns = protowire.AppendVarint(ns, x2)
			}
			return nil
		}); err != nil {
			return err
		}
		out = protowire.AppendTag(out, 3, protowire.BytesType)
		out = protowire.AppendBytes(out, ns)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Keep every other field as is: re-walk and copy fields 1 and 2 raw.
	var rest []byte
	for in := b; len(in) > 0; {
		num, typ, n := protowire.ConsumeTag(in)
		m := protowire.ConsumeFieldValue(num, typ, in[n:])
		if num != 3 {
			rest = append(rest, in[:n+m]...)
		}
		in = in[n+m:]
	}
	p, err := sentencepiece.NewProcessor(bytes.NewReader(append(rest, out...)))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func oracleIDs(p *sentencepiece.Processor, s string) []int32 {
	ids := []int32{1}
	if s == "" {
		return ids
	}
	for _, tk := range p.Encode(" " + s) {
		ids = append(ids, int32(tk.ID))
	}
	return ids
}

// TestAgainstIndependentBPE compares the SentencePiece encoder with eliben's on
// the golden strings and real dialogues.
func TestAgainstIndependentBPE(t *testing.T) {
	oracle := elibenOracle(t)
	sp := MustLoad(asset(t, "data/models/tokenizer.model"))
	texts, _ := benchTexts(t)
	for _, c := range loadTokCases(t) {
		texts = append(texts, c.Text)
		if got := oracleIDs(oracle, c.Text); !slices.Equal(got, c.SP) {
			t.Logf("oracle itself differs from SentencePiece on case %d %q", c.Index, c.Text)
		}
	}
	texts = append(texts, extraCases...)
	for _, s := range texts {
		if got, want := sp.Encode(s, true), oracleIDs(oracle, s); !slices.Equal(got, want) {
			t.Errorf("%.60q: ours %v\noracle %v", s, got[:min(12, len(got))], want[:min(12, len(want))])
		}
	}
}
