package model

import (
	"math"
	"slices"
	"testing"
)

// TestUniformStreams: the per-row draws are uniform on [0, 1) (mean, 16-bin χ² over 64k draws of
// 64 rows), distinct rows and seeds give distinct streams, and a draw is a pure function of
// (key, position).
func TestUniformStreams(t *testing.T) {
	const rows, n, bins = 64, 1000, 16
	var hist [bins]int
	sum := 0.0
	for r := uint64(0); r < rows; r++ {
		key := DeriveSeed(42, r)
		for i := 0; i < n; i++ {
			u := Uniform(key, i)
			if u < 0 || u >= 1 {
				t.Fatalf("row %d draw %d: %g outside [0, 1)", r, i, u)
			}
			sum += u
			hist[int(u*bins)]++
		}
	}
	total := float64(rows * n)
	if m := sum / total; math.Abs(m-0.5) > 0.005 {
		t.Errorf("mean %g, want 0.5", m)
	}
	chi2, want := 0.0, total/bins
	for _, h := range hist {
		chi2 += (float64(h) - want) * (float64(h) - want) / want
	}
	if chi2 > 37.7 { // χ²(15) at p = 0.001
		t.Errorf("χ² over %d bins = %.1f: not uniform", bins, chi2)
	}
	keys := map[uint64]bool{}
	for _, seed := range []uint64{0, 1, 42} {
		for r := uint64(0); r < 1000; r++ {
			keys[DeriveSeed(seed, r)] = true
		}
	}
	if len(keys) != 3000 {
		t.Errorf("%d distinct keys of 3000 (seed, row) pairs", len(keys))
	}
	if Uniform(DeriveSeed(7, 3), 5) != Uniform(DeriveSeed(7, 3), 5) || Uniform(DeriveSeed(7, 3), 5) == Uniform(DeriveSeed(7, 4), 5) {
		t.Error("draws are not a function of (seed, row, position)")
	}
}

// TestGenerateRowStreams: with top-k 50 at temperature 1, a prompt sampled alone with FirstRow =
// its global index gives the response it gets inside a batch (rows of other lengths, so other
// left padding), on the host sampler and with sampling in graph; and batches split at any point
// (as data-parallel ranks split a global batch) give the whole batch's rollout. The batched logits
// may differ from a single row's in the last bits (another matmul blocking); the sampled tokens
// do not, on this model and these prompts.
func TestGenerateRowStreams(t *testing.T) {
	cfg, w := loadStories(t)
	prompts := [][]int32{{1, 403, 407}, {1, 9, 30, 60, 90, 120}, {1}, {1, 261, 378, 432, 383}}
	opts := GenerateOptions{MaxNewTokens: 16, Temperature: 1, TopK: 50, Seed: 11, FirstRow: 100, EOS: 2, Pad: 0, Unk: 0}
	for _, device := range []bool{false, true} {
		gen, err := NewGeneratorFromWeights(getBackend(t), cfg, w)
		if err != nil {
			t.Fatal(err)
		}
		gen.DeviceSampling = device
		whole, err := gen.Generate(prompts, opts)
		if err != nil {
			t.Fatal(err)
		}
		resp := func(ro *Rollout, r int) []int32 { return ro.Seq[r][ro.PromptWidth : ro.PromptWidth+ro.ResponseLen[r]] }
		greedy := opts
		greedy.Temperature = 0
		g, err := gen.Generate(prompts, greedy)
		if err != nil {
			t.Fatal(err)
		}
		sampled := false
		for r := range prompts {
			sampled = sampled || !slices.Equal(resp(whole, r), resp(g, r))
		}
		if !sampled {
			t.Fatalf("device %v: the sampled rollout is the greedy one: the test does not exercise sampling", device)
		}
		for _, cut := range []int{1, 2, 3} {
			for _, part := range [][2]int{{0, cut}, {cut, len(prompts)}} {
				o := opts
				o.FirstRow += uint64(part[0])
				ro, err := gen.Generate(prompts[part[0]:part[1]], o)
				if err != nil {
					t.Fatal(err)
				}
				for r := part[0]; r < part[1]; r++ {
					if got, want := resp(ro, r-part[0]), resp(whole, r); !slices.Equal(got, want) {
						t.Errorf("device %v: row %d in rows [%d, %d): %v, in the whole batch %v", device, r, part[0], part[1], got, want)
					}
				}
			}
		}
		o := opts
		o.FirstRow++
		shifted, err := gen.Generate(prompts, o)
		if err != nil {
			t.Fatal(err)
		}
		same := 0
		for r := range prompts {
			if slices.Equal(resp(shifted, r), resp(whole, r)) {
				same++
			}
		}
		if same == len(prompts) {
			t.Errorf("device %v: FirstRow+1 gave the same rollout: rows do not have their own streams", device)
		}
	}
}
