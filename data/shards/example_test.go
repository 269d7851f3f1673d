package shards_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/shards"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// Example packs the PKU-SafeRLHF sample as safety preferences, streams it
// shuffled, saves the position after a few batches and resumes from it.
func Example() {
	tmp, _ := os.MkdirTemp("", "shards-example")
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "safety")
	tok, err := tokenizer.Load("../../assets/data/models/tok512.bin")
	if err != nil {
		panic(err)
	}
	m, err := shards.Pack(context.Background(), shards.PackOptions{
		Kind:      datasets.KindSafetyPreference,
		Inputs:    []string{"pku-saferlhf:../../assets/data/pku-saferlhf/align-anything-preference-sample.json"},
		Tokenizer: tok,
		Out:       dir,
		Build:     datasets.BuildOptions{MaxLength: 512},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(m.Examples, "examples")

	opts := shards.ReaderOptions{Seed: 1, Shuffle: true, Loop: true}
	r, err := shards.OpenReader(dir, opts, nil)
	if err != nil {
		panic(err)
	}
	batch, _ := r.Batch(4)
	fmt.Println(len(batch), "examples, first sign", batch[0].SaferSign >= batch[0].UnsaferSign)
	saved, _ := json.Marshal(r.Position()) // goes into the checkpoint
	next, _ := r.Next()
	r.Close()

	var pos shards.Position
	_ = json.Unmarshal(saved, &pos)
	r2, _ := shards.OpenReader(dir, opts, &pos)
	defer r2.Close()
	again, _ := r2.Next()
	fmt.Println("resumed at the same example:", len(again.Safer) == len(next.Safer) && again.Safer[len(again.Safer)-1] == next.Safer[len(next.Safer)-1])
	// Output:
	// 32 examples
	// 4 examples, first sign true
	// resumed at the same example: true
}
