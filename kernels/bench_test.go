package kernels

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// cpuTime returns the CPU time (user + system) this process has used: on a
// shared machine it measures the work, where wall time also counts waiting.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Benchmarks of every kernel at the shapes, float32 (the training
// path), with a Workspace on all cores. Each reports elements/s (B·T per
// call) and the effective bandwidth GB/s = bytes read and written per call /
// time; BenchmarkCopy measures the machine's copy bandwidth in the same run
// (read + write counted, as for the kernels). cpu-ns/op and cpu-GB/s divide by
// the process CPU time instead of wall time: on a shared machine they measure
// the work, where wall time also counts waiting for a core.

var benchShapes = []struct{ B, T int }{{64, 512}, {64, 2048}, {512, 512}, {512, 2048}}

func BenchmarkCopy(b *testing.B) {
	const n = 64 << 20 / 4 // 64 MiB of float32, far beyond the caches
	src, dst := make([]float32, n), make([]float32, n)
	copy(dst, src) // fault the pages in
	b.SetBytes(2 * 4 * n)
	c0 := cpuTime()
	for b.Loop() {
		copy(dst, src)
	}
	cpu := float64(cpuTime()-c0) / float64(b.N)
	b.ReportMetric(cpu, "cpu-ns/op")
	b.ReportMetric(2*4*n/cpu, "cpu-GB/s")
}

type benchData struct {
	B, L, S, N                                       int
	m, lp, ref, v, c, rw, cs, mS, lpS, oldS, advS, g []float32
	reward, cost, ends1, ends2                       []float32
	ids1, ids2                                       []int32
	o                                                GAEOut[float32]
}

func newBenchData(B, T int) *benchData {
	rng := rand.New(rand.NewPCG(1, 1))
	L := T - 1
	S := L / 4
	N := L - S
	f := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		return x
	}
	d := &benchData{B: B, L: L, S: S, N: N, lp: f(B * L), ref: f(B * L), v: f(B * L), c: f(B * L),
		rw: make([]float32, B*L), cs: make([]float32, B*L), lpS: f(B * N), oldS: f(B * N), advS: f(B * N), g: make([]float32, B*N),
		reward: f(B), cost: f(B), ends1: make([]float32, B), ends2: make([]float32, B), o: NewGAEOut[float32](B, N, true)}
	d.m, d.mS = make([]float32, B*L), make([]float32, B*N)
	d.ids1, d.ids2 = make([]int32, B*L), make([]int32, B*L)
	for i := range B {
		end := S + rng.IntN(N)
		for t := rng.IntN(S + 1); t <= end; t++ {
			d.m[i*L+t] = 1
		}
		copy(d.mS[i*N:(i+1)*N], d.m[i*L+S:(i+1)*L])
		for t := range L {
			d.ids1[i*L+t] = int32(t)
			d.ids2[i*L+t] = int32(t)
			if t >= S {
				d.ids2[i*L+t] = int32(t + 1)
			}
		}
	}
	return d
}

// benchKernel runs fn for every shape, reporting elements/s and GB/s for
// bytesPerElem bytes moved per row element (plus per-row bytes ignored).
func benchKernel(b *testing.B, bytesPerElem int, fn func(d *benchData, ws *Workspace) error) {
	for _, s := range benchShapes {
		b.Run(fmt.Sprintf("B=%d/T=%d", s.B, s.T), func(b *testing.B) {
			d := newBenchData(s.B, s.T)
			ws := NewWorkspace(0) // GOMAXPROCS workers: go test -cpu N chooses
			defer ws.Close()
			if err := fn(d, ws); err != nil {
				b.Fatal(err)
			}
			elems := s.B * s.T
			b.SetBytes(int64(bytesPerElem * elems))
			c0 := cpuTime()
			for b.Loop() {
				_ = fn(d, ws)
			}
			b.ReportMetric(float64(elems)*float64(b.N)/b.Elapsed().Seconds(), "elem/s")
			cpu := float64(cpuTime()-c0) / float64(b.N)
			b.ReportMetric(cpu, "cpu-ns/op")
			b.ReportMetric(float64(bytesPerElem*elems)/cpu, "cpu-GB/s")
		})
	}
}

func BenchmarkMaskedMean(b *testing.B) {
	benchKernel(b, 2*4, func(d *benchData, ws *Workspace) error {
		_, err := MaskedMean(ws, d.lp, d.m, d.B, d.L)
		return err
	})
}

func BenchmarkWhiten(b *testing.B) {
	benchKernel(b, 3*4+2*4, func(d *benchData, ws *Workspace) error {
		return Whiten(ws, d.lp, d.m, d.B, d.L, true, d.rw)
	})
}

func BenchmarkKLShapedRewardsCosts(b *testing.B) {
	benchKernel(b, 5*4, func(d *benchData, ws *Workspace) error {
		_, err := KLShapedRewardsCosts(ws, KLArgs[float32]{B: d.B, L: d.L, KLCoeff: 0.01, ClipRangeScore: 50, Start: d.S,
			Reward: d.reward, Cost: d.cost, LogProbs: d.lp, RefLogProbs: d.ref, SeqMask: d.m}, d.rw, d.cs)
		return err
	})
}

func BenchmarkKLShapedRewards(b *testing.B) {
	benchKernel(b, 4*4, func(d *benchData, ws *Workspace) error {
		_, err := KLShapedRewards(ws, KLArgs[float32]{B: d.B, L: d.L, KLCoeff: 0.01, ClipRangeScore: 50, Start: d.S,
			Reward: d.reward, LogProbs: d.lp, RefLogProbs: d.ref, SeqMask: d.m}, d.rw)
		return err
	})
}

// GAE reads 5 [B,L] tensors and writes 4 [B,N] ones (N = 3L/4 here).
func BenchmarkGAE(b *testing.B) {
	benchKernel(b, 5*4+4*3, func(d *benchData, ws *Workspace) error {
		return GAE(ws, GAEArgs[float32]{B: d.B, L: d.L, Start: d.S, Gamma: 1, Lambda: 0.95, RewardValues: d.v, Rewards: d.lp,
			CostValues: d.c, Costs: d.ref, SeqMask: d.m}, d.o)
	})
}

func BenchmarkGAE1(b *testing.B) {
	benchKernel(b, 3*4+2*3, func(d *benchData, ws *Workspace) error {
		return GAE1(ws, d.B, d.L, d.S, 1, 0.95, d.v, d.lp, d.m, d.o.RewardAdv, d.o.RewardRet)
	})
}

// The actor losses read 5 (4) and write 1 [B,N] tensors; bytes are per [B,T] element: ×3/4.
func BenchmarkActorLossPPOLag(b *testing.B) {
	benchKernel(b, 6*3, func(d *benchData, ws *Workspace) error {
		_, err := ActorLossPPOLag(ws, ActorArgs[float32]{B: d.B, N: d.N, ClipRatio: 0.2, Lambda: 1, LogProbs: d.lpS, OldLogProbs: d.oldS,
			RewardAdv: d.advS, CostAdv: d.o.CostAdv, Mask: d.mS}, d.g)
		return err
	})
}

func BenchmarkActorLossPPO(b *testing.B) {
	benchKernel(b, 5*3, func(d *benchData, ws *Workspace) error {
		_, err := ActorLossPPO(ws, ActorArgs[float32]{B: d.B, N: d.N, ClipRatio: 0.2, LogProbs: d.lpS, OldLogProbs: d.oldS,
			RewardAdv: d.advS, Mask: d.mS}, d.g)
		return err
	})
}

func BenchmarkCriticLoss(b *testing.B) {
	benchKernel(b, 5*3, func(d *benchData, ws *Workspace) error {
		_, err := CriticLoss(ws, CriticArgs[float32]{B: d.B, N: d.N, ClipValue: 5, Values: d.lpS, OldValues: d.oldS,
			Returns: d.advS, Mask: d.mS}, d.g)
		return err
	})
}

// EndScores scans the mask from the right and reads two scores per row: its
// bytes are those of the mask suffix it reads, reported per element as 4·(L−end)/L ≈ 4·3/8.
func BenchmarkEndScores(b *testing.B) {
	benchKernel(b, 1, func(d *benchData, ws *Workspace) error {
		return EndScores(d.B, d.L, d.m, d.lp, d.ref, d.ends1, d.ends2, nil)
	})
}

func BenchmarkRewardLossTokenWise(b *testing.B) {
	benchKernel(b, 2*4+2*4+2*4, func(d *benchData, ws *Workspace) error {
		_, err := RewardLoss(ws, PreferenceArgs[float32]{B: d.B, T: d.L, LossType: TokenWise, Regularization: 0.001,
			BetterIDs: d.ids1, WorseIDs: d.ids2, BetterMask: d.m, WorseMask: d.m, BetterScores: d.lp, WorseScores: d.ref}, d.ends1, d.ends2)
		return err
	})
}

func BenchmarkCostLossTokenWise(b *testing.B) {
	benchKernel(b, 2*4+2*4+2*4, func(d *benchData, ws *Workspace) error {
		_, err := CostLoss(ws, SafetyPreferenceArgs[float32]{B: d.B, T: d.L, LossType: TokenWise, Regularization: 0.001,
			SaferIDs: d.ids1, UnsaferIDs: d.ids2, SaferMask: d.m, UnsaferMask: d.m, SaferScores: d.lp, UnsaferScores: d.ref,
			SaferSign: d.reward, UnsaferSign: d.cost}, d.ends1, d.ends2)
		return err
	})
}

func BenchmarkNormalizerUpdate(b *testing.B) {
	benchKernel(b, 4, func(d *benchData, ws *Workspace) error {
		n := Normalizer{Type: RunningMeanStd, Function: Affine, Var: 1, Epsilon: 1e-8}
		return UpdateNormalizer(&n, d.lp)
	})
}

func BenchmarkLagrangeUpdate(b *testing.B) {
	l, _ := NewLagrange(LagrangeConfig{LambdaInit: 1, LambdaLR: 0.1, LambdaMax: 5})
	costs := make([]float64, 16)
	for b.Loop() {
		_ = l.AddEpisodeCosts(costs)
		l.Update(1)
	}
}
