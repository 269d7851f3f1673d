package cuda

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/saferlhf/saferlhf/native"
)

// Benchmarks report ms/op (wall clock, including launches and, for the
// losses, the read-back of the scalars), GB/s counting each input read once
// and each output written once, and that bandwidth as a fraction of a
// measured device-to-device copy (read + write). bench/gpu/torch_bench.py
// times PyTorch on the same shapes under the same names.

const fillSource = `
extern "C" __global__ void fill_rand(float *x, unsigned long long n, unsigned seed, float scale) {
	for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
	     i += (unsigned long long)gridDim.x * blockDim.x) {
		unsigned h = (unsigned)i * 2654435761u ^ seed;
		h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
		x[i] = scale * ((float)(h >> 8) * (1.0f / 16777216.0f) - 0.5f);
	}
}`

// devData allocates benchmark tensors on the device and frees them at the end.
type devData struct {
	b    *testing.B
	k    *Kernels
	fill *native.Function
	ptrs []Ptr
	seed uint32
}

func newDevData(b *testing.B, k *Kernels) *devData {
	m, err := k.CUDA().Compile(fillSource, "fill.cu", "")
	if err != nil {
		b.Fatal(err)
	}
	f, err := m.Function("fill_rand")
	if err != nil {
		b.Fatal(err)
	}
	d := &devData{b: b, k: k, fill: f}
	b.Cleanup(func() {
		for _, p := range d.ptrs {
			k.CUDA().Free(p)
		}
	})
	return d
}

func (d *devData) alloc(bytes int) Ptr {
	p, err := d.k.CUDA().Alloc(bytes)
	if err != nil {
		d.b.Fatal(err)
	}
	d.ptrs = append(d.ptrs, p)
	return p
}

// rand returns n uniform float32 in [−scale/2, scale/2), generated on the device.
func (d *devData) rand(n int, scale float32) Ptr {
	p := d.alloc(4 * n)
	d.seed += 0x9e3779b9
	if err := d.k.CUDA().Launch(d.fill, native.D1(1024), native.D1(256), 0, p, uint64(n), d.seed, scale); err != nil {
		d.b.Fatal(err)
	}
	return p
}

func (d *devData) upload(x any) Ptr {
	var p Ptr
	var err error
	switch v := x.(type) {
	case []float32:
		p, err = native.Upload(d.k.CUDA(), v)
	case []int32:
		p, err = native.Upload(d.k.CUDA(), v)
	}
	if err != nil {
		d.b.Fatal(err)
	}
	d.ptrs = append(d.ptrs, p)
	return p
}

var copyBW struct {
	once sync.Once
	gbps float64
}

// copyGBps measures a 512 MiB device-to-device copy (bytes read + written per second).
func copyGBps(b *testing.B, k *Kernels) float64 {
	copyBW.once.Do(func() {
		cu := k.CUDA()
		const n = 512 << 20
		src, err := cu.Alloc(n)
		if err != nil {
			b.Fatal(err)
		}
		defer cu.Free(src)
		dst, err := cu.Alloc(n)
		if err != nil {
			b.Fatal(err)
		}
		defer cu.Free(dst)
		cu.Memset8(src, 1, n)
		cu.CopyDtoD(dst, src, n)
		start, _ := cu.NewEvent()
		stop, _ := cu.NewEvent()
		defer start.Destroy()
		defer stop.Destroy()
		start.Record()
		const reps = 10
		for range reps {
			cu.CopyDtoD(dst, src, n)
		}
		stop.Record()
		stop.Synchronize()
		ms, err := stop.ElapsedMs(start)
		if err != nil {
			b.Fatal(err)
		}
		copyBW.gbps = 2 * n * reps / (ms / 1e3) / 1e9
	})
	return copyBW.gbps
}

// run times fn b.N times (then waits for the device) and reports bandwidth for bytes per call.
func run(b *testing.B, k *Kernels, bytes int, fn func() error) {
	if err := fn(); err != nil { // warm-up, and the error path
		b.Fatal(err)
	}
	if err := k.Sync(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	t0 := time.Now()
	for range b.N {
		if err := fn(); err != nil {
			b.Fatal(err)
		}
	}
	if err := k.Sync(); err != nil {
		b.Fatal(err)
	}
	sec := time.Since(t0).Seconds() / float64(b.N)
	b.StopTimer()
	gbps := float64(bytes) / sec / 1e9
	b.ReportMetric(sec*1e3, "ms/op")
	b.ReportMetric(gbps, "GB/s")
	b.ReportMetric(gbps/copyGBps(b, k), "of-copy")
}

var benchShapes = []struct{ B, T int }{{64, 512}, {64, 2048}, {512, 512}, {512, 2048}}

// benchMask returns a [B,L] rollout mask: prompt of width L/4, random response end.
func benchMask(B, L int) []float32 {
	rng := rand.New(rand.NewPCG(7, 7))
	return rollout(rng, B, L, L/4, -1)
}

func BenchmarkCopyDtoD(b *testing.B) {
	k := openOrSkip(b)
	b.ReportMetric(copyGBps(b, k), "GB/s")
}

func BenchmarkKLShaped(b *testing.B) {
	k := openOrSkip(b)
	for _, s := range benchShapes {
		b.Run(fmt.Sprintf("B=%d,T=%d", s.B, s.T), func(b *testing.B) {
			d := newDevData(b, k)
			B, L := s.B, s.T-1
			a := KLArgs{B: B, L: L, Start: L / 4, KLCoeff: 0.01, ClipRangeScore: 50, Reward: d.rand(B, 2), Cost: d.rand(B, 2),
				LogProbs: d.rand(B*L, 1), RefLogProbs: d.rand(B*L, 1), SeqMask: d.upload(benchMask(B, L))}
			r, c := d.rand(B*L, 1), d.rand(B*L, 1)
			run(b, k, 4*B*L*5, func() error { _, err := k.KLShapedRewardsCosts(a, r, c); return err })
		})
	}
}

func BenchmarkGAE(b *testing.B) {
	k := openOrSkip(b)
	for _, s := range benchShapes {
		b.Run(fmt.Sprintf("B=%d,T=%d", s.B, s.T), func(b *testing.B) {
			d := newDevData(b, k)
			B, L := s.B, s.T-1
			start := L / 4
			N := L - start
			a := GAEArgs{B: B, L: L, Start: start, Gamma: 1, Lambda: 0.95, RewardValues: d.rand(B*L, 1), Rewards: d.rand(B*L, 1),
				CostValues: d.rand(B*L, 1), Costs: d.rand(B*L, 1), SeqMask: d.upload(benchMask(B, L))}
			o := GAEOut{RewardAdv: d.rand(B*N, 1), RewardRet: d.rand(B*N, 1), CostAdv: d.rand(B*N, 1), CostRet: d.rand(B*N, 1)}
			run(b, k, 4*(5*B*N+4*B*N), func() error { return k.GAE(a, o) })
		})
	}
}

func BenchmarkActorLoss(b *testing.B) {
	k := openOrSkip(b)
	for _, s := range benchShapes {
		b.Run(fmt.Sprintf("B=%d,T=%d", s.B, s.T), func(b *testing.B) {
			d := newDevData(b, k)
			B, N := s.B, s.T-1-(s.T-1)/4
			a := ActorArgs{B: B, N: N, ClipRatio: 0.2, Lambda: 1, LogProbs: d.rand(B*N, 0.2), OldLogProbs: d.rand(B*N, 0.2),
				RewardAdv: d.rand(B*N, 2), CostAdv: d.rand(B*N, 2), Mask: d.upload(benchMask(B, N))}
			g := d.rand(B*N, 1)
			run(b, k, 4*6*B*N, func() error { _, err := k.ActorLossPPOLag(a, g); return err })
		})
	}
}

func BenchmarkCriticLoss(b *testing.B) {
	k := openOrSkip(b)
	for _, s := range benchShapes {
		b.Run(fmt.Sprintf("B=%d,T=%d", s.B, s.T), func(b *testing.B) {
			d := newDevData(b, k)
			B, N := s.B, s.T-1-(s.T-1)/4
			a := CriticArgs{B: B, N: N, ClipValue: 5, Values: d.rand(B*N, 2), OldValues: d.rand(B*N, 2), Returns: d.rand(B*N, 2),
				Mask: d.upload(benchMask(B, N))}
			g := d.rand(B*N, 1)
			run(b, k, 4*5*B*N, func() error { _, err := k.CriticLoss(a, g); return err })
		})
	}
}

func BenchmarkEndScores(b *testing.B) {
	k := openOrSkip(b)
	for _, s := range benchShapes {
		b.Run(fmt.Sprintf("B=%d,T=%d", s.B, s.T), func(b *testing.B) {
			d := newDevData(b, k)
			B, T := s.B, s.T
			mask, rs, cs := d.upload(benchMask(B, T)), d.rand(B*T, 1), d.rand(B*T, 1)
			er, ec, ei := d.alloc(4*B), d.alloc(4*B), d.alloc(4*B)
			run(b, k, 4*B*T, func() error { return k.EndScores(B, T, mask, rs, cs, er, ec, ei) })
		})
	}
}

var lpShapes = []struct{ N, V int }{{4096, 32000}, {32768, 32000}}

func lpSetup(b *testing.B, k *Kernels, N, V int) (d *devData, logits, tg, out, lse Ptr) {
	d = newDevData(b, k)
	rng := rand.New(rand.NewPCG(8, 8))
	t := make([]int32, N)
	for i := range t {
		t[i] = int32(rng.IntN(V))
	}
	return d, d.rand(N*V, 16), d.upload(t), d.alloc(4 * N), d.alloc(4 * N)
}

func BenchmarkTokenLogProbs(b *testing.B) {
	k := openOrSkip(b)
	for _, s := range lpShapes {
		b.Run(fmt.Sprintf("N=%d,V=%d", s.N, s.V), func(b *testing.B) {
			_, logits, tg, out, lse := lpSetup(b, k, s.N, s.V)
			run(b, k, 4*s.N*s.V, func() error { return k.TokenLogProbs(s.N, s.V, logits, tg, out, lse) })
		})
	}
}

func BenchmarkTokenLogProbsGrad(b *testing.B) {
	k := openOrSkip(b)
	for _, s := range lpShapes {
		b.Run(fmt.Sprintf("N=%d,V=%d", s.N, s.V), func(b *testing.B) {
			d, logits, tg, out, lse := lpSetup(b, k, s.N, s.V)
			if err := k.TokenLogProbs(s.N, s.V, logits, tg, out, lse); err != nil {
				b.Fatal(err)
			}
			dx := d.alloc(4 * s.N * s.V)
			run(b, k, 8*s.N*s.V, func() error { return k.TokenLogProbsGrad(s.N, s.V, logits, tg, lse, 0, dx) })
		})
	}
}
