package stages

import (
	"github.com/saferlhf/saferlhf/data/prefs"
	"math/rand/v2"
	"slices"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// sftExample is one tokenized SFT example: ids and labels (IgnoreIndex where masked).
type sftExample struct {
	IDs, Labels []int32
}

// PairExample is a tokenized preference pair (data/prefs).
type PairExample = prefs.Pair

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
	// prompt-left drops the oldest tokens after BOS, keeping at least 8 tokens before the last answer.
	datasets.Clip(maxLen, truncate == prefs.TruncatePromptLeft, lastAnswer, prefs.KeepPrompt, &ids, &labels)
	if !slices.ContainsFunc(labels[1:], func(l int32) bool { return l != datasets.IgnoreIndex }) {
		return sftExample{}, false
	}
	return sftExample{IDs: ids, Labels: labels}, true
}

// seqSource batches SFT examples: ids [B,T] int32 (right-padded with pad), mask [B,T]
// float32, the label mask [B,T−1] (1 where ids[t+1] is a label) and the loss's denominator
// (SFTLoss): the label count of the whole global batch (at least 1) over the world size, so that
// the ranks' mean loss is the global batch's token mean whatever each rank's share holds.
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
	global := labelled
	if s.part.world > 1 { // every rank reads the whole global batch's labels: no collective
		global = 0
		for r := 0; r < s.b; r++ {
			i := index*s.b + r
			if perm != nil {
				i = perm[i]
			}
			global += s.ex[i].labels(T)
		}
	}
	den := float32(max(global, 1)) / float32(max(1, s.part.world))
	return trainer.Batch{Inputs: []any{
		tensors.FromFlatDataAndDimensions(ids, B, T),
		tensors.FromFlatDataAndDimensions(mask, B, T),
		tensors.FromFlatDataAndDimensions(lm, B, T-1),
		tensors.FromScalar(den),
	}, Tokens: tokens, Weight: float64(labelled)}, nil
}

// labels counts the example's label tokens within the first t positions (position 0 is never one).
func (e sftExample) labels(t int) int {
	n := 0
	for i := 1; i < min(t, len(e.Labels)); i++ {
		if e.Labels[i] != datasets.IgnoreIndex {
			n++
		}
	}
	return n
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
