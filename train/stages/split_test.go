package stages

import (
	"fmt"
	"slices"
	"testing"

	"github.com/saferlhf/saferlhf/data/datasets"
)

// TestSplitRaw: an up-sampled source must not leak copies of held-out samples into training, no
// prompt is on both sides, and without repeats datasets.SplitRaw is exactly Split.
func TestSplitRaw(t *testing.T) {
	sample := func(i int) datasets.RawSample {
		return datasets.RawSample{Input: []string{fmt.Sprint("q", i)}, Answer: "a", OtherAnswer: "b", HasOther: true}
	}
	var unique, repeated []datasets.RawSample
	for i := 0; i < 40; i++ {
		unique = append(unique, sample(i))
	}
	for copy := 0; copy < 8; copy++ { // a proportion of 8, as `pku-saferlhf:8:path`
		repeated = append(repeated, unique...)
	}
	for _, tc := range []struct {
		name string
		all  []datasets.RawSample
	}{{"unique", unique}, {"up-sampled 8x", repeated}} {
		t.Run(tc.name, func(t *testing.T) {
			ei, ti := datasets.SplitRaw(tc.all, 0.25, 0, 0, 42, false)
			if len(ei) != 10 {
				t.Fatalf("held out %d samples, want 10 (a quarter of 40 unique)", len(ei))
			}
			if len(ei)+len(ti) != 40 && len(tc.all) == 40 {
				t.Fatalf("%d + %d != 40", len(ei), len(ti))
			}
			held := map[string]bool{}
			for _, i := range ei {
				k := tc.all[i].Input[0]
				if held[k] {
					t.Errorf("%s held out twice", k)
				}
				held[k] = true
			}
			for _, i := range ti {
				if held[tc.all[i].Input[0]] {
					t.Errorf("training has a copy of held-out %s", tc.all[i].Input[0])
				}
			}
			if len(tc.all) == len(unique) {
				wantE, wantT := datasets.Split(len(unique), 0.25, 0, 0, 42)
				if !slices.Equal(ei, wantE) || !slices.Equal(ti, wantT) {
					t.Error("datasets.SplitRaw without repeats differs from Split")
				}
			} else if len(ti) != 8*30 {
				t.Errorf("training has %d samples, want every copy of the 30 training samples (240)", len(ti))
			}
		})
	}
}

// TestSplitRawByPrompt: two samples of one prompt (PKU-SafeRLHF repeats prompts with other
// responses) fall on the same side, and a held-out prompt keeps both of its distinct samples.
func TestSplitRawByPrompt(t *testing.T) {
	var all []datasets.RawSample
	for i := 0; i < 40; i++ {
		for _, a := range []string{"a", "c"} {
			all = append(all, datasets.RawSample{Input: []string{fmt.Sprint("q", i)}, Answer: a, OtherAnswer: "b", HasOther: true})
		}
	}
	ei, ti := datasets.SplitRaw(all, 0.25, 0, 0, 42, false)
	if len(ei) != 20 || len(ti) != 60 {
		t.Fatalf("held out %d, trained %d samples; want 20 (10 prompts × 2) and 60", len(ei), len(ti))
	}
	side := map[string]string{}
	for name, idx := range map[string][]int{"held-out": ei, "training": ti} {
		for _, i := range idx {
			p := all[i].Input[0]
			if s, ok := side[p]; ok && s != name {
				t.Fatalf("prompt %s on both sides", p)
			}
			side[p] = name
		}
	}
}

// TestSplitRawSwap: --swap-split trains on exactly the prompts the plain split holds out and
// holds out exactly the prompts it trains on.
func TestSplitRawSwap(t *testing.T) {
	var all []datasets.RawSample
	for i := 0; i < 30; i++ {
		all = append(all, datasets.RawSample{Input: []string{fmt.Sprint("q", i)}, Answer: "a", OtherAnswer: "b", HasOther: true})
	}
	ei, ti := datasets.SplitRaw(all, 0.5, 0, 0, 7, false)
	se, st := datasets.SplitRaw(all, 0.5, 0, 0, 7, true)
	sorted := func(x []int) []int { y := slices.Clone(x); slices.Sort(y); return y }
	if !slices.Equal(sorted(ei), sorted(st)) || !slices.Equal(sorted(ti), sorted(se)) || len(ei) != 15 {
		t.Fatalf("swap: held-out %v / train %v, plain held-out %v / train %v", se, st, ei, ti)
	}
}
