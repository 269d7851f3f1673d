package datasets

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// Kind is the kind of tokenized example a stage trains on.
type Kind string

// Example kinds.
const (
	// KindSFT: InputIDs and Labels (supervised fine-tuning, spec §6).
	KindSFT Kind = "sft"
	// KindPreference: Better and Worse (reward model, PreferenceDataset).
	KindPreference Kind = "preference"
	// KindSafetyPreference: Safer, Unsafer and their signs (cost model, SafetyPreferenceDataset).
	KindSafetyPreference Kind = "safety-preference"
	// KindPrompts: InputIDs of the formatted prompt (PPO rollouts, evaluation; PromptOnlyDataset).
	KindPrompts Kind = "prompts"
)

// Kinds lists every kind.
var Kinds = []Kind{KindSFT, KindPreference, KindSafetyPreference, KindPrompts}

// ParseKind validates a kind name.
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if string(k) == s {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown kind %q (want sft, preference, safety-preference or prompts)", s)
}

// Example is one tokenized training example. Every sequence starts with BOS; the
// response sequences end with EOS unless truncated. Which fields are set depends on Kind.
type Example struct {
	Kind Kind
	// InputIDs: SFT (prompt + answer + EOS) and Prompts (the formatted prompt).
	InputIDs []int32
	// Labels: SFT only; InputIDs with prompt/user positions set to IgnoreIndex (-100).
	Labels []int32
	// Better and Worse: Preference (the more and the less helpful response, prompt included).
	Better, Worse []int32
	// Safer and Unsafer: SafetyPreference (the less and the more harmful response).
	Safer, Unsafer []int32
	// SaferSign and UnsaferSign: +1 safe, -1 unsafe, 0 unknown (hh-rlhf harmless pairs:
	// the cost model's sign terms then contribute a constant and no gradient).
	SaferSign, UnsaferSign Safety
	// PromptLen is the token count of the prompt alone (BOS included), as the
	// reference measures it for SFT label masking.
	PromptLen int
}

// Sequences returns the token sequences of the example in storage order.
func (e *Example) Sequences() [][]int32 {
	switch e.Kind {
	case KindPreference:
		return [][]int32{e.Better, e.Worse}
	case KindSafetyPreference:
		return [][]int32{e.Safer, e.Unsafer}
	}
	return [][]int32{e.InputIDs}
}

// Tokens returns the total token count of the example.
func (e *Example) Tokens() int {
	n := 0
	for _, s := range e.Sequences() {
		n += len(s)
	}
	return n
}

// Overlong policies for samples longer than MaxLength.
const (
	// OverlongTruncate keeps the first MaxLength tokens (the reference's truncation).
	OverlongTruncate = "truncate"
	// OverlongDrop drops the sample.
	OverlongDrop = "drop"
	// OverlongPromptLeft first removes the oldest prompt tokens after BOS (keeping at
	// least 8 prompt tokens; all of a prompts-kind sequence but BOS may go), then
	// truncates on the right: long dialogues keep their answers.
	OverlongPromptLeft = "prompt-left"
)

// BuildOptions configures Build and BuildAll.
type BuildOptions struct {
	// MaxLength caps every sequence (tokens, BOS included); 0 means no cap. The
	// reference uses 512.
	MaxLength int
	// Overlong is OverlongTruncate (default), OverlongDrop or OverlongPromptLeft.
	Overlong string
	// Strict makes contradictory safety labels an error instead of a skipped sample.
	Strict bool
	// Workers is the number of tokenizing goroutines (0: GOMAXPROCS).
	Workers int
	// Progress, when set, is called with the number of samples done so far.
	Progress func(done int)
}

// BuildStats counts what the builders kept and dropped.
type BuildStats struct {
	Samples  int   `json:"samples"`
	Examples int   `json:"examples"`
	Tokens   int64 `json:"tokens"`
	// Truncated examples had a sequence cut to MaxLength.
	Truncated int `json:"truncated"`
	// DroppedOverlong examples exceeded MaxLength with Overlong = drop.
	DroppedOverlong int `json:"dropped_overlong"`
	// DroppedIdentical pairs had identical token sequences (the reference raises).
	DroppedIdentical int `json:"dropped_identical"`
	// SkippedContradictory safety pairs had a safer response labelled unsafe and the
	// other labelled safe (the reference raises ValueError).
	SkippedContradictory int `json:"skipped_contradictory"`
	// SkippedUnusable samples lack what the kind needs (a pair, an answer, odd turns).
	SkippedUnusable int `json:"skipped_unusable"`
	// DuplicatePrompts were removed from a prompts set (de-duplicated by text).
	DuplicatePrompts int `json:"duplicate_prompts"`
	// UnknownSafety counts safety examples with at least one sign 0.
	UnknownSafety int `json:"unknown_safety"`
	// MaxSeqLen is the longest stored sequence.
	MaxSeqLen int `json:"max_seq_len"`
}

// outcome is what Build did with one sample.
type outcome int

const (
	kept outcome = iota
	truncated
	droppedOverlong
	droppedIdentical
	skippedContradictory
	skippedUnusable
)

// ErrContradictory is returned (wrapped) in strict mode for contradictory safety labels.
var ErrContradictory = fmt.Errorf("contradictory safety labels: the safer response is unsafe and the other safe")

// encodeSegments tokenizes template segments with an EOS id between consecutive
// segments, as a HF LLaMA tokenizer does for "...</s>..." text (each text chunk is
// encoded on its own, with its dummy prefix).
func encodeSegments(tok tokenizer.Tokenizer, segs []string, addBOS bool) []int32 {
	ids := tok.Encode(segs[0], addBOS)
	for _, s := range segs[1:] {
		ids = append(ids, tok.EOS())
		if s != "" {
			ids = append(ids, tok.Encode(s, false)...)
		}
	}
	return ids
}

// responseIDs tokenizes prompt + answer + EOS.
func responseIDs(tok tokenizer.Tokenizer, psegs []string, answer string) []int32 {
	segs := append(append([]string(nil), psegs...), "")
	segs[len(segs)-2] += answer
	return encodeSegments(tok, segs, true)
}

// Build tokenizes one sample into an example of the given kind.
func Build(tok tokenizer.Tokenizer, kind Kind, s *RawSample, opts BuildOptions) (Example, error) {
	ex, _, err := build(tok, kind, s, &opts)
	return ex, err
}

func build(tok tokenizer.Tokenizer, kind Kind, s *RawSample, opts *BuildOptions) (Example, outcome, error) {
	ex := Example{Kind: kind}
	fits := func(seqs ...*[]int32) outcome {
		keep := 8
		if kind == KindPrompts {
			keep = 0
		}
		out, cut := opts.clip(ex.PromptLen, keep, seqs...)
		ex.PromptLen -= cut
		return out
	}
	if kind == KindSFT && len(s.Dialogue) >= 2 {
		return buildDialogue(tok, s.Dialogue, opts)
	}
	if kind == KindSFT && len(s.Input) > 1 && len(s.Input)%2 == 1 {
		// A multi-turn prompt with its answer is a dialogue: every assistant turn is
		// trained, as the reference's hh-rlhf-*-dialogue datasets.
		answer := s.Answer
		if s.HasOther && !s.Better {
			answer = s.OtherAnswer
		}
		return buildDialogue(tok, append(append([]string(nil), s.Input...), answer), opts)
	}
	psegs, err := promptSegments(s.Input)
	if err != nil || len(s.Input) == 0 {
		return ex, skippedUnusable, nil
	}
	prompt := encodeSegments(tok, psegs, true)
	ex.PromptLen = len(prompt)
	switch kind {
	case KindPrompts:
		ex.InputIDs = prompt
		return ex, fits(&ex.InputIDs), nil
	case KindSFT:
		answer := s.Answer
		if s.HasOther && !s.Better {
			answer = s.OtherAnswer
		}
		ex.InputIDs = responseIDs(tok, psegs, answer)
		ex.Labels = make([]int32, len(ex.InputIDs))
		for i, id := range ex.InputIDs {
			if i < ex.PromptLen {
				id = IgnoreIndex
			}
			ex.Labels[i] = id
		}
		return ex, fits(&ex.InputIDs, &ex.Labels), nil
	case KindPreference, KindSafetyPreference:
		if !s.HasOther {
			return ex, skippedUnusable, nil
		}
		a, b := s.Answer, s.OtherAnswer
		if kind == KindPreference {
			if !s.Better {
				a, b = b, a
			}
			ex.Better, ex.Worse = responseIDs(tok, psegs, a), responseIDs(tok, psegs, b)
			out := fits(&ex.Better, &ex.Worse)
			if out != droppedOverlong && equalIDs(ex.Better, ex.Worse) {
				return ex, droppedIdentical, nil
			}
			return ex, out, nil
		}
		ss, us := s.IsSafe, s.IsOtherSafe
		if !s.Safer {
			a, b, ss, us = b, a, us, ss
		}
		if ss == Unsafe && us == Safe {
			if opts.Strict {
				return ex, skippedContradictory, fmt.Errorf("%s: %w", s.Where(), ErrContradictory)
			}
			return ex, skippedContradictory, nil
		}
		ex.Safer, ex.Unsafer = responseIDs(tok, psegs, a), responseIDs(tok, psegs, b)
		ex.SaferSign, ex.UnsaferSign = ss, us
		out := fits(&ex.Safer, &ex.Unsafer)
		if out != droppedOverlong && equalIDs(ex.Safer, ex.Unsafer) {
			return ex, droppedIdentical, nil
		}
		return ex, out, nil
	}
	return ex, skippedUnusable, fmt.Errorf("unknown kind %q", kind)
}

// buildDialogue is SupervisedDataset.preprocess for dialogues: the growing text is
// re-tokenized after each turn; user turns (and the assistant tag) are masked,
// assistant turns and their EOS are trained.
func buildDialogue(tok tokenizer.Tokenizer, dialogue []string, opts *BuildOptions) (Example, outcome, error) {
	ex := Example{Kind: KindSFT}
	segs := []string{PromptBegin}
	offsets := []int{0}
	var ids []int32
	for i, line := range dialogue {
		if i%2 == 0 {
			segs[len(segs)-1] += "USER: " + line + " " + PromptAssistant
		} else {
			segs[len(segs)-1] += line
			segs = append(segs, "")
		}
		ids = encodeSegments(tok, segs, true)
		offsets = append(offsets, len(ids))
	}
	ex.InputIDs = ids
	ex.PromptLen = offsets[1]
	ex.Labels = append([]int32(nil), ids...)
	for k := 0; k+1 < len(offsets); k += 2 {
		for j := offsets[k]; j < offsets[k+1] && j < len(ids); j++ {
			ex.Labels[j] = IgnoreIndex
		}
	}
	out, cut := opts.clip(ex.PromptLen, 8, &ex.InputIDs, &ex.Labels)
	ex.PromptLen -= cut
	return ex, out, nil
}

// clip applies the overlong policy to sequences that share a prompt of promptLen
// tokens (BOS included), keeping at least keep prompt tokens after BOS. It returns
// the outcome and the number of prompt tokens removed.
func (o *BuildOptions) clip(promptLen, keep int, seqs ...*[]int32) (outcome, int) {
	longest := 0
	for _, q := range seqs {
		longest = max(longest, len(*q))
	}
	over := longest - o.MaxLength
	if o.MaxLength <= 0 || over <= 0 {
		return kept, 0
	}
	if o.Overlong == OverlongDrop {
		return droppedOverlong, 0
	}
	return truncated, Clip(o.MaxLength, o.Overlong == OverlongPromptLeft, promptLen, keep, seqs...)
}

// Clip is the one truncation rule for sequences that share a prompt of promptLen tokens (BOS
// first) and may be longer than maxLen: with promptLeft, it first drops the same oldest prompt
// tokens after BOS from each (as many as the longest is over, keeping at least keep of the
// prompt's tokens after BOS), then cuts each on the right to maxLen (the reference's truncation).
// It returns the number of prompt tokens dropped. Training (pack, prefs.Build, SFT) and
// evaluation all truncate through it.
func Clip(maxLen int, promptLeft bool, promptLen, keep int, seqs ...*[]int32) int {
	longest := 0
	for _, q := range seqs {
		longest = max(longest, len(*q))
	}
	over := longest - maxLen
	if maxLen <= 0 || over <= 0 {
		return 0
	}
	cut := 0
	if promptLeft {
		cut = max(0, min(over, promptLen-1-keep))
		if cut > 0 {
			for _, q := range seqs {
				*q = append((*q)[:1:1], (*q)[1+cut:]...)
			}
		}
	}
	for _, q := range seqs {
		if len(*q) > maxLen {
			*q = (*q)[:maxLen]
		}
	}
	return cut
}

func equalIDs(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// BuildAll tokenizes samples in parallel (order kept) and applies the kind's
// filters: identical pairs and (with Overlong=drop) over-long samples dropped,
// contradictory safety labels skipped (an error when Strict), prompts de-duplicated.
func BuildAll(ctx context.Context, tok tokenizer.Tokenizer, kind Kind, samples []RawSample, opts BuildOptions) ([]Example, BuildStats, error) {
	st := BuildStats{Samples: len(samples)}
	if _, err := ParseKind(string(kind)); err != nil {
		return nil, st, err
	}
	if opts.Overlong == "" {
		opts.Overlong = OverlongTruncate
	}
	if opts.Overlong != OverlongTruncate && opts.Overlong != OverlongDrop && opts.Overlong != OverlongPromptLeft {
		return nil, st, fmt.Errorf("overlong policy %q: want truncate, drop or prompt-left", opts.Overlong)
	}
	workers := opts.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	exs := make([]Example, len(samples))
	outs := make([]outcome, len(samples))
	const chunk = 64
	var next, done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if ctx.Err() != nil {
					return
				}
				lo := int(next.Add(chunk)) - chunk
				if lo >= len(samples) {
					return
				}
				hi := min(lo+chunk, len(samples))
				for i := lo; i < hi; i++ {
					ex, out, err := build(tok, kind, &samples[i], &opts)
					if err != nil {
						errOnce.Do(func() { firstErr = err })
						return
					}
					exs[i], outs[i] = ex, out
				}
				d := done.Add(int64(hi - lo))
				if opts.Progress != nil {
					opts.Progress(int(d))
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, st, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, st, err
	}
	res := exs[:0]
	seen := map[string]struct{}{}
	for i := range exs {
		switch outs[i] {
		case droppedOverlong:
			st.DroppedOverlong++
			continue
		case droppedIdentical:
			st.DroppedIdentical++
			continue
		case skippedContradictory:
			st.SkippedContradictory++
			continue
		case skippedUnusable:
			st.SkippedUnusable++
			continue
		case truncated:
			st.Truncated++
		}
		if kind == KindPrompts {
			key := strings.Join(samples[i].Input, "\x00")
			if _, dup := seen[key]; dup {
				st.DuplicatePrompts++
				continue
			}
			seen[key] = struct{}{}
		}
		ex := exs[i]
		if kind == KindSafetyPreference && (ex.SaferSign == SafetyUnknown || ex.UnsaferSign == SafetyUnknown) {
			st.UnknownSafety++
		}
		for _, q := range ex.Sequences() {
			st.Tokens += int64(len(q))
			st.MaxSeqLen = max(st.MaxSeqLen, len(q))
		}
		res = append(res, ex)
	}
	st.Examples = len(res)
	return res, st, nil
}
