//go:build cgo && linux && !noxla

package ppo

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels/cuda"
	"github.com/saferlhf/saferlhf/native"
)

// BenchmarkRLMathDevice times an rl_step's RL math on the GPU in its two device forms, at the
// 7B bench's shape (B=16, 128-token prompts + 384 new tokens, PPO-Lag), so that one run decides
// which to keep (issue 9: "measure both and keep the faster; delete what is not used"):
//
//   - graph: what --rl-math graph runs, RLMath.shapeAndGAE on a rollout scored on the device
//     (KL shaping, GAE of both streams, 8 logged means; the two [B] end scores go up, the
//     scalars come down, the advantages, returns and masks stay on the device);
//   - kernels: package kernels/cuda's fused KLShapedRewardsCosts (with its 2 logged statistics)
//     and GAE of both streams on the same PJRT buffers, then a device synchronisation (XLA's
//     next program reads the results). Its inputs in the kernels' layout (sequence mask and
//     values [B,L], end scores on the device) are prepared outside the timing, and it computes
//     neither the 6 logged means nor the updates' padded [B,T] inputs: it is a lower bound.
//
// Before timing, the two forms' advantages must agree (normwise relative error ≤ 1e-5).
// Under SAFERLHF_REQUIRE_GPU a missing GPU fails instead of skipping. bench/gpu/scale.sh runs it
// (section rlmath_device) from a binary built with go test -c.
func BenchmarkRLMathDevice(b *testing.B) {
	skip := func(f string, a ...any) {
		if os.Getenv("SAFERLHF_REQUIRE_GPU") != "" {
			b.Fatalf("SAFERLHF_REQUIRE_GPU set but: "+f, a...)
		}
		b.Skipf(f, a...)
	}
	be, err := backend.New("xla:cuda")
	if err != nil {
		skip("no xla:cuda: %v", err)
	}
	defer be.Finalize()
	k, err := cuda.Open()
	if err != nil {
		skip("no CUDA kernels: %v", err)
	}
	defer k.Close()
	cu := k.CUDA()

	const B, S, G = 16, 128, 384
	cfg := DefaultConfig(PPOLag)
	r := randomRollout(rand.New(rand.NewPCG(16, 512)), B, S+G, S, true)
	L, start := r.L(), r.Start()
	N := L - start
	rm := NewRLMath(be)
	defer rm.Close()
	dev := func(x []float32, dims ...int) *tensors.Tensor {
		v := tensors.FromFlatDataAndDimensions(x, dims...)
		if err := v.MaterializeOnDevice(be, false, 0); err != nil {
			b.Fatal(err)
		}
		v.FinalizeLocal()
		return v
	}
	T := r.T
	r.dev = &rolloutDev{mask: dev(r.Mask, B, T), logp: dev(r.LogProbs, B, L), ref: dev(r.RefLogProbs, B, L),
		rV: dev(padLastCol(r.RewardValues, B, L), B, T), cV: dev(padLastCol(r.CostValues, B, L), B, T)}
	defer r.free()

	// The kernels' inputs: the log-probs are the scoring outputs; the rest in the kernels' layout.
	extra := []*tensors.Tensor{dev(r.SequenceMask(), B, L), dev(r.RewardValues, B, L), dev(r.CostValues, B, L),
		dev(r.Reward, B), dev(r.Cost, B)}
	defer freeTensors(extra...)
	ptr := func(t *tensors.Tensor) cuda.Ptr {
		p, err := cuda.DevicePointer(be, t)
		if err != nil {
			b.Fatal(err)
		}
		return p
	}
	alloc := func(n int) cuda.Ptr {
		p, err := cu.Alloc(4 * n)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cu.Free(p) })
		return p
	}
	kl := cuda.KLArgs{B: B, L: L, Start: start, KLCoeff: cfg.KLCoeff, ClipRangeScore: cfg.ClipRangeScore,
		Reward: ptr(extra[3]), Cost: ptr(extra[4]), LogProbs: ptr(r.dev.logp), RefLogProbs: ptr(r.dev.ref), SeqMask: ptr(extra[0])}
	rewards, costs := alloc(B*L), alloc(B*L)
	gae := cuda.GAEArgs{B: B, L: L, Start: start, Gamma: cfg.Gamma, Lambda: cfg.GAELambda,
		RewardValues: ptr(extra[1]), Rewards: rewards, CostValues: ptr(extra[2]), Costs: costs, SeqMask: kl.SeqMask}
	out := cuda.GAEOut{RewardAdv: alloc(B * N), RewardRet: alloc(B * N), CostAdv: alloc(B * N), CostRet: alloc(B * N)}

	graphStep := func() (*rlDev, error) {
		_, d, err := rm.shapeAndGAE(&cfg, r)
		if err == nil && d == nil {
			err = errors.New("graph rl math: outputs not on the device")
		}
		return d, err
	}
	kernelStep := func() error {
		if _, err := k.KLShapedRewardsCosts(kl, rewards, costs); err != nil {
			return err
		}
		if err := k.GAE(gae, out); err != nil {
			return err
		}
		return k.Sync()
	}

	// Agreement: the graph's [B,L] advantages from start on against the kernels' [B,N].
	d, err := graphStep()
	if err != nil {
		b.Fatal(err)
	}
	if err := kernelStep(); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		g    *tensors.Tensor
		k    cuda.Ptr
	}{{"reward advantages", d.rAdv, out.RewardAdv}, {"cost advantages", d.cAdv, out.CostAdv}} {
		g := tensors.MustCopyFlatData[float32](c.g)
		kv, err := native.Download[float32](cu, c.k, B*N)
		if err != nil {
			b.Fatal(err)
		}
		var num, den float64
		for i := range B {
			for j := range N {
				x, y := float64(g[i*L+start+j]), float64(kv[i*N+j])
				num, den = num+(x-y)*(x-y), den+y*y
			}
		}
		if e := math.Sqrt(num / max(den, 1e-30)); e > 1e-5 || math.IsNaN(e) {
			b.Fatalf("%s: graph vs kernels normwise relative error %.3g > 1e-5", c.name, e)
		} else {
			b.Logf("%s: graph vs kernels agree within %.3g", c.name, e)
		}
	}
	d.free()

	for _, form := range []struct {
		name string
		step func() error
	}{{"graph", func() error { d, err := graphStep(); d.free(); return err }}, {"kernels", kernelStep}} {
		b.Run(form.name, func(b *testing.B) {
			if err := form.step(); err != nil { // warm
				b.Fatal(err)
			}
			t0 := time.Now()
			for b.Loop() {
				if err := form.step(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(time.Since(t0).Seconds()*1e3/float64(b.N), "ms/op")
		})
	}
}
