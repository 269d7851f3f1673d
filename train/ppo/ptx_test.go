package ppo

import (
	"slices"
	"testing"
)

// TestPTXShare: a global PTX batch of 8 rows split for 2 ranks and 2 micro-batches gives rank r
// the r-th half of each global micro-batch (rows 2r, 2r+1 of micro-batch 0, then 4+2r, 5+2r), and
// each micro-batch's denominator is its global label count over the world size; one rank keeps
// the batch with the micro-batches' own counts.
func TestPTXShare(t *testing.T) {
	const B, T = 8, 6
	b := &PTXBatch{B: B, T: T, IDs: make([]int32, B*T), Mask: make([]float32, B*T), Labels: make([]int32, B*T)}
	labels := make([]int, B)
	for i := 0; i < B; i++ {
		for j := 0; j < T; j++ {
			b.IDs[i*T+j] = int32(i) // the row's index
			b.Labels[i*T+j] = -100
			if j >= 1 && j <= i%5 { // row i has i mod 5 labels
				b.Labels[i*T+j] = 1
				labels[i]++
			}
		}
	}
	count := func(rows ...int) float64 {
		n := 0
		for _, r := range rows {
			n += labels[r]
		}
		return float64(max(n, 1))
	}
	for _, c := range []struct {
		rank, world, k int
		rows           []int32
		den            []float64
	}{
		{0, 2, 2, []int32{0, 1, 4, 5}, []float64{count(0, 1, 2, 3) / 2, count(4, 5, 6, 7) / 2}},
		{1, 2, 2, []int32{2, 3, 6, 7}, []float64{count(0, 1, 2, 3) / 2, count(4, 5, 6, 7) / 2}},
		{1, 2, 1, []int32{4, 5, 6, 7}, []float64{count(0, 1, 2, 3, 4, 5, 6, 7) / 2}},
		{0, 1, 2, []int32{0, 1, 2, 3, 4, 5, 6, 7}, []float64{count(0, 1, 2, 3), count(4, 5, 6, 7)}},
	} {
		s := b.share(c.rank, c.world, c.k)
		var rows []int32
		for i := 0; i < s.B; i++ {
			rows = append(rows, s.IDs[i*T])
		}
		if !slices.Equal(rows, c.rows) || !slices.Equal(s.Den, c.den) {
			t.Errorf("rank %d of %d, %d micro-batches: rows %v, den %v; want %v, %v", c.rank, c.world, c.k, rows, s.Den, c.rows, c.den)
		}
		if c.world == 1 {
			for i := 0; i < c.k; i++ {
				m := s.B / c.k
				if d, _ := s.den(i, c.k, i*m, (i+1)*m); d != c.den[i] {
					t.Errorf("one rank: micro-batch %d's own count %g, want %g", i, d, c.den[i])
				}
			}
		}
	}
	if _, err := b.share(0, 2, 2).den(0, 4, 0, 1); err == nil {
		t.Error("2 denominators for 4 micro-batches: no error")
	}
}
