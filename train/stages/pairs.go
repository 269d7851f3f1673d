package stages

// EndIndex is the last index where mask is non-zero (spec §3: the score of a sequence
// is the score at its last non-pad token), or −1 if there is none.
func EndIndex[M int32 | float32 | int](mask []M) int {
	for i := len(mask) - 1; i >= 0; i-- {
		if mask[i] != 0 {
			return i
		}
	}
	return -1
}

// DivergeIndex is the first index where a and b differ (spec §4, token-wise loss), or
// −1 when they are identical over their common length.
func DivergeIndex(a, b []int32) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return n
	}
	return -1
}

// pairMasks builds, for B pairs of right-padded rows of width T (hi rows then lo rows),
// the end one-hot [2B·T] and the token-wise span [B·T] = 1 on [diverge, max(end_hi, end_lo)].
func pairMasks(hiIDs, loIDs [][]int32, hiMask, loMask [][]float32, T int) (end, span []float32) {
	B := len(hiIDs)
	end = make([]float32, 2*B*T)
	span = make([]float32, B*T)
	for i := 0; i < B; i++ {
		eh, el := EndIndex(hiMask[i]), EndIndex(loMask[i])
		end[i*T+eh] = 1
		end[(B+i)*T+el] = 1
		d := DivergeIndex(hiIDs[i], loIDs[i])
		if d < 0 {
			d = max(eh, el)
		}
		for t := d; t <= max(eh, el); t++ {
			span[i*T+t] = 1
		}
	}
	return end, span
}
