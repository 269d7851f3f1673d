package tokenizer

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"testing"
)

// benchTexts returns hh-rlhf dialogues (real text of the demo's length mix).
func benchTexts(b testing.TB) ([]string, int) {
	f, err := os.Open(asset(b, "data/helpful/hh-rlhf-helpful-base-test.jsonl.gz"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	var texts []string
	n := 0
	for _, line := range bytes.Split(raw, []byte("\n")) {
		var r struct{ Chosen string }
		if json.Unmarshal(line, &r) == nil && r.Chosen != "" {
			texts = append(texts, r.Chosen)
			n += len(r.Chosen)
			if len(texts) == 500 {
				break
			}
		}
	}
	return texts, n
}

func benchEncode(b *testing.B, file string) {
	tok := MustLoad(asset(b, "data/models/"+file))
	texts, n := benchTexts(b)
	b.ResetTimer()
	toks := 0
	for i := 0; i < b.N; i++ {
		for _, s := range texts {
			toks += len(tok.Encode(s, true))
		}
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(n)*float64(b.N)/sec/1e6, "MB/s")
	b.ReportMetric(float64(toks)/sec, "tokens/s")
}

// BenchmarkEncodeTok512 measures llama2.c BPE with the 512-token vocabulary (one core).
func BenchmarkEncodeTok512(b *testing.B) { benchEncode(b, "tok512.bin") }

// BenchmarkEncodeLlama2C measures llama2.c BPE with the 32000-token vocabulary (one core).
func BenchmarkEncodeLlama2C(b *testing.B) { benchEncode(b, "tokenizer.bin") }

// BenchmarkEncodeSentencePiece measures the Llama 2 SentencePiece encoder (one core).
func BenchmarkEncodeSentencePiece(b *testing.B) { benchEncode(b, "tokenizer.model") }
