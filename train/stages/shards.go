package stages

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/shards"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// isShardDir reports whether path is a token-shard directory (data/shards: manifest.json).
func isShardDir(path string) bool {
	st, err := os.Stat(filepath.Join(path, "manifest.json"))
	return err == nil && !st.IsDir()
}

// shardSpecs reports whether every spec is a shard directory; mixing shard
// directories and raw files is an error.
func shardSpecs(specs []string) (bool, error) {
	n := 0
	for _, s := range specs {
		if isShardDir(s) {
			n++
		}
	}
	if n > 0 && n < len(specs) {
		return false, fmt.Errorf("data %v: mix of shard directories and raw files (pack them all, or give raw files only)", specs)
	}
	return n > 0 && n == len(specs), nil
}

// readShardExamples reads every example of the shard directories (already
// tokenized by `saferlhf data pack`), checking they were packed with tok and are of
// the stage's kind.
func readShardExamples(dirs []string, stage Stage, tok tokenizer.Info) ([]datasets.Example, error) {
	want := map[Stage]datasets.Kind{SFT: datasets.KindSFT, RM: datasets.KindPreference, CM: datasets.KindSafetyPreference}[stage]
	var out []datasets.Example
	for _, d := range dirs {
		exs, _, err := shards.ReadAllFor(d, tok)
		if err != nil {
			return nil, err
		}
		for i := range exs {
			if exs[i].Kind != want {
				return nil, fmt.Errorf("%s: example %d is %v, %s needs %v examples", d, i, exs[i].Kind, stage, want)
			}
		}
		out = append(out, exs...)
	}
	return out, nil
}

// sftFromShard turns a packed SFT example into a training example of at most maxLen tokens.
func sftFromShard(e datasets.Example, maxLen int) (sftExample, bool) {
	n := min(len(e.InputIDs), maxLen)
	ex := sftExample{IDs: e.InputIDs[:n], Labels: e.Labels[:n]}
	return ex, n > 1 && slices.ContainsFunc(ex.Labels[1:], func(l int32) bool { return l != datasets.IgnoreIndex })
}

// pairFromShard turns a packed preference (RM) or safety-preference (CM) example into a pair.
func pairFromShard(e datasets.Example, maxLen int, cost bool) (PairExample, bool) {
	cut := func(s []int32) []int32 { return s[:min(len(s), maxLen)] }
	var p PairExample
	if cost {
		p = PairExample{Hi: cut(e.Unsafer), Lo: cut(e.Safer), HiSign: -float32(e.UnsaferSign), LoSign: -float32(e.SaferSign)}
	} else {
		p = PairExample{Hi: cut(e.Better), Lo: cut(e.Worse)}
	}
	return p, len(p.Hi) > 0 && len(p.Lo) > 0 && !slices.Equal(p.Hi, p.Lo)
}

// ShardPairs reads the preference (cost=false) or safety-preference (cost=true)
// examples of shard directories packed with tok as pairs of at most maxLen tokens. ok
// is false when the specs are not all shard directories (read them with LoadRaw and
// BuildPair).
func ShardPairs(specs []string, tok tokenizer.Info, maxLen int, cost bool) (pairs []PairExample, skipped int, ok bool, err error) {
	if ok, err = shardSpecs(specs); err != nil || !ok {
		return nil, 0, ok, err
	}
	stage := RM
	if cost {
		stage = CM
	}
	exs, err := readShardExamples(specs, stage, tok)
	if err != nil {
		return nil, 0, true, err
	}
	for _, e := range exs {
		if p, good := pairFromShard(e, maxLen, cost); good {
			pairs = append(pairs, p)
		} else {
			skipped++
		}
	}
	return pairs, skipped, true, nil
}
