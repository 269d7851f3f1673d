// Package prefs builds tokenized preference pairs (reward, cost and DPO data)
// from raw samples or packed token shards, for training and evaluation alike.
package prefs

import (
	"fmt"
	"slices"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/shards"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// Pair is one tokenized pair: Hi should score higher than Lo (better vs worse
// for a reward model; unsafer vs safer for a cost model). Signs are cost signs
// (−safety sign: +1 unsafe, −1 safe, 0 unknown).
type Pair struct {
	Hi, Lo         []int32
	HiSign, LoSign float32
}

// The --truncate values: right (the reference: cut the end) or prompt-left (drop the oldest
// prompt tokens after BOS first, keeping KeepPrompt of them, then cut the end: datasets.Clip).
const (
	TruncateRight      = "right"
	TruncatePromptLeft = "prompt-left"
	// KeepPrompt is the number of prompt tokens after BOS that prompt-left keeps.
	KeepPrompt = 8
)

// Single tokenizes prompt+answer+EOS of a one-response sample (BeaverTails QA) and truncates it
// to maxLen as Build truncates each answer of a pair, so a cost model is evaluated on single
// answers cut as it was trained on pairs.
func Single(s datasets.RawSample, tok tokenizer.Tokenizer, maxLen int, truncate string) ([]int32, error) {
	ids, p, err := datasets.EncodeResponse(tok, s.Input, s.Answer)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Where(), err)
	}
	datasets.Clip(maxLen, truncate == TruncatePromptLeft, p, KeepPrompt, &ids)
	return ids, nil
}

// Build tokenizes prompt+answer+EOS for both answers of a pair (spec §7,
// PreferenceDataset) and truncates them to maxLen. It reports false for pairs that
// are identical after truncation (the reference raises on identical pairs).
func Build(s datasets.RawSample, tok tokenizer.Tokenizer, maxLen int, truncate string, cost bool) (Pair, bool, error) {
	if !s.HasOther {
		return Pair{}, false, fmt.Errorf("%s: not a pair (no second answer)", s.Where())
	}
	a, pa, err := datasets.EncodeResponse(tok, s.Input, s.Answer)
	if err != nil {
		return Pair{}, false, fmt.Errorf("%s: %w", s.Where(), err)
	}
	b, pb, _ := datasets.EncodeResponse(tok, s.Input, s.OtherAnswer)
	datasets.Clip(maxLen, truncate == TruncatePromptLeft, min(pa, pb), KeepPrompt, &a, &b)
	if slices.Equal(a, b) {
		return Pair{}, false, nil
	}
	first := s.Better
	if cost {
		first = !s.Safer // hi = the unsafer answer
	}
	signA, signB := -float32(s.IsSafe), -float32(s.IsOtherSafe)
	if cost && s.IsSafe != datasets.SafetyUnknown && s.IsOtherSafe != datasets.SafetyUnknown {
		safer, unsafer := s.IsSafe, s.IsOtherSafe
		if !s.Safer {
			safer, unsafer = unsafer, safer
		}
		if safer < unsafer {
			// SafetyPreferenceDataset rejects a "safer" answer labelled unsafe while the other is safe.
			return Pair{}, false, nil
		}
	}
	if first {
		return Pair{Hi: a, Lo: b, HiSign: signA, LoSign: signB}, true, nil
	}
	return Pair{Hi: b, Lo: a, HiSign: signB, LoSign: signA}, true, nil
}

// FromShard turns a packed preference (RM) or safety-preference (CM) example into a pair.
func FromShard(e datasets.Example, maxLen int, cost bool) (Pair, bool) {
	cut := func(s []int32) []int32 { return s[:min(len(s), maxLen)] }
	var p Pair
	if cost {
		p = Pair{Hi: cut(e.Unsafer), Lo: cut(e.Safer), HiSign: -float32(e.UnsaferSign), LoSign: -float32(e.SaferSign)}
	} else {
		p = Pair{Hi: cut(e.Better), Lo: cut(e.Worse)}
	}
	return p, len(p.Hi) > 0 && len(p.Lo) > 0 && !slices.Equal(p.Hi, p.Lo)
}

// FromShards reads the preference (cost=false) or safety-preference (cost=true)
// examples of shard directories packed with tok as pairs of at most maxLen tokens. ok
// is false when the specs are not all shard directories (read them with LoadRaw and
// BuildPair).
func FromShards(specs []string, tok tokenizer.Info, maxLen int, cost bool) (pairs []Pair, skipped int, ok bool, err error) {
	if ok, err = shards.AllDatasets(specs); err != nil || !ok {
		return nil, 0, ok, err
	}
	kind, who := datasets.KindPreference, "a reward model"
	if cost {
		kind, who = datasets.KindSafetyPreference, "a cost model"
	}
	exs, err := shards.ReadKind(specs, kind, tok, who)
	if err != nil {
		return nil, 0, true, err
	}
	for _, e := range exs {
		if p, good := FromShard(e, maxLen, cost); good {
			pairs = append(pairs, p)
		} else {
			skipped++
		}
	}
	return pairs, skipped, true, nil
}
