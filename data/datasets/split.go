package datasets

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
)

// LoadRaw reads data specs ("[format:[proportion:]]path").
func LoadRaw(specs []string, seed uint64) ([]RawSample, error) {
	s, _, err := LoadMix(specs, seed)
	if err != nil {
		return nil, err
	}
	if len(s) == 0 {
		return nil, fmt.Errorf("no samples in %s", strings.Join(specs, ","))
	}
	return s, nil
}

// Split shuffles n indices with seed and returns the held-out and training index
// sets, as the stages split --data when no --eval-data is given (evaluation tools
// call it with the same arguments to score exactly the held-out samples).
func Split(n int, ratio float64, evalMax, trainMax int, seed uint64) (eval, train []int) {
	return SplitGroups(n, nil, ratio, evalMax, trainMax, seed, false, nil)
}

// SplitRaw is Split for raw samples, by prompt: samples with the same prompt turns are one
// unit, so no prompt is on both sides (PKU-SafeRLHF repeats prompts; a source up-sampled with a
// proportion > 1 repeats whole samples). The held-out part takes each distinct sample of a held-out
// prompt once, the training part every sample (and copy) of a training prompt. With distinct
// prompts and no repeats it equals Split(len(all), ...). With swap the two sides trade places
// (--swap-split: a judge trained on what a model with the same split held out, and vice versa).
func SplitRaw(all []RawSample, ratio float64, evalMax, trainMax int, seed uint64, swap bool) (eval, train []int) {
	prompts := make([]string, len(all))
	for i, s := range all {
		prompts[i] = strings.Join(s.Input, "\x00")
	}
	return SplitGroups(len(all), prompts, ratio, evalMax, trainMax, seed, swap, func(i int) string {
		b, _ := json.Marshal(all[i])
		return string(b)
	})
}

// SplitGroups splits n items, grouped by equal keys (nil keys: every item alone), over the
// groups in first-occurrence order: the held-out part takes the items of each held-out group with
// distinct identity (nil: all), the training part every item of each training group.
func SplitGroups(n int, keys []string, ratio float64, evalMax, trainMax int, seed uint64, swap bool, identity func(int) string) (eval, train []int) {
	members := make([][]int, 0, n)
	if keys == nil {
		for i := 0; i < n; i++ {
			members = append(members, []int{i})
		}
	} else {
		group := make(map[string]int, n)
		for i, k := range keys {
			g, ok := group[k]
			if !ok {
				g = len(members)
				group[k] = g
				members = append(members, nil)
			}
			members[g] = append(members[g], i)
		}
	}
	ge, gt := SplitIndices(len(members), ratio, evalMax, 0, seed)
	if swap {
		ge, gt = gt, ge
	}
	if trainMax > 0 && len(gt) > trainMax {
		gt = gt[:trainMax]
	}
	for _, g := range ge {
		seen := map[string]bool{}
		for _, i := range members[g] {
			if identity != nil {
				id := identity(i)
				if seen[id] {
					continue
				}
				seen[id] = true
			}
			eval = append(eval, i)
		}
	}
	for _, g := range gt {
		train = append(train, members[g]...)
	}
	return eval, train
}

// SplitIndices shuffles n indices with seed into held-out and training sets.
func SplitIndices(n int, ratio float64, evalMax, trainMax int, seed uint64) (eval, train []int) {
	perm := rand.New(rand.NewPCG(seed, 0x5eed)).Perm(n)
	ne := int(float64(n) * ratio)
	if evalMax > 0 {
		ne = min(ne, evalMax)
	}
	eval, train = perm[:ne], perm[ne:]
	if trainMax > 0 && len(train) > trainMax {
		train = train[:trainMax]
	}
	return eval, train
}
