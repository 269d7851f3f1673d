package ppo

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// TestWriteSamplesJSONL: the held-out samples are also written as JSON lines of prompt text,
// response text, reward and cost (what `saferlhf judge` re-tokenises), without BOS, EOS or padding.
func TestWriteSamplesJSONL(t *testing.T) {
	tok, err := tokenizer.Load("../../assets/data/models/tok512.bin")
	if err != nil {
		t.Fatal(err)
	}
	p, a := tok.Encode("Hi", true), tok.Encode(" there", false)
	T := 1 + len(p) + len(a) + 2
	S := 1 + len(p)
	seq := append(append(append([]int32{tok.Pad()}, p...), a...), tok.EOS(), tok.Pad())
	mask := make([]float32, T)
	for i := 1; i < T-1; i++ {
		mask[i] = 1
	}
	r := &Rollout{B: 1, T: T, S: S, Seq: seq, Mask: mask, Reward: []float32{0.5}, Cost: []float32{-1.25}}
	dir := t.TempDir()
	if err := writeSamples(filepath.Join(dir, "samples_before.txt"), tok, []*Rollout{r}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "samples_before.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var rec sampleRecord
	if err := json.Unmarshal([]byte(strings.TrimSpace(string(b))), &rec); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if rec.Prompt != "Hi" || rec.Response != " there" || rec.Reward != 0.5 || rec.Cost == nil || *rec.Cost != -1.25 {
		t.Errorf("record %+v (cost %v), want prompt %q, response %q, reward 0.5, cost -1.25", rec, rec.Cost, "Hi", " there")
	}
}
