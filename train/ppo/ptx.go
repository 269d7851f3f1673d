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
