package ppo

import "fmt"

// PTXSet is the supervised data mixed into the actor update (spec §1.9): examples of token ids
// with labels (−100 on prompt tokens), cycled with a deterministic shuffle and an exact position.
type PTXSet struct {
	ids, labels [][]int32
	pad         int32
	set         *PromptSet // reuses the shuffle/position logic over example indices
	Pos         DataPosition
}

// NewPTXSet returns a PTX source; ids[i] and labels[i] have equal lengths; pad fills the batches.
func NewPTXSet(ids, labels [][]int32, pad int32, seed uint64) (*PTXSet, error) {
	if len(ids) == 0 || len(ids) != len(labels) {
		return nil, fmt.Errorf("ptx set: %d examples, %d label rows", len(ids), len(labels))
	}
	idx := make([][]int32, len(ids))
	for i := range ids {
		if len(ids[i]) != len(labels[i]) || len(ids[i]) == 0 {
			return nil, fmt.Errorf("ptx set: example %d has %d ids and %d labels", i, len(ids[i]), len(labels[i]))
		}
		idx[i] = []int32{int32(i)}
	}
	set, err := NewPromptSet(idx, seed^0x7074)
	if err != nil {
		return nil, err
	}
	return &PTXSet{ids: ids, labels: labels, pad: pad, set: set}, nil
}

// Seek moves to pos.
func (p *PTXSet) Seek(pos DataPosition) { p.set.Seek(pos); p.Pos = pos }

// Next returns the next n examples right-padded into one batch (the loader is cycled).
func (p *PTXSet) Next(n int) *PTXBatch {
	rows := p.set.Next(n)
	p.Pos = p.set.Pos
	T := 0
	for _, r := range rows {
		T = max(T, len(p.ids[r[0]]))
	}
	b := &PTXBatch{B: len(rows), T: T, IDs: make([]int32, len(rows)*T), Mask: make([]float32, len(rows)*T), Labels: make([]int32, len(rows)*T)}
	for i, r := range rows {
		ids, lab := p.ids[r[0]], p.labels[r[0]]
		for t := 0; t < T; t++ {
			if t < len(ids) {
				b.IDs[i*T+t], b.Mask[i*T+t], b.Labels[i*T+t] = ids[t], 1, lab[t]
			} else {
				b.IDs[i*T+t], b.Labels[i*T+t] = p.pad, -100
			}
		}
	}
	return b
}

// labelCount counts the label tokens of rows [lo, hi): the positions t ≥ 1 whose label is not
// −100, the terms of the PTX loss (spec §1.9).
func (b *PTXBatch) labelCount(lo, hi int) int {
	n := 0
	for i := lo; i < hi; i++ {
		for _, l := range b.Labels[i*b.T+1 : (i+1)*b.T] {
			if l != -100 {
				n++
			}
		}
	}
	return n
}

// share returns rank's rows of the global batch b for an update of k micro-batches: rank r's
// micro-batch i is the r-th of world contiguous parts of the global micro-batch i (so every
// global micro-batch holds the rows one process gives it), and Den[i] is the global micro-batch's
// label count (at least 1) over world, so the mean over ranks of their losses is the token mean
// over all of its labels (spec §1.9's loss of one process, whatever the world size).
func (b *PTXBatch) share(rank, world, k int) *PTXBatch {
	if k < 1 || b.B%(k*world) != 0 {
		k = 1 // the nets refuse the batch (not divisible into their micro-batches)
	}
	m := b.B / (k * world)
	out := &PTXBatch{B: m * k, T: b.T, Den: make([]float64, k)}
	for i := 0; i < k; i++ {
		g := i * m * world
		out.Den[i] = float64(max(b.labelCount(g, g+m*world), 1)) / float64(world)
		lo, hi := (g+rank*m)*b.T, (g+(rank+1)*m)*b.T
		out.IDs = append(out.IDs, b.IDs[lo:hi]...)
		out.Mask = append(out.Mask, b.Mask[lo:hi]...)
		out.Labels = append(out.Labels, b.Labels[lo:hi]...)
	}
	return out
}

// den is the PTX loss's denominator for micro-batch i of k (rows [lo, hi) of b): Den[i] when set,
// else the rows' own label count, at least 1.
func (b *PTXBatch) den(i, k, lo, hi int) (float64, error) {
	if b.Den == nil {
		return float64(max(b.labelCount(lo, hi), 1)), nil
	}
	if len(b.Den) != k {
		return 0, fmt.Errorf("PTX batch: %d loss denominators for %d micro-batches", len(b.Den), k)
	}
	return b.Den[i], nil
}
