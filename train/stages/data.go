package stages

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// sftExample is one tokenized SFT example: ids and labels (IgnoreIndex where masked).
type sftExample struct {
	IDs, Labels []int32
}

// PairExample is one tokenized pair: Hi should score higher than Lo (better vs worse
// for a reward model; unsafer vs safer for a cost model). Signs are cost signs
// (−safety sign: +1 unsafe, −1 safe, 0 unknown).
type PairExample struct {
	Hi, Lo         []int32
	HiSign, LoSign float32
}

// encodePiece tokenizes a prompt part and an answer, returning the ids and the
// prompt length (measured by tokenizing the prompt alone, as the reference does).
func encodePiece(tok tokenizer.Tokenizer, prompt, answer string, bos bool) (ids []int32, promptLen int) {
	p := tok.Encode(prompt, bos)
	full := tok.Encode(prompt+answer, bos)
	return full, min(len(p), len(full))
}

// buildSFT turns a raw sample into an SFT example (spec §6): the prompt template and
// user turns are masked, assistant turns + EOS are trained. Multi-turn samples
// (Dialogue, or Input with earlier turns) train every assistant turn.
func buildSFT(s datasets.RawSample, tok tokenizer.Tokenizer, maxLen int, truncate string) (sftExample, bool) {
	turns := s.Dialogue
	if len(turns) == 0 {
		turns = append(slices.Clone(s.Input), s.Answer)
	}
	if len(turns)%2 == 1 {
		turns = turns[:len(turns)-1] // a dialogue must end with an assistant turn
	}
	if len(turns) == 0 {
		return sftExample{}, false
	}
	var ids, labels []int32
	lastAnswer := 0 // index of the first label token of the last assistant turn
	for k := 0; k+1 < len(turns); k += 2 {
		prompt := "USER: " + turns[k] + " " + datasets.PromptAssistant
		if k == 0 {
			prompt = datasets.PromptBegin + prompt
		}
		seg, pl := encodePiece(tok, prompt, turns[k+1], k == 0)
		seg = append(seg, tok.EOS())
		lastAnswer = len(ids) + pl
		for i, id := range seg {
			ids = append(ids, id)
			if i < pl {
				labels = append(labels, datasets.IgnoreIndex)
			} else {
				labels = append(labels, id)
			}
		}
	}
	if len(ids) > maxLen {
		if truncate == "prompt-left" {
			// Drop the oldest tokens after BOS, keeping at least 8 tokens before the last answer.
			cut := min(len(ids)-maxLen, max(0, lastAnswer-9))
			ids = append(ids[:1:1], ids[1+cut:]...)
			labels = append(labels[:1:1], labels[1+cut:]...)
		}
		ids, labels = ids[:min(len(ids), maxLen)], labels[:min(len(labels), maxLen)]
	}
	if !slices.ContainsFunc(labels[1:], func(l int32) bool { return l != datasets.IgnoreIndex }) {
		return sftExample{}, false
	}
	return sftExample{IDs: ids, Labels: labels}, true
}

// BuildPair tokenizes prompt+answer+EOS for both answers of a pair (spec §7,
// PreferenceDataset) and truncates them to maxLen. It reports false for pairs that
// are identical after truncation (the reference raises on identical pairs).
func BuildPair(s datasets.RawSample, tok tokenizer.Tokenizer, maxLen int, truncate string, cost bool) (PairExample, bool, error) {
	if !s.HasOther {
		return PairExample{}, false, fmt.Errorf("%s: not a pair (no second answer)", s.Where())
	}
	a, pa, err := datasets.EncodeResponse(tok, s.Input, s.Answer)
	if err != nil {
		return PairExample{}, false, fmt.Errorf("%s: %w", s.Where(), err)
	}
	b, pb, _ := datasets.EncodeResponse(tok, s.Input, s.OtherAnswer)
	if truncate == "prompt-left" {
		p := min(pa, pb)
		over := max(len(a), len(b)) - maxLen
		if over > 0 {
			cut := min(over, max(0, p-9)) // keep BOS and at least 8 prompt tokens
			a = append(a[:1:1], a[1+cut:]...)
			b = append(b[:1:1], b[1+cut:]...)
		}
	}
	a, b = a[:min(len(a), maxLen)], b[:min(len(b), maxLen)]
	if slices.Equal(a, b) {
		return PairExample{}, false, nil
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
			return PairExample{}, false, nil
		}
	}
	if first {
		return PairExample{Hi: a, Lo: b, HiSign: signA, LoSign: signB}, true, nil
	}
	return PairExample{Hi: b, Lo: a, HiSign: signB, LoSign: signA}, true, nil
}

// LoadRaw reads data specs ("[format:[proportion:]]path").
func LoadRaw(specs []string, seed uint64) ([]datasets.RawSample, error) {
	s, _, err := datasets.LoadMix(specs, seed)
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
	return splitGroups(n, nil, ratio, evalMax, trainMax, seed, false, nil)
}

// SplitRaw is Split for raw samples, by prompt: samples with the same prompt turns are one
// unit, so no prompt is on both sides (PKU-SafeRLHF repeats prompts; a source up-sampled with a
// proportion > 1 repeats whole samples). The held-out part takes each distinct sample of a held-out
// prompt once, the training part every sample (and copy) of a training prompt. With distinct
// prompts and no repeats it equals Split(len(all), ...). With swap the two sides trade places
// (--swap-split: a judge trained on what a model with the same split held out, and vice versa).
func SplitRaw(all []datasets.RawSample, ratio float64, evalMax, trainMax int, seed uint64, swap bool) (eval, train []int) {
	prompts := make([]string, len(all))
	for i, s := range all {
		prompts[i] = strings.Join(s.Input, "\x00")
	}
	return splitGroups(len(all), prompts, ratio, evalMax, trainMax, seed, swap, func(i int) string {
		b, _ := json.Marshal(all[i])
		return string(b)
	})
}

// splitGroups splits n items, grouped by equal keys (nil keys: every item alone), over the
// groups in first-occurrence order: the held-out part takes the items of each held-out group with
// distinct identity (nil: all), the training part every item of each training group.
func splitGroups(n int, keys []string, ratio float64, evalMax, trainMax int, seed uint64, swap bool, identity func(int) string) (eval, train []int) {
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
	ge, gt := splitIndices(len(members), ratio, evalMax, 0, seed)
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

// splitIndices shuffles n indices with seed into held-out and training sets.
func splitIndices(n int, ratio float64, evalMax, trainMax int, seed uint64) (eval, train []int) {
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

// seqSource batches SFT examples: ids [B,T] int32 (right-padded with pad), mask [B,T]
// float32 and the label mask [B,T−1] (1 where ids[t+1] is a label).
type seqSource struct {
	ex      []sftExample
	b, t    int
	pad     int32
	seed    uint64
	shuffle bool
	part    rankPart
}

func (s *seqSource) Len() int { return len(s.ex) / s.b }

func (s *seqSource) order(epoch int) []int {
	if !s.shuffle {
		return nil
	}
	return rand.New(rand.NewPCG(s.seed, uint64(epoch))).Perm(len(s.ex))
}

func (s *seqSource) Batch(epoch, index int) (trainer.Batch, error) {
	perm := s.order(epoch)
	B, T := s.part.rows(s.b), s.t
	ids := make([]int32, B*T)
	mask := make([]float32, B*T)
	lm := make([]float32, B*(T-1))
	tokens, labelled := 0, 0
	for r := 0; r < B; r++ {
		i := index*s.b + s.part.first(s.b) + r
		if perm != nil {
			i = perm[i]
		}
		e := s.ex[i]
		for t := 0; t < T; t++ {
			if t < len(e.IDs) {
				ids[r*T+t], mask[r*T+t] = e.IDs[t], 1
				if t > 0 && e.Labels[t] != datasets.IgnoreIndex {
					lm[r*(T-1)+t-1] = 1
					labelled++
				}
			} else {
				ids[r*T+t] = s.pad
			}
		}
		tokens += len(e.IDs)
	}
	return trainer.Batch{Inputs: []any{
		tensors.FromFlatDataAndDimensions(ids, B, T),
		tensors.FromFlatDataAndDimensions(mask, B, T),
		tensors.FromFlatDataAndDimensions(lm, B, T-1),
	}, Tokens: tokens, Weight: float64(labelled)}, nil
}

// pairSource batches pairs as 2B rows (hi rows then lo rows): ids [2B,T], mask
// [2B,T], end one-hot [2B,T], token-wise span [B,T] and cost signs [2B].
type pairSource struct {
	ex      []PairExample
	b, t    int
	pad     int32
	seed    uint64
	shuffle bool
	part    rankPart
}

func (s *pairSource) Len() int { return len(s.ex) / s.b }

func (s *pairSource) Batch(epoch, index int) (trainer.Batch, error) {
	var perm []int
	if s.shuffle {
		perm = rand.New(rand.NewPCG(s.seed, uint64(epoch))).Perm(len(s.ex))
	}
	B, T := s.part.rows(s.b), s.t
	ids := make([]int32, 2*B*T)
	mask := make([]float32, 2*B*T)
	signs := make([]float32, 2*B)
	hiIDs, loIDs := make([][]int32, B), make([][]int32, B)
	hiM, loM := make([][]float32, B), make([][]float32, B)
	tokens := 0
	for r := 0; r < B; r++ {
		i := index*s.b + s.part.first(s.b) + r
		if perm != nil {
			i = perm[i]
		}
		e := s.ex[i]
		for h, seq := range [2][]int32{e.Hi, e.Lo} {
			row := h*B + r
			for t := 0; t < T; t++ {
				if t < len(seq) {
					ids[row*T+t], mask[row*T+t] = seq[t], 1
				} else {
					ids[row*T+t] = s.pad
				}
			}
			tokens += len(seq)
		}
		signs[r], signs[B+r] = e.HiSign, e.LoSign
		hiIDs[r], loIDs[r] = ids[r*T:(r+1)*T], ids[(B+r)*T:(B+r+1)*T]
		hiM[r], loM[r] = mask[r*T:(r+1)*T], mask[(B+r)*T:(B+r+1)*T]
	}
	end, span := pairMasks(hiIDs, loIDs, hiM, loM, T)
	return trainer.Batch{Inputs: []any{
		tensors.FromFlatDataAndDimensions(ids, 2*B, T),
		tensors.FromFlatDataAndDimensions(mask, 2*B, T),
		tensors.FromFlatDataAndDimensions(end, 2*B, T),
		tensors.FromFlatDataAndDimensions(span, B, T),
		tensors.FromFlatDataAndDimensions(signs, 2*B),
	}, Tokens: tokens, Weight: float64(B)}, nil
}
