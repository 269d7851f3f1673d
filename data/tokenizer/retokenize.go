package tokenizer

// Same reports whether a and b are the same vocabulary (HF is_same_tokenizer): equal sizes,
// special ids and pieces, so that ids of one mean the same text in the other.
func Same(a, b Tokenizer) bool {
	if a.VocabSize() != b.VocabSize() || a.BOS() != b.BOS() || a.EOS() != b.EOS() || a.Pad() != b.Pad() || a.Unk() != b.Unk() {
		return false
	}
	for id := range int32(a.VocabSize()) {
		if a.Piece(id) != b.Piece(id) {
			return false
		}
	}
	return true
}

// Retokenize is the reference's batch_retokenize for one sequence (spec §1.1): src's ids
// are decoded with the special tokens (BOS, EOS, pad, unk) skipped, and the text (the prompt
// template included) is encoded by dst with BOS, followed by dst's EOS.
func Retokenize(src, dst Tokenizer, ids []int32) []int32 {
	keep := make([]int32, 0, len(ids))
	for _, id := range ids {
		if id != src.BOS() && id != src.EOS() && id != src.Pad() && id != src.Unk() {
			keep = append(keep, id)
		}
	}
	return append(dst.Encode(src.Decode(keep), true), dst.EOS())
}
