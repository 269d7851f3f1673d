package tokenizer

import (
	"slices"
	"testing"
)

// TestRetokenize: a tok512 sequence (BOS, prompt template, response, EOS, pads) re-tokenised for
// the Llama-2 vocabulary is the Llama-2 encoding of the same text plus EOS, as the reference's
// batch_retokenize (decode with special tokens skipped, append EOS, encode).
func TestRetokenize(t *testing.T) {
	small, err := Load(asset(t, "data/models/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	llama, err := Load(asset(t, "data/models/tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	llama2, err := Load(asset(t, "data/models/tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	if Same(small, llama) || !Same(llama, llama2) || !Same(small, small) {
		t.Fatalf("Same: tok512/llama %v, llama/llama %v", Same(small, llama), Same(llama, llama2))
	}
	text := "BEGINNING OF CONVERSATION: USER: Where is the dog? ASSISTANT:The dog is in the park."
	ids := append(small.Encode(text, true), small.EOS(), small.Pad(), small.Pad())
	got := Retokenize(small, llama, ids)
	want := append(llama.Encode(text, true), llama.EOS())
	if !slices.Equal(got, want) {
		t.Fatalf("retokenized %v\nwant %v", got, want)
	}
	if back := Retokenize(llama, small, got); !slices.Equal(back, ids[:len(ids)-2]) {
		t.Errorf("round trip %v, want %v", back, ids[:len(ids)-2])
	}
}
