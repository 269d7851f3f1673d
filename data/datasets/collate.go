package datasets

// Batch is a padded batch in row-major flat slices: Rows × T.
type Batch struct {
	Rows, T int
	// IDs are the token ids, padded with the pad id.
	IDs []int32
	// Mask is 1 on real tokens, 0 on padding (the reference: ids != pad).
	Mask []float32
	// Labels (SFT only): ids, IgnoreIndex on prompts and padding.
	Labels []int32
	// Signs (safety preference only), one per row: the safety sign (+1 safe, −1
	// unsafe, 0 unknown) of each row's response; the cost sign is its negation.
	Signs []float32
}

func pad(seqs [][]int32, padID int32, left bool) Batch {
	b := Batch{Rows: len(seqs)}
	for _, s := range seqs {
		b.T = max(b.T, len(s))
	}
	b.IDs = make([]int32, b.Rows*b.T)
	b.Mask = make([]float32, b.Rows*b.T)
	for r, s := range seqs {
		off := r * b.T
		if left {
			off += b.T - len(s)
		}
		row := b.IDs[r*b.T : (r+1)*b.T]
		for i := range row {
			row[i] = padID
		}
		copy(b.IDs[off:], s)
		for i := range s {
			b.Mask[off+i] = 1
		}
	}
	return b
}

// CollateSFT right-pads SFT examples (SupervisedCollator): ids with pad, labels
// with IgnoreIndex.
func CollateSFT(exs []Example, padID int32) Batch {
	seqs := make([][]int32, len(exs))
	for i := range exs {
		seqs[i] = exs[i].InputIDs
	}
	b := pad(seqs, padID, false)
	b.Labels = make([]int32, len(b.IDs))
	for i := range b.Labels {
		b.Labels[i] = IgnoreIndex
	}
	for r := range exs {
		copy(b.Labels[r*b.T:], exs[r].Labels)
	}
	return b
}

// CollatePairs right-pads the two responses of preference or safety-preference
// examples together to one length (PreferenceCollator, SafetyPreferenceCollator):
// rows 0..B-1 are Better (Safer), rows B..2B-1 Worse (Unsafer). For safety
// preferences Signs holds SaferSign for the first B rows and UnsaferSign after.
func CollatePairs(exs []Example, padID int32) Batch {
	n := len(exs)
	seqs := make([][]int32, 2*n)
	for i := range exs {
		s := exs[i].Sequences()
		if len(s) == 2 {
			seqs[i], seqs[n+i] = s[0], s[1]
		}
	}
	b := pad(seqs, padID, false)
	if n > 0 && exs[0].Kind == KindSafetyPreference {
		b.Signs = make([]float32, 2*n)
		for i := range exs {
			b.Signs[i], b.Signs[n+i] = float32(exs[i].SaferSign), float32(exs[i].UnsaferSign)
		}
	}
	return b
}

// CollatePrompts left-pads prompts (PromptOnlyCollator), so generation appends at
// the same position in every row.
func CollatePrompts(exs []Example, padID int32) Batch {
	seqs := make([][]int32, len(exs))
	for i := range exs {
		seqs[i] = exs[i].InputIDs
	}
	return pad(seqs, padID, true)
}
