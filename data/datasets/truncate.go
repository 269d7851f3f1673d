package datasets

// TruncatePrompt is the one rule for a tokenized prompt (BOS first) longer than
// maxTokens: keep BOS and its last maxTokens−1 tokens, where the question and the
// "ASSISTANT:" cue are (pack's prompt-left policy does the same for prompts). The
// result is ids itself when it fits, else a new slice.
func TruncatePrompt(ids []int32, maxTokens int) []int32 {
	if len(ids) <= maxTokens || maxTokens < 1 {
		return ids
	}
	out := make([]int32, 0, maxTokens)
	out = append(out, ids[0])
	return append(out, ids[len(ids)-(maxTokens-1):]...)
}
