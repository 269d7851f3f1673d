package stages

import (
	"slices"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// TestDPOSourceShards: the ranks' rows of a global batch, put together, are the
// whole batch's rows (ids, masks, spans with the batch-wide width quirk, reference sums).
func TestDPOSourceShards(t *testing.T) {
	var ex []dpoExample
	for i := range 8 {
		n0, n1 := 3+i%4, 5+(i*3)%5
		e := dpoExample{div: 2}
		e.ids[0], e.ids[1] = make([]int32, n0), make([]int32, n1)
		for j := range e.ids[0] {
			e.ids[0][j] = int32(10 + i + j)
		}
		for j := range e.ids[1] {
			e.ids[1][j] = int32(50 + i + j)
		}
		e.ref[0], e.ref[1] = refLogProb{core: -float64(i), tail: -0.5}, refLogProb{core: -2 * float64(i), tail: -0.25}
		ex = append(ex, e)
	}
	whole := &dpoSource{ex: ex, b: 4, t: 12, seed: 3, shuffle: true}
	for index := range 2 {
		full, err := whole.Batch(1, index)
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]*dpoSource, 2)
		for r := range 2 {
			parts[r] = &dpoSource{ex: ex, b: 4, t: 12, seed: 3, shuffle: true, part: rankPart{r, 2}}
		}
		for k, rowLen := range []int{12, 12, 11, 1} { // ids, mask, span, ref per row
			got := [2][]float64{} // [preferred rows, rejected rows] in rank order
			for r := range 2 {
				b, err := parts[r].Batch(1, index)
				if err != nil {
					t.Fatal(err)
				}
				v := flat(b.Inputs[k].(*tensors.Tensor))
				half := len(v) / 2
				got[0] = append(got[0], v[:half]...)
				got[1] = append(got[1], v[half:]...)
			}
			want := flat(full.Inputs[k].(*tensors.Tensor))
			if !slices.Equal(append(got[0], got[1]...), want) {
				t.Errorf("batch %d input %d (rows of %d): shards %v\nwhole %v", index, k, rowLen, append(got[0], got[1]...), want)
			}
		}
	}
}

func flat(t *tensors.Tensor) []float64 {
	var out []float64
	switch v := t.Value().(type) {
	case [][]int32:
		for _, r := range v {
			for _, x := range r {
				out = append(out, float64(x))
			}
		}
	case [][]float32:
		for _, r := range v {
			for _, x := range r {
				out = append(out, float64(x))
			}
		}
	case []float32:
		for _, x := range v {
			out = append(out, float64(x))
		}
	}
	return out
}
