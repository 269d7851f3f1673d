package dist

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestOwners(t *testing.T) {
	for _, c := range []struct {
		names []string
		sizes []int64
		ranks int
		want  []int
	}{
		{[]string{"a", "b"}, []int64{3, 1}, 2, []int{0, 1}},
		{[]string{"a", "b", "c", "d"}, []int64{4, 4, 2, 2}, 2, []int{0, 1, 0, 1}},
		// largest first: e (8) → 0, then a, b (3, ties by name) → 1, 1, then c → 1 (6 < 8), d → 0 or 1 by load.
		{[]string{"a", "b", "c", "d", "e"}, []int64{3, 3, 1, 1, 8}, 2, []int{1, 1, 1, 1, 0}},
		{[]string{"x", "y"}, []int64{5, 5}, 3, []int{0, 1}},
		{[]string{"x", "y"}, []int64{5, 5}, 1, []int{0, 0}},
	} {
		if got := Owners(c.names, c.sizes, c.ranks); !slices.Equal(got, c.want) {
			t.Errorf("Owners(%v, %v, %d) = %v, want %v", c.names, c.sizes, c.ranks, got, c.want)
		}
	}
}

func TestAllGatherOwned(t *testing.T) {
	cs := group(t, 3, Options{Timeout: 10 * time.Second})
	owners := []int{2, 0, 1, 0}
	got := make([][][]float32, 3)
	errs := onAll(cs, func(c *TCP) error {
		data := [][]float32{make([]float32, 2), make([]float32, 1), make([]float32, 3), make([]float32, 2)}
		for i, d := range data {
			for j := range d {
				if owners[i] == c.Rank() {
					d[j] = float32(10*i + j)
				} else {
					d[j] = -1 // a non-owner's stale value must be overwritten
				}
			}
		}
		got[c.Rank()] = data
		return AllGatherOwnedFloat32(context.Background(), c, owners, data)
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	want := [][]float32{{0, 1}, {10}, {20, 21, 22}, {30, 31}}
	for r := range 3 {
		for i := range want {
			if !slices.Equal(got[r][i], want[i]) {
				t.Errorf("rank %d tensor %d: %v, want %v", r, i, got[r][i], want[i])
			}
		}
	}
}

// received counts the gathered bytes a rank receives (AllGather and Gather results).
type received struct {
	*TCP
	n int
}

func (r *received) AllGather(ctx context.Context, d []byte) ([][]byte, error) {
	parts, err := r.TCP.AllGather(ctx, d)
	for _, p := range parts {
		r.n += len(p)
	}
	return parts, err
}

func (r *received) Gather(ctx context.Context, d []byte) ([][]byte, error) {
	parts, err := r.TCP.Gather(ctx, d)
	for _, p := range parts {
		r.n += len(p)
	}
	return parts, err
}

// TestFetchServe: rank 0 fetches tensors from their owners in any order; a failure on rank 0
// fails every rank's Serve; the tensors travel to rank 0 alone (the serving ranks receive none
// of the gathered bytes, which a checkpoint of a sharded 7B state would multiply by the world).
func TestFetchServe(t *testing.T) {
	cs := group(t, 3, Options{Timeout: 10 * time.Second})
	owners := []int{1, 2, 0, 2}
	for _, fail := range []bool{false, true} {
		var fetched []string
		counted := make([]*received, len(cs))
		errs := onAll(cs, func(tc *TCP) error {
			ctx := context.Background()
			c := &received{TCP: tc}
			counted[c.Rank()] = c
			if c.Rank() != 0 {
				return Serve(ctx, c, owners, func(i int) ([]byte, error) {
					if owners[i] != c.Rank() {
						return nil, fmt.Errorf("asked rank %d for tensor %d", c.Rank(), i)
					}
					return []byte(fmt.Sprintf("t%d@%d", i, c.Rank())), nil
				})
			}
			var err error
			for _, i := range []int{3, 0, 1} { // any order
				var b []byte
				if b, err = Fetch(ctx, c, i, owners[i]); err != nil {
					break
				}
				fetched = append(fetched, string(b))
			}
			if fail {
				err = errors.New("disk full")
			}
			return errors.Join(err, EndFetch(ctx, c, err))
		})
		if want := []string{"t3@2", "t0@1", "t1@2"}; !slices.Equal(fetched, want) {
			t.Errorf("fail %v: fetched %v, want %v", fail, fetched, want)
		}
		for r := 1; r < 3; r++ {
			if fail != (errs[r] != nil) || fail && !strings.Contains(errs[r].Error(), "rank 0 failed") {
				t.Errorf("fail %v: rank %d: %v", fail, r, errs[r])
			}
			if counted[r].n != 0 {
				t.Errorf("fail %v: serving rank %d received %d gathered bytes, want none", fail, r, counted[r].n)
			}
		}
	}
}
