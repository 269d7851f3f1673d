package shards

import (
	"encoding/binary"
	"fmt"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// Prompt is one prompt read by ReadPrompts: its ids (BOS first) and its text (the last user
// turn of a raw sample, the decoded ids of a shard example).
type Prompt struct {
	Text string
	IDs  []int32
}

// ReadPrompts is the one reader of prompts (PPO's and eval-arena's): the distinct prompts of
// dataset specs, at most limit (0: all). Token-shard directories of any kind packed with tok
// give their prompt part, first; then raw files ([format[/part]:[proportion:]]path, mixed
// with seed), formatted with the reference template (datasets.EncodePrompt). Duplicates are
// dropped, as PromptOnlyDataset drops repeated prompts; a raw sample without a prompt is
// skipped, one whose turns cannot form a prompt is an error naming it.
func ReadPrompts(specs []string, tok tokenizer.Tokenizer, seed uint64, limit int) ([]Prompt, error) {
	var out []Prompt
	seen := map[string]bool{}
	// add reports whether the limit is reached.
	add := func(text string, ids []int32) bool {
		b := make([]byte, 4*len(ids))
		for i, id := range ids {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(id))
		}
		if len(ids) > 0 && !seen[string(b)] {
			seen[string(b)] = true
			out = append(out, Prompt{Text: text, IDs: ids})
		}
		return limit > 0 && len(out) == limit
	}
	var raw []string
	for _, s := range specs {
		if !IsDataset(s) {
			raw = append(raw, s)
			continue
		}
		exs, _, err := ReadAllFor(s, tok.Info())
		if err != nil {
			return nil, err
		}
		for _, e := range exs {
			p := e.Sequences()[0]
			if e.Kind != datasets.KindPrompts {
				p = p[:min(e.PromptLen, len(p))]
			}
			if add(tok.Decode(p), p) {
				return out, nil
			}
		}
	}
	if len(raw) == 0 {
		return out, nil
	}
	samples, _, err := datasets.LoadMix(raw, seed)
	if err != nil {
		return nil, err
	}
	for _, s := range samples {
		if len(s.Input) == 0 {
			continue
		}
		ids, err := datasets.EncodePrompt(tok, s.Input)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Where(), err)
		}
		if add(s.Input[len(s.Input)-1], ids) {
			break
		}
	}
	return out, nil
}
