package datasets

import (
	"errors"
	"strings"

	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// Prompt template of the reference (safe_rlhf/configs/constants.py).
const (
	PromptBegin     = "BEGINNING OF CONVERSATION: "
	PromptUser      = "USER: %s "
	PromptAssistant = "ASSISTANT:"
	// IgnoreIndex marks label positions excluded from the SFT loss.
	IgnoreIndex = -100
)

// ErrEvenInput is returned for prompt turn lists of even length: the input must end
// at a user turn.
var ErrEvenInput = errors.New("prompt input must have odd length (user, assistant, ..., user)")

// FormatPrompt renders input turns as safe_rlhf/datasets/utils.py format_prompt:
// "BEGINNING OF CONVERSATION: USER: {u} ASSISTANT:" with each earlier assistant turn
// followed by eos. The answer is appended directly after "ASSISTANT:" (no space).
func FormatPrompt(input []string, eos string) (string, error) {
	segs, err := promptSegments(input)
	if err != nil {
		return "", err
	}
	return strings.Join(segs, eos), nil
}

// promptSegments returns the template text split where FormatPrompt puts an EOS:
// the builders insert the EOS id there instead of tokenizing the text "</s>".
func promptSegments(input []string) ([]string, error) {
	if len(input)%2 != 1 {
		return nil, ErrEvenInput
	}
	segs := make([]string, 0, len(input)/2+1)
	var b strings.Builder
	b.WriteString(PromptBegin)
	for i, line := range input {
		if i%2 == 0 {
			b.WriteString("USER: ")
			b.WriteString(line)
			b.WriteString(" ")
			b.WriteString(PromptAssistant)
		} else {
			b.WriteString(line)
			segs = append(segs, b.String())
			b.Reset()
		}
	}
	return append(segs, b.String()), nil
}

// EncodePrompt tokenizes FormatPrompt(input) with BOS, putting the EOS id after each earlier
// assistant turn (PromptOnlyDataset). Every reader of raw prompts uses it, so a multi-turn
// prompt read from a raw file equals the one packed into shards.
func EncodePrompt(tok tokenizer.Tokenizer, input []string) ([]int32, error) {
	segs, err := promptSegments(input)
	if err != nil {
		return nil, err
	}
	return encodeSegments(tok, segs, true), nil
}

// EncodeResponse tokenizes FormatPrompt(input) + answer + EOS with BOS (the sequences of
// SupervisedDataset, PreferenceDataset and SafetyPreferenceDataset). promptLen is the length of
// the prompt tokenized alone (the reference's label mask), at most len(ids).
func EncodeResponse(tok tokenizer.Tokenizer, input []string, answer string) (ids []int32, promptLen int, err error) {
	segs, err := promptSegments(input)
	if err != nil {
		return nil, 0, err
	}
	ids = responseIDs(tok, segs, answer)
	return ids, min(len(encodeSegments(tok, segs, true)), len(ids)), nil
}
