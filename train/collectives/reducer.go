package collectives

import (
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/native"
)

// DefaultBucketBytes bounds the staging buffer of Reducer: tensors smaller than
// this are packed into buckets of at most this many bytes (one all-reduce per
// bucket, as PyTorch DDP's buckets); larger ones are all-reduced in place.
const DefaultBucketBytes = 32 << 20

// device is what Reducer needs of a GPU and its NCCL communicator. cudaDevice
// is the real one; the tests use one whose "device memory" is host memory.
type device interface {
	// Pointer is the address of t's device buffer; it stays valid while t lives.
	Pointer(t *tensors.Tensor) (native.DevicePtr, error)
	// Written tells t that its device buffer was written in place (a host copy is stale).
	Written(t *tensors.Tensor)
	Alloc(bytes int) (native.DevicePtr, error)
	Free(p native.DevicePtr) error
	CopyDtoD(dst, src native.DevicePtr, bytes int) error
	// AllReduce reduces count elements at p over the ranks, in place.
	AllReduce(p native.DevicePtr, count int, dt native.NCCLDataType, op native.NCCLRedOp) error
	// Broadcast copies root's count elements at p to p on every rank.
	Broadcast(p native.DevicePtr, count int, dt native.NCCLDataType, root int) error
	// Sync waits for all work on the device (XLA's included).
	Sync() error
	Size() int
	// Avg reports whether the library has ncclAvg.
	Avg() bool
	Close() error
}

// Reducer averages gradient tensors in GPU memory with NCCL (a
// trainer.GradientReducer). Tensors of at least bucketBytes are all-reduced in
// place; smaller ones of one dtype are copied device-to-device into a staging
// buffer, all-reduced together and copied back. The mean is ncclAvg where the
// library has it (NCCL >= 2.10), else ncclSum and a multiplication by 1/ranks
// in a small graph that returns new tensors.
//
// Ordering with XLA: go-xla returns an execution's outputs only after the
// device finished computing them, and Reducer synchronises the device before
// its first and after its last NCCL call, so XLA's next execution reads the
// averaged values. Writing in place is safe because an accumulator's buffer is
// owned by its variable alone (PJRT gives every output its own buffer; Mean
// checks that no two overlap) and no execution uses it meanwhile.
type Reducer struct {
	dev         device
	be          backends.Backend
	bucketBytes int

	mu           sync.Mutex
	staging      native.DevicePtr
	stagingBytes int
	scale        *graph.Exec
}

func newReducer(dev device, be backends.Backend, bucketBytes int) *Reducer {
	return &Reducer{dev: dev, be: be, bucketBytes: bucketBytes}
}

// Name returns "nccl".
func (r *Reducer) Name() string { return "nccl" }

func (r *Reducer) meanBy() string {
	if r.dev.Avg() {
		return "ncclAvg"
	}
	return "ncclSum and a scale"
}

// ncclType maps a GoMLX dtype to NCCL's.
func ncclType(dt dtypes.DType) (native.NCCLDataType, bool) {
	switch dt {
	case dtypes.Float32:
		return native.NCCLFloat32, true
	case dtypes.BFloat16:
		return native.NCCLBfloat16, true
	case dtypes.Float16:
		return native.NCCLFloat16, true
	case dtypes.Float64:
		return native.NCCLFloat64, true
	}
	return 0, false
}

// bucket is one all-reduce: items (indices of the gradients) of one dtype,
// at byte offsets of the staging buffer, or one item in place (offsets nil).
type bucket struct {
	dt      dtypes.DType
	items   []int
	offsets []int
	bytes   int
}

// planBuckets groups tensors (their dtypes and byte sizes, in order) for
// all-reduce: one of at least limit bytes alone and in place; smaller ones
// packed, in order per dtype, into buckets of at most limit bytes (a bucket
// left with one item is reduced in place). Empty tensors are skipped. Every
// rank computes the same plan from the same shapes.
func planBuckets(dts []dtypes.DType, sizes []int, limit int) []bucket {
	var out []bucket
	open := map[dtypes.DType]int{} // dtype -> index in out of its open bucket
	for i, n := range sizes {
		dt := dts[i]
		switch {
		case n == 0:
			continue
		case n >= limit:
			out = append(out, bucket{dt: dt, items: []int{i}, bytes: n})
			continue
		}
		if j, ok := open[dt]; ok && out[j].bytes+n <= limit {
			out[j].items = append(out[j].items, i)
			out[j].offsets = append(out[j].offsets, out[j].bytes)
			out[j].bytes += n
			continue
		}
		open[dt] = len(out)
		out = append(out, bucket{dt: dt, items: []int{i}, offsets: []int{0}, bytes: n})
	}
	for i := range out {
		if len(out[i].items) == 1 {
			out[i].offsets = nil
		}
	}
	return out
}

// buffers returns the dtypes, byte sizes and device addresses of ts (what names them in errors).
func (r *Reducer) buffers(what string, ts []*tensors.Tensor) ([]dtypes.DType, []int, []native.DevicePtr, error) {
	dts := make([]dtypes.DType, len(ts))
	sizes := make([]int, len(ts))
	for i, t := range ts {
		if _, ok := ncclType(t.DType()); !ok {
			return nil, nil, nil, fmt.Errorf("%s %d (%s): NCCL averaging takes float32, bfloat16, float16 or float64", what, i, t.Shape())
		}
		dts[i], sizes[i] = t.DType(), int(t.Memory())
	}
	ptrs := make([]native.DevicePtr, len(ts))
	for i, t := range ts {
		if sizes[i] == 0 {
			continue
		}
		var err error
		if ptrs[i], err = r.dev.Pointer(t); err != nil {
			return nil, nil, nil, fmt.Errorf("%s %d (%s): %w", what, i, t.Shape(), err)
		}
	}
	if err := checkDisjoint(ptrs, sizes); err != nil {
		return nil, nil, nil, fmt.Errorf("%ss: %w", what, err)
	}
	return dts, sizes, ptrs, nil
}

// Mean implements trainer.GradientReducer.
func (r *Reducer) Mean(grads []*tensors.Tensor) ([]*tensors.Tensor, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	dts, sizes, ptrs, err := r.buffers("gradient", grads)
	if err != nil {
		return nil, err
	}
	op := native.NCCLAvg
	if !r.dev.Avg() {
		op = native.NCCLSum
	}
	if err := r.dev.Sync(); err != nil { // XLA's work on these buffers is done
		return nil, err
	}
	plan := planBuckets(dts, sizes, r.bucketBytes)
	for _, b := range plan {
		if err := r.reduce(b, ptrs, grads, op); err != nil {
			return nil, err
		}
	}
	if err := r.dev.Sync(); err != nil { // our copies and NCCL are done before XLA reads
		return nil, err
	}
	for i, t := range grads {
		if sizes[i] > 0 {
			r.dev.Written(t)
		}
	}
	if op == native.NCCLAvg || r.dev.Size() == 1 {
		return grads, nil
	}
	return r.divide(grads)
}

// reduce runs one bucket's all-reduce.
func (r *Reducer) reduce(b bucket, ptrs []native.DevicePtr, grads []*tensors.Tensor, op native.NCCLRedOp) error {
	nt, _ := ncclType(b.dt)
	count := b.bytes / b.dt.Size()
	if b.offsets == nil {
		i := b.items[0]
		if err := r.dev.AllReduce(ptrs[i], count, nt, op); err != nil {
			return fmt.Errorf("gradient %d (%s): %w", i, grads[i].Shape(), err)
		}
		return nil
	}
	if b.bytes > r.stagingBytes {
		if r.staging != 0 {
			if err := r.dev.Free(r.staging); err != nil {
				return err
			}
			r.staging, r.stagingBytes = 0, 0
		}
		p, err := r.dev.Alloc(b.bytes)
		if err != nil {
			return fmt.Errorf("staging buffer of %d bytes: %w", b.bytes, err)
		}
		r.staging, r.stagingBytes = p, b.bytes
	}
	n := func(i int) int { return int(grads[i].Memory()) }
	for k, i := range b.items {
		if err := r.dev.CopyDtoD(r.staging+native.DevicePtr(b.offsets[k]), ptrs[i], n(i)); err != nil {
			return err
		}
	}
	if err := r.dev.AllReduce(r.staging, count, nt, op); err != nil {
		return fmt.Errorf("%d gradients (%d bytes of %s): %w", len(b.items), b.bytes, b.dt, err)
	}
	for k, i := range b.items {
		if err := r.dev.CopyDtoD(ptrs[i], r.staging+native.DevicePtr(b.offsets[k]), n(i)); err != nil {
			return err
		}
	}
	return nil
}

// BroadcastOwned implements trainer.OwnedBroadcaster (ZeRO-1's weight gather): one
// in-place ncclBroadcast per tensor from its owner.
func (r *Reducer) BroadcastOwned(ts []*tensors.Tensor, owners []int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(owners) != len(ts) {
		return fmt.Errorf("%d owners for %d tensors", len(owners), len(ts))
	}
	dts, sizes, ptrs, err := r.buffers("tensor", ts)
	if err != nil {
		return err
	}
	if err := r.dev.Sync(); err != nil {
		return err
	}
	for i, t := range ts {
		if sizes[i] == 0 {
			continue
		}
		nt, _ := ncclType(dts[i])
		if err := r.dev.Broadcast(ptrs[i], sizes[i]/dts[i].Size(), nt, owners[i]); err != nil {
			return fmt.Errorf("tensor %d (%s) from rank %d: %w", i, t.Shape(), owners[i], err)
		}
	}
	if err := r.dev.Sync(); err != nil {
		return err
	}
	for i, t := range ts {
		if sizes[i] > 0 {
			r.dev.Written(t)
		}
	}
	return nil
}

// divide returns grads / ranks as new tensors (after an ncclSum).
func (r *Reducer) divide(grads []*tensors.Tensor) ([]*tensors.Tensor, error) {
	if r.scale == nil {
		inv := 1 / float64(r.dev.Size())
		var err error
		r.scale, err = graph.NewExec(r.be, func(xs []*graph.Node) []*graph.Node {
			out := make([]*graph.Node, len(xs))
			for i, x := range xs {
				out[i] = graph.MulScalar(x, inv)
			}
			return out
		})
		if err != nil {
			return nil, fmt.Errorf("scaling the sums: %w", err)
		}
	}
	args := make([]any, len(grads))
	for i, t := range grads {
		args[i] = t
	}
	out, err := r.scale.Exec(args...)
	if err != nil {
		return nil, fmt.Errorf("scaling the sums: %w", err)
	}
	return out, nil
}

// checkDisjoint fails when two gradients' device buffers overlap (in-place
// averaging would then count one twice).
func checkDisjoint(ptrs []native.DevicePtr, sizes []int) error {
	idx := make([]int, 0, len(ptrs))
	for i := range ptrs {
		if sizes[i] > 0 {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(a, b int) bool { return ptrs[idx[a]] < ptrs[idx[b]] })
	for k := 1; k < len(idx); k++ {
		i, j := idx[k-1], idx[k]
		if ptrs[i]+native.DevicePtr(sizes[i]) > ptrs[j] {
			return fmt.Errorf("%d and %d share device memory (%#x+%d, %#x): cannot average in place", i, j, uintptr(ptrs[i]), sizes[i], uintptr(ptrs[j]))
		}
	}
	return nil
}

// Close frees the staging buffer and destroys the communicator.
func (r *Reducer) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	if r.staging != 0 {
		errs = append(errs, r.dev.Free(r.staging))
		r.staging = 0
	}
	errs = append(errs, r.dev.Close())
	return errors.Join(errs...)
}
