package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// repoRoot returns the module root (tests run in data/tokenizer).
func repoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func asset(t testing.TB, rel string) string { return filepath.Join(repoRoot(t), "assets", rel) }

type tokCase struct {
	Index     int      `json:"index"`
	Text      string   `json:"text"`
	Llama2C   []int32  `json:"llama2c_ids"`
	SP        []int32  `json:"sentencepiece_ids"`
	SPPieces  []string `json:"sentencepiece_pieces"`
	SPDecoded string   `json:"sentencepiece_decoded"`
}

func loadTokCases(t *testing.T) []tokCase {
	b, err := os.ReadFile(asset(t, "golden/llama2c/tokenizer_llama2.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Cases []tokCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Cases) < 20 {
		t.Fatalf("only %d golden cases", len(g.Cases))
	}
	return g.Cases
}

// extraCases are strings with known SentencePiece behaviour that the golden half
// may not hold; their ids are checked against the llama2.c encoder (they agree on
// all strings tested upstream) and round-tripped.
var extraCases = []string{"hello world", " ", "\n", "a\tb", "<s>", "Zoë", "日本語", "🤖", "x  y   z"}

func TestSentencePieceGolden(t *testing.T) {
	sp := MustLoad(asset(t, "data/models/tokenizer.model"))
	for _, c := range loadTokCases(t) {
		got := sp.Encode(c.Text, true)
		if !slices.Equal(got, c.SP) {
			t.Errorf("case %d %q: sentencepiece ids\n got %v\nwant %v", c.Index, c.Text, got, c.SP)
			continue
		}
		for i, id := range got {
			want := c.SPPieces[i]
			if sp.Piece(id) != want {
				t.Errorf("case %d: piece %d = %q, want %q", c.Index, i, sp.Piece(id), want)
			}
		}
		if d := sp.Decode(got); d != c.SPDecoded {
			t.Errorf("case %d: decode = %q, want %q", c.Index, d, c.SPDecoded)
		}
	}
}

func TestLlama2CGolden(t *testing.T) {
	l2 := MustLoad(asset(t, "data/models/tokenizer.bin"))
	sp := MustLoad(asset(t, "data/models/tokenizer.model"))
	for _, c := range loadTokCases(t) {
		if got := l2.Encode(c.Text, true); !slices.Equal(got, c.Llama2C) {
			t.Errorf("case %d %q: llama2c ids\n got %v\nwant %v", c.Index, c.Text, got, c.Llama2C)
		}
		if d := l2.Decode(c.Llama2C); d != c.SPDecoded {
			t.Errorf("case %d: llama2c decode = %q, want %q", c.Index, d, c.SPDecoded)
		}
	}
	for _, s := range extraCases {
		a, b := l2.Encode(s, true), sp.Encode(s, true)
		if !slices.Equal(a, b) {
			t.Errorf("%q: llama2c %v != sentencepiece %v", s, a, b)
		}
		if d := sp.Decode(b); d != s {
			t.Errorf("%q: decode round trip = %q", s, d)
		}
	}
}

func TestTok512Stories(t *testing.T) {
	tok := MustLoad(asset(t, "data/models/tok512.bin"))
	b, err := os.ReadFile(asset(t, "golden/llama2c/stories260k_greedy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Cases []struct {
			Name       string  `json:"name"`
			Prompt     string  `json:"prompt"`
			PromptIDs  []int32 `json:"prompt_ids"`
			AllIDs     []int32 `json:"all_ids"`
			Unfiltered string  `json:"text_unfiltered"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range g.Cases {
		if got := tok.Encode(c.Prompt, true); !slices.Equal(got, c.PromptIDs) {
			t.Errorf("%s %q: ids\n got %v\nwant %v", c.Name, c.Prompt, got, c.PromptIDs)
		}
		if d := tok.Decode(c.AllIDs); d != c.Unfiltered {
			t.Errorf("%s: decode\n got %q\nwant %q", c.Name, d, c.Unfiltered)
		}
	}
	if tok.VocabSize() != 512 || tok.BOS() != 1 || tok.EOS() != 2 || tok.Pad() != 0 {
		t.Errorf("specials: vocab %d bos %d eos %d pad %d", tok.VocabSize(), tok.BOS(), tok.EOS(), tok.Pad())
	}
}

// TestChunkingExact checks that chunked encoding (bpe.go) equals whole-text BPE
// on real dialogues and on space-heavy strings.
func TestChunkingExact(t *testing.T) {
	texts, _ := benchTexts(t)
	texts = append(texts[:100], "a  b   c \n\n  d", "   ", " x", "x ", "▁▁ ▁x▁")
	for _, f := range []string{"tokenizer.model", "tokenizer.bin", "tok512.bin"} {
		tok := MustLoad(asset(t, "data/models/"+f))
		for _, s := range texts {
			got := tok.Encode(s, true)
			var whole []int32
			switch x := tok.(type) {
			case *SentencePiece:
				if !x.chunked {
					t.Fatalf("%s: chunking disabled", f)
				}
				whole = x.encodeChunk(x.normalize(s), []int32{1})
			case *Llama2C:
				if !x.chunked {
					t.Fatalf("%s: chunking disabled", f)
				}
				whole = x.encodeChunk(" "+s, []int32{1})
			}
			if !slices.Equal(got, whole) {
				t.Fatalf("%s %.40q: chunked != whole-text BPE", f, s)
			}
		}
	}
}

func TestSpecials(t *testing.T) {
	for _, f := range []string{"tokenizer.model", "tokenizer.bin", "tok512.bin"} {
		tok := MustLoad(asset(t, "data/models/"+f))
		if tok.BOS() != 1 || tok.EOS() != 2 || tok.Pad() != 0 || tok.Unk() != 0 {
			t.Errorf("%s: bos %d eos %d pad %d unk %d", f, tok.BOS(), tok.EOS(), tok.Pad(), tok.Unk())
		}
		if got := tok.Encode("", true); !slices.Equal(got, []int32{1}) {
			t.Errorf("%s: empty text = %v, want [1]", f, got)
		}
		if got := tok.Encode("", false); len(got) != 0 {
			t.Errorf("%s: empty text without BOS = %v", f, got)
		}
		if got := tok.Decode([]int32{1, 403, 2, 0, 0}); got != tok.Decode([]int32{403}) {
			t.Errorf("%s: padding and control ids not skipped: %q", f, got)
		}
		if got := tok.Encode("<s>", true); slices.Contains(got[1:], 1) {
			t.Errorf("%s: literal <s> became the control id: %v", f, got)
		}
		info := tok.Info()
		if len(info.SHA256) != 64 || info.VocabSize != tok.VocabSize() {
			t.Errorf("%s: info %+v", f, info)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"empty.bin":   "",
		"short.bin":   "\x07\x00\x00\x00\x00\x00",
		"bad.model":   "\x0a\xff\xff",
		"nopiece.bin": "\x07\x00\x00\x00",
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(p); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err = %v, want an error naming the file", name, err)
		}
	}
}

func FuzzEncodeDecode(f *testing.F) {
	sp := MustLoad(asset(f, "data/models/tokenizer.model"))
	l2 := MustLoad(asset(f, "data/models/tokenizer.bin"))
	oracle := elibenOracle(f)
	for _, s := range append(extraCases, "", "\xff\xfe", "a\x00b", "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:") {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a := sp.Encode(s, true)
		b := l2.Encode(s, true)
		// Chunked (cached) encoding equals BPE over the whole text.
		spt, l2t := sp.(*SentencePiece), l2.(*Llama2C)
		if whole := spt.encodeChunk(spt.normalize(s), []int32{1}); !slices.Equal(a, whole) {
			t.Fatalf("%q: sentencepiece chunked %v != whole %v", s, a, whole)
		}
		if s != "" {
			if whole := l2t.encodeChunk(" "+s, []int32{1}); !slices.Equal(b, whole) {
				t.Fatalf("%q: llama2c chunked %v != whole %v", s, b, whole)
			}
		}
		for _, id := range append(a, b...) {
			if id < 0 || int(id) >= sp.VocabSize() {
				t.Fatalf("%q: id %d out of range", s, id)
			}
		}
		if !utf8.ValidString(s) || strings.ContainsAny(s, "\uFFFD\u2581") {
			return // SentencePiece maps malformed bytes to U+FFFD and ▁ to a space; llama2.c does neither
		}
		if !slices.Equal(a, b) {
			t.Fatalf("%q: sentencepiece %v != llama2c %v", s, a, b)
		}
		if o := oracleIDs(oracle, s); !slices.Equal(a, o) {
			t.Fatalf("%q: sentencepiece %v != eliben/go-sentencepiece %v", s, a, o)
		}
		if d := sp.Decode(a); d != s {
			t.Fatalf("%q: round trip %q", s, d)
		}
	})
}

func FuzzParseLlama2C(f *testing.F) {
	b, err := os.ReadFile(asset(f, "data/models/tok512.bin"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:100])
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := ParseLlama2C(b)
		if err != nil {
			return
		}
		ids := tok.Encode("Once upon a time ü", true)
		_ = tok.Decode(ids)
	})
}

func FuzzParseSentencePiece(f *testing.F) {
	b, err := os.ReadFile(asset(f, "data/models/tokenizer.model"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b[:2000])
	f.Add([]byte{0x0a, 0x05, 0x0a, 0x03, 'a', 'b', 'c'})
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := ParseSentencePiece(b)
		if err != nil {
			return
		}
		_ = tok.Decode(tok.Encode("hello wörld", true))
	})
}
