package dist

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
)

// ZeRO-1 (optimiser-state sharding, as PyTorch's ZeroRedundancyOptimizer):
// the trained tensors are partitioned among the ranks (Owners); every rank
// still receives the mean gradient of every tensor (AllReduceSlices), and so
// computes the same global norm and clip, but keeps AdamW moments for, and
// updates, only the tensors it owns; AllGatherOwned then hands every rank the
// owners' updated tensors, so the weights stay identical bit for bit.
// Checkpoints keep the full state: rank 0 reads the tensors other ranks own
// one at a time while it writes (Fetch on rank 0, Serve on the others).

// Owners partitions tensors among ranks deterministically: largest first (ties
// by name), each to the rank with the fewest elements so far (ties: the lowest
// rank). It returns the owning rank of each tensor, by index.
func Owners(names []string, sizes []int64, ranks int) []int {
	idx := make([]int, len(names))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		i, j := idx[a], idx[b]
		if sizes[i] != sizes[j] {
			return sizes[i] > sizes[j]
		}
		return names[i] < names[j]
	})
	load := make([]int64, max(ranks, 1))
	owners := make([]int, len(names))
	for _, i := range idx {
		best := 0
		for r := range load {
			if load[r] < load[best] {
				best = r
			}
		}
		owners[i] = best
		load[best] += sizes[i]
	}
	return owners
}

// AllGatherOwned gives every rank the owners' data: data[i] (of the same
// length on every rank) is sent by rank owners[i] and overwritten on the
// others. One collective for all tensors.
func AllGatherOwned(ctx context.Context, comm Communicator, owners []int, data [][]byte) error {
	sizes := make([]int, len(data))
	for i, d := range data {
		sizes[i] = len(d)
	}
	return AllGatherOwnedFunc(ctx, comm, owners, sizes,
		func(i int, dst []byte) error { copy(dst, data[i]); return nil },
		func(i int, src []byte) error { copy(data[i], src); return nil })
}

// AllGatherOwnedFunc is AllGatherOwned without a buffer per tensor: tensor i
// has sizes[i] bytes; on its owner read(i, dst) fills dst with it (dst lies in
// the one message this rank sends), and on every other rank write(i, src)
// takes it from the received message (src is valid during the call only).
func AllGatherOwnedFunc(ctx context.Context, comm Communicator, owners, sizes []int, read func(i int, dst []byte) error, write func(i int, src []byte) error) error {
	if comm.Size() < 2 {
		return nil
	}
	if len(owners) != len(sizes) {
		return fmt.Errorf("dist: AllGatherOwned: %d owners for %d tensors", len(owners), len(sizes))
	}
	me := comm.Rank()
	n := 0
	for i, sz := range sizes {
		if owners[i] == me {
			n += sz
		}
	}
	mine := make([]byte, n)
	off := 0
	for i, sz := range sizes {
		if owners[i] == me {
			if err := read(i, mine[off:off+sz]); err != nil {
				return err
			}
			off += sz
		}
	}
	all, err := comm.AllGather(ctx, mine)
	if err != nil {
		return err
	}
	for i, sz := range sizes {
		o := owners[i]
		if o < 0 || o >= len(all) {
			return fmt.Errorf("dist: AllGatherOwned: owner %d of tensor %d in a world of %d", o, i, len(all))
		}
		if len(all[o]) < sz {
			return fmt.Errorf("dist: AllGatherOwned: rank %d sent too few bytes for tensor %d", o, i)
		}
		if o != me {
			if err := write(i, all[o][:sz]); err != nil {
				return err
			}
		}
		all[o] = all[o][sz:]
	}
	for r, rest := range all {
		if len(rest) != 0 {
			return fmt.Errorf("dist: AllGatherOwned: rank %d sent %d bytes too many", r, len(rest))
		}
	}
	return nil
}

// AllGatherOwnedFloat32 is AllGatherOwned on float32 slices (the bits travel unchanged).
func AllGatherOwnedFloat32(ctx context.Context, comm Communicator, owners []int, data [][]float32) error {
	if comm.Size() < 2 {
		return nil
	}
	bufs := make([][]byte, len(data))
	for i, d := range data {
		bufs[i] = make([]byte, 4*len(d))
		if owners[i] == comm.Rank() {
			for j, v := range d {
				binary.LittleEndian.PutUint32(bufs[i][4*j:], math.Float32bits(v))
			}
		}
	}
	if err := AllGatherOwned(ctx, comm, owners, bufs); err != nil {
		return err
	}
	for i, d := range data {
		if owners[i] != comm.Rank() {
			for j := range d {
				d[j] = math.Float32frombits(binary.LittleEndian.Uint32(bufs[i][4*j:]))
			}
		}
	}
	return nil
}

// Fetch requests, on rank 0, tensor i of a sharded state from its owner (which
// must be running Serve) and returns its bytes.
func Fetch(ctx context.Context, comm Communicator, i, owner int) ([]byte, error) {
	if comm.Rank() != 0 {
		return nil, fmt.Errorf("dist: Fetch on rank %d (only rank 0 fetches)", comm.Rank())
	}
	if err := sendIndex(ctx, comm, int64(i)); err != nil {
		return nil, err
	}
	all, err := comm.Gather(ctx, nil)
	if err != nil {
		return nil, err
	}
	if owner < 0 || owner >= len(all) || len(all[owner]) == 0 {
		return nil, fmt.Errorf("dist: Fetch: rank %d sent nothing for tensor %d", owner, i)
	}
	b := all[owner]
	if b[0] != 0 {
		return nil, fmt.Errorf("rank %d: %s", owner, b[1:])
	}
	return b[1:], nil
}

// EndFetch releases the ranks in Serve; failed (rank 0's error, or nil) makes
// their Serve return an error too, so that all stop together.
func EndFetch(ctx context.Context, comm Communicator, failed error) error {
	code := int64(-1)
	if failed != nil {
		code = -2
	}
	return sendIndex(ctx, comm, code)
}

// Serve answers rank 0's Fetch requests until EndFetch: for a tensor i with
// owners[i] == this rank it sends read(i). It returns an error when rank 0
// reported a failure or a read failed.
func Serve(ctx context.Context, comm Communicator, owners []int, read func(i int) ([]byte, error)) error {
	var readErr error
	for {
		var b [8]byte
		if err := comm.Broadcast(ctx, b[:], 0); err != nil {
			return err
		}
		i := int64(binary.LittleEndian.Uint64(b[:]))
		switch {
		case i == -1:
			return readErr
		case i == -2:
			return errors.Join(readErr, errors.New("rank 0 failed to write the checkpoint"))
		case i < 0 || i >= int64(len(owners)):
			return fmt.Errorf("dist: Serve: rank 0 asked for tensor %d of %d", i, len(owners))
		}
		var msg []byte
		if owners[i] == comm.Rank() {
			data, err := read(int(i))
			if err != nil {
				readErr = err
				msg = append([]byte{1}, err.Error()...)
			} else {
				msg = append([]byte{0}, data...)
			}
		}
		if _, err := comm.Gather(ctx, msg); err != nil { // to rank 0 alone
			return err
		}
	}
}

func sendIndex(ctx context.Context, comm Communicator, i int64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return comm.Broadcast(ctx, b[:], 0)
}
