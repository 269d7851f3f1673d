package collectives

import (
	stdctx "context"
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/dtypes/bfloat16"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native"
	"github.com/saferlhf/saferlhf/train/dist"
)

// hostDevice is a device whose "device memory" is host memory: a tensor's
// pointer is the address of its host bytes (the pure-Go backend), and
// AllReduce goes through a dist.Communicator (Sum or Mean). It records the
// all-reduces, so the tests see the packing.
type hostDevice struct {
	comm    dist.Communicator
	avg     bool
	regions map[native.DevicePtr][]byte // tensor bytes and allocations, by base address
	allocs  map[native.DevicePtr]bool
	calls   []string // "staged f32×8" or "in-place bf16×4"
}

func newHostDevice(comm dist.Communicator, avg bool) *hostDevice {
	return &hostDevice{comm: comm, avg: avg, regions: map[native.DevicePtr][]byte{}, allocs: map[native.DevicePtr]bool{}}
}

func (d *hostDevice) Pointer(t *tensors.Tensor) (native.DevicePtr, error) {
	var b []byte
	if err := t.MutableBytes(func(x []byte) { b = x }); err != nil {
		return 0, err
	}
	p := native.DevicePtr(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	d.regions[p] = b
	return p, nil
}

func (d *hostDevice) Written(*tensors.Tensor) {}

func (d *hostDevice) Alloc(n int) (native.DevicePtr, error) {
	b := make([]byte, n)
	p := native.DevicePtr(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	d.regions[p], d.allocs[p] = b, true
	return p, nil
}

func (d *hostDevice) Free(p native.DevicePtr) error {
	if !d.allocs[p] {
		return fmt.Errorf("free of %#x: not allocated", uintptr(p))
	}
	delete(d.allocs, p)
	delete(d.regions, p)
	return nil
}

// mem returns the n bytes at p.
func (d *hostDevice) mem(p native.DevicePtr, n int) ([]byte, bool) {
	for base, b := range d.regions {
		if p >= base && int(p-base)+n <= len(b) {
			return b[p-base : int(p-base)+n], d.allocs[base]
		}
	}
	panic(fmt.Sprintf("hostDevice: %d bytes at %#x are not memory of the device", n, uintptr(p)))
}

func (d *hostDevice) CopyDtoD(dst, src native.DevicePtr, n int) error {
	s, _ := d.mem(src, n)
	t, _ := d.mem(dst, n)
	copy(t, s)
	return nil
}

func (d *hostDevice) AllReduce(p native.DevicePtr, count int, dt native.NCCLDataType, op native.NCCLRedOp) error {
	b, staged := d.mem(p, count*dt.Size())
	vals := make([]float32, count)
	name := map[native.NCCLDataType]string{native.NCCLFloat32: "f32", native.NCCLBfloat16: "bf16"}[dt]
	for i := range vals {
		switch dt {
		case native.NCCLFloat32:
			vals[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		case native.NCCLBfloat16:
			vals[i] = bfloat16.FromBits(binary.LittleEndian.Uint16(b[2*i:])).Float32()
		default:
			return fmt.Errorf("hostDevice: dtype %d", dt)
		}
	}
	dop := map[native.NCCLRedOp]dist.Op{native.NCCLSum: dist.Sum, native.NCCLAvg: dist.Mean}[op]
	if err := d.comm.AllReduce(stdctx.Background(), vals, dop); err != nil {
		return err
	}
	for i, v := range vals {
		switch dt {
		case native.NCCLFloat32:
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		case native.NCCLBfloat16:
			binary.LittleEndian.PutUint16(b[2*i:], bfloat16.FromFloat32(v).Bits())
		}
	}
	where := "in-place"
	if staged {
		where = "staged"
	}
	d.calls = append(d.calls, fmt.Sprintf("%s %s×%d", where, name, count))
	return nil
}

func (d *hostDevice) Broadcast(p native.DevicePtr, count int, dt native.NCCLDataType, root int) error {
	b, _ := d.mem(p, count*dt.Size())
	d.calls = append(d.calls, fmt.Sprintf("broadcast %d bytes from %d", len(b), root))
	return d.comm.Broadcast(stdctx.Background(), b, root)
}

func (d *hostDevice) Sync() error { return nil }
func (d *hostDevice) Size() int   { return d.comm.Size() }
func (d *hostDevice) Avg() bool   { return d.avg }
func (d *hostDevice) Close() error {
	if len(d.allocs) > 0 {
		return fmt.Errorf("hostDevice: %d allocations not freed", len(d.allocs))
	}
	return nil
}

func goBackend(t testing.TB) backends.Backend {
	t.Helper()
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// localGroup returns world in-process TCP communicators (world 1: dist.Self).
func localGroup(t *testing.T, world int) []dist.Communicator {
	t.Helper()
	if world == 1 {
		return []dist.Communicator{dist.Self{}}
	}
	cs, err := dist.NewLocalGroup(stdctx.Background(), world, dist.Options{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]dist.Communicator, world)
	for i, c := range cs {
		out[i] = c
		t.Cleanup(func() { c.Close() })
	}
	return out
}

func TestPlanBuckets(t *testing.T) {
	f32, bf := dtypes.Float32, dtypes.BFloat16
	for _, tc := range []struct {
		name  string
		dts   []dtypes.DType
		sizes []int
		limit int
		want  []bucket
	}{
		{"all in one", []dtypes.DType{f32, f32, f32}, []int{8, 12, 4}, 64,
			[]bucket{{f32, []int{0, 1, 2}, []int{0, 8, 20}, 24}}},
		{"large in place, small packed", []dtypes.DType{f32, f32, f32, f32}, []int{8, 64, 12, 100}, 64,
			[]bucket{{f32, []int{0, 2}, []int{0, 8}, 20}, {f32, []int{1}, nil, 64}, {f32, []int{3}, nil, 100}}},
		{"full bucket closes", []dtypes.DType{f32, f32, f32}, []int{40, 20, 8}, 64,
			[]bucket{{f32, []int{0, 1}, []int{0, 40}, 60}, {f32, []int{2}, nil, 8}}},
		{"one bucket per dtype, empty skipped", []dtypes.DType{f32, bf, f32, bf, f32}, []int{4, 2, 0, 6, 8}, 64,
			[]bucket{{f32, []int{0, 4}, []int{0, 4}, 12}, {bf, []int{1, 3}, []int{0, 2}, 8}}},
		{"nothing", nil, nil, 64, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := planBuckets(tc.dts, tc.sizes, tc.limit); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("planBuckets(%v, %v) = %+v, want %+v", tc.dts, tc.sizes, got, tc.want)
			}
		})
	}
}

func TestCheckDisjoint(t *testing.T) {
	if err := checkDisjoint([]native.DevicePtr{100, 0, 116}, []int{16, 100, 4}); err != nil {
		t.Errorf("adjacent buffers: %v", err)
	}
	if err := checkDisjoint([]native.DevicePtr{100, 0, 110}, []int{16, 100, 4}); err == nil {
		t.Error("overlapping buffers accepted")
	}
	if err := checkDisjoint([]native.DevicePtr{100, 0, 100}, []int{16, 0, 4}); err == nil {
		t.Error("the same buffer twice accepted")
	}
}

// TestReducerMean: two ranks average f32 gradients packed in a staging bucket
// and in place, and a bf16 one, with ncclAvg and with ncclSum then a scale:
// every rank gets the exact mean, the packing is as planned, and the staging
// buffer is freed on Close.
func TestReducerMean(t *testing.T) {
	be := goBackend(t)
	rankGrads := func(r int) []*tensors.Tensor {
		f := float32(r)
		return []*tensors.Tensor{
			tensors.FromFlatDataAndDimensions([]float32{1 + f, 2, 3 * f}, 3),
			tensors.FromFlatDataAndDimensions([]float32{4, 5 + 2*f, 6, 7, -f}, 5, 1),
			tensors.FromFlatDataAndDimensions(make([]float32, 0), 0),
			tensors.FromFlatDataAndDimensions(func() []float32 {
				v := make([]float32, 20)
				for i := range v {
					v[i] = float32(i) * (1 + f)
				}
				return v
			}(), 4, 5), // 80 bytes: in place
			tensors.FromFlatDataAndDimensions([]bfloat16.BFloat16{bfloat16.FromFloat32(1 + 2*f), bfloat16.FromFloat32(-2), bfloat16.FromFloat32(4 * f)}, 3),
		}
	}
	want := []any{[]float32{1.5, 2, 1.5}, []float32{4, 6, 6, 7, -0.5}, []float32{}, func() []float32 {
		v := make([]float32, 20)
		for i := range v {
			v[i] = float32(i) * 1.5
		}
		return v
	}(), []bfloat16.BFloat16{bfloat16.FromFloat32(2), bfloat16.FromFloat32(-2), bfloat16.FromFloat32(2)}}
	wantCalls := []string{"staged f32×8", "in-place f32×20", "in-place bf16×3"}
	for _, avg := range []bool{true, false} {
		t.Run(fmt.Sprintf("avg=%v", avg), func(t *testing.T) {
			comms := localGroup(t, 2)
			var wg sync.WaitGroup
			for r, c := range comms {
				wg.Go(func() {
					dev := newHostDevice(c, avg)
					red := newReducer(dev, be, 64)
					in := rankGrads(r)
					out, err := red.Mean(in)
					if err != nil {
						t.Errorf("rank %d: %v", r, err)
						return
					}
					for i, o := range out {
						if avg != (o == in[i]) {
							t.Errorf("rank %d, gradient %d: in place %v with avg %v", r, i, o == in[i], avg)
						}
						var got any
						o.MustConstFlatData(func(flat any) { got = fmt.Sprint(flat) })
						if got != fmt.Sprint(want[i]) || o.DType() != in[i].DType() {
							t.Errorf("rank %d, gradient %d: %s %v, want %v", r, i, o.DType(), got, want[i])
						}
					}
					if !reflect.DeepEqual(dev.calls, wantCalls) {
						t.Errorf("rank %d: all-reduces %q, want %q", r, dev.calls, wantCalls)
					}
					if err := red.Close(); err != nil {
						t.Errorf("rank %d: %v", r, err)
					}
				})
			}
			wg.Wait()
		})
	}
}

// TestReducerRejects: gradients NCCL cannot average are refused with their index.
func TestReducerRejects(t *testing.T) {
	red := newReducer(newHostDevice(dist.Self{}, true), goBackend(t), 64)
	_, err := red.Mean([]*tensors.Tensor{tensors.FromFlatDataAndDimensions([]float32{1}, 1), tensors.FromFlatDataAndDimensions([]int32{1, 2}, 2)})
	if err == nil || err.Error() != "gradient 1 ((Int32)[2]): NCCL averaging takes float32, bfloat16, float16 or float64" {
		t.Errorf("int32 gradient: %v", err)
	}
}
