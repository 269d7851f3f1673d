package ppo

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/shards"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/atomicfile"
)

// readPrompts returns the tokenized prompts (BOS first) of dataset specs (shards.ReadPrompts).
func readPrompts(tok tokenizer.Tokenizer, specs []string, seed uint64) ([][]int32, error) {
	ps, err := shards.ReadPrompts(specs, tok, seed, 0)
	if err != nil {
		return nil, err
	}
	out := make([][]int32, len(ps))
	for i, p := range ps {
		out[i] = p.IDs
	}
	return out, nil
}

// loadPrompts reads the training prompts (and evalData's, if any), drops duplicates, cuts
// prompts longer than maxTokens to BOS + their last maxTokens−1 tokens (the question and the
// "ASSISTANT:" cue), and splits them into training and held-out prompts: evalData if given,
// else a stable hash split of the training prompts (so held-out prompts are never trained on).
func loadPrompts(tok tokenizer.Tokenizer, trainData, evalData []string, split float64, maxTokens int) (train, held [][]int32, truncated int, err error) {
	seen := map[string]bool{}
	key := func(ids []int32) string {
		b := make([]byte, 4*len(ids))
		for i, id := range ids {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(id))
		}
		return string(b)
	}
	add := func(ps [][]int32, keep func(string) bool, dst *[][]int32) {
		for _, ids := range ps {
			k := key(ids)
			if seen[k] || !keep(k) {
				continue
			}
			seen[k] = true
			if len(ids) > maxTokens {
				ids = datasets.TruncatePrompt(ids, maxTokens)
				truncated++
			}
			*dst = append(*dst, ids)
		}
	}
	all := func(string) bool { return true }
	isHeld := func(k string) bool {
		h := fnv.New32a()
		h.Write([]byte(k))
		return float64(h.Sum32()%10000) < split*10000
	}
	tr, err := readPrompts(tok, trainData, 42)
	if err != nil {
		return nil, nil, 0, err
	}
	if len(evalData) > 0 {
		ev, err := readPrompts(tok, evalData, 42)
		if err != nil {
			return nil, nil, 0, err
		}
		add(ev, all, &held)
	} else {
		add(tr, isHeld, &held)
	}
	add(tr, all, &train)
	if len(train) == 0 {
		return nil, nil, truncated, fmt.Errorf("--data %s: no training prompts", strings.Join(trainData, ","))
	}
	return train, held, truncated, nil
}

// loadPTX reads supervised data for PTX mixing: prompt (labels −100) + answer + EOS, cut to
// maxLen tokens; raw files or SFT token-shard directories packed with tok.
func loadPTX(tok tokenizer.Tokenizer, specs []string, maxLen int, seed uint64) (*PTXSet, error) {
	var ids, labels [][]int32
	addEx := func(full, lab []int32) {
		if len(full) > maxLen {
			full, lab = full[:maxLen], lab[:maxLen] // the reference truncates on the right
		}
		for _, l := range lab[1:] {
			if l != datasets.IgnoreIndex {
				ids, labels = append(ids, full), append(labels, lab)
				return
			}
		}
	}
	var raw []string
	for _, s := range specs {
		if !shards.IsDataset(s) {
			raw = append(raw, s)
			continue
		}
		exs, m, err := shards.ReadAllFor(s, tok.Info())
		if err != nil {
			return nil, err
		}
		if m.Kind != datasets.KindSFT {
			return nil, fmt.Errorf("--ptx-data %s: %v examples, PTX needs sft examples", s, m.Kind)
		}
		for _, e := range exs {
			addEx(e.InputIDs, e.Labels)
		}
	}
	if len(raw) > 0 {
		samples, _, err := datasets.LoadMix(raw, seed)
		if err != nil {
			return nil, err
		}
		for _, s := range samples {
			if len(s.Input) == 0 || s.Answer == "" {
				continue
			}
			full, pl, err := datasets.EncodeResponse(tok, s.Input, s.Answer)
			if err != nil {
				continue
			}
			lab := make([]int32, len(full))
			for i := range lab {
				lab[i] = full[i]
				if i < pl {
					lab[i] = datasets.IgnoreIndex
				}
			}
			addEx(full, lab)
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("--ptx-data %s: no usable supervised examples of at most %d tokens", strings.Join(specs, ","), maxLen)
	}
	return NewPTXSet(ids, labels, tok.Pad(), seed)
}

// writeSamples writes each held-out prompt's response with its reward and cost.
func writeSamples(path string, tok tokenizer.Tokenizer, rs []*Rollout) error {
	var b strings.Builder
	for _, r := range rs {
		for i := 0; i < r.B; i++ {
			var prompt, resp []int32
			for t := 0; t < r.T; t++ {
				if r.Mask[i*r.T+t] == 0 {
					continue
				}
				if t < r.S {
					prompt = append(prompt, r.Seq[i*r.T+t])
				} else {
					resp = append(resp, r.Seq[i*r.T+t])
				}
			}
			c := float32(0)
			if r.Cost != nil {
				c = r.Cost[i]
			}
			fmt.Fprintf(&b, "reward %+.3f cost %+.3f | %s ||| %s\n", r.Reward[i], c,
				strings.ReplaceAll(tok.Decode(prompt), "\n", " "), strings.ReplaceAll(tok.Decode(resp), "\n", " "))
		}
	}
	if err := atomicfile.WriteBytes(path, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return writeSamplesJSONL(strings.TrimSuffix(path, ".txt")+".jsonl", tok, rs)
}

// sampleRecord is one line of samples_*.jsonl (eval.Sample reads it): the prompt and response
// text, which `saferlhf judge` re-tokenises for a judge with any tokenizer, and the scores.
type sampleRecord struct {
	Prompt   string   `json:"prompt"`
	Response string   `json:"response"`
	Reward   float64  `json:"reward"`
	Cost     *float64 `json:"cost,omitempty"`
}

// writeSamplesJSONL writes each held-out prompt's text, response text, reward and cost as JSON lines
// (BOS, EOS and padding left out).
func writeSamplesJSONL(path string, tok tokenizer.Tokenizer, rs []*Rollout) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, r := range rs {
		for i := 0; i < r.B; i++ {
			var prompt, resp []int32
			for t := 0; t < r.T; t++ {
				id := r.Seq[i*r.T+t]
				switch {
				case r.Mask[i*r.T+t] == 0 || id == tok.BOS() || id == tok.EOS():
				case t < r.S:
					prompt = append(prompt, id)
				default:
					resp = append(resp, id)
				}
			}
			rec := sampleRecord{Prompt: tok.Decode(prompt), Response: tok.Decode(resp), Reward: float64(r.Reward[i])}
			if r.Cost != nil {
				c := float64(r.Cost[i])
				rec.Cost = &c
			}
			if err := enc.Encode(rec); err != nil {
				return err
			}
		}
	}
	return atomicfile.WriteBytes(path, b.Bytes(), 0o644)
}
