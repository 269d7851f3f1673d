package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/native"
)

// requireGPUEnv, when set (bench/gpu/check.sh sets it), turns "no GPU" skips into failures.
const requireGPUEnv = "SAFERLHF_REQUIRE_GPU"

// tol is the largest normwise relative error allowed between a CUDA kernel's
// float32 output and the CPU kernel's (float64-accumulated) float32 output.
const tol = 1e-5

// openOrSkip opens GPU 0 and compiles the kernels, or skips saying why.
func openOrSkip(t testing.TB) *Kernels {
	t.Helper()
	k, err := Open()
	if err != nil {
		if os.Getenv(requireGPUEnv) != "" || (native.Compiled && !errors.Is(err, native.ErrNoCUDA) && !strings.Contains(err.Error(), "no CUDA driver")) {
			t.Fatalf("GPU expected (%s set, or a driver was found) but: %v", requireGPUEnv, err)
		}
		t.Skipf("no GPU: %v", err)
	}
	t.Cleanup(func() {
		k.Close()
		k.CUDA().Close()
	})
	return k
}

func TestOpenWithoutCUDA(t *testing.T) {
	if native.Compiled {
		t.Skip("cgo build: Open is exercised by the GPU tests")
	}
	if _, err := Open(); !errors.Is(err, native.ErrNoCUDA) {
		t.Fatalf("Open() error = %v, want ErrNoCUDA", err)
	}
}

// TestSourcesMatchGo checks, without a GPU, that every kernel the Go side looks
// up is defined extern "C" in the embedded sources and that the block sizes
// the kernels assume are the ones the Go side launches with.
func TestSourcesMatchGo(t *testing.T) {
	src := map[string]string{"rl.cu": rlSource, "logprobs.cu": logprobsSource}
	for file, names := range kernelNames {
		for _, n := range names {
			re := regexp.MustCompile(`extern "C" __global__ void (__launch_bounds__\(\w+\)\s*)?` + n + `\(`)
			if !re.MatchString(src[file]) {
				t.Errorf("%s: no extern \"C\" __global__ kernel %s", file, n)
			}
		}
	}
	for _, c := range []struct {
		file, macro string
		want        int
	}{{"rl.cu", "GAE_THREADS", gaeThreads}, {"logprobs.cu", "LP_THREADS", lpThreads}} {
		m := regexp.MustCompile(`#define ` + c.macro + ` (\d+)`).FindStringSubmatch(src[c.file])
		if m == nil {
			t.Errorf("%s: no #define %s", c.file, c.macro)
			continue
		}
		if v, _ := strconv.Atoi(m[1]); v != c.want {
			t.Errorf("%s: %s = %d, Go launches %d threads", c.file, c.macro, v, c.want)
		}
	}
	if rowThreads%32 != 0 || rowThreads > 1024 {
		t.Errorf("rowThreads = %d: block reductions need a multiple of 32 up to 1024", rowThreads)
	}
}

// rollout returns a [B,L] 0/1 mask with left padding inside [0, start) and
// right padding after a random end ≥ start; row emptyRow (if ≥ 0) is all zero.
func rollout(rng *rand.Rand, B, L, start, emptyRow int) []float32 {
	m := make([]float32, B*L)
	for i := range B {
		if i == emptyRow {
			continue
		}
		p := rng.IntN(start + 1)
		end := start + rng.IntN(L-start)
		for t := p; t <= end; t++ {
			m[i*L+t] = 1
		}
	}
	return m
}

func randn(rng *rand.Rand, n int, scale float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * scale)
	}
	return x
}

func slice(x []float32, B, L, start int) []float32 {
	y := make([]float32, 0, B*(L-start))
	for i := range B {
		y = append(y, x[i*L+start:(i+1)*L]...)
	}
	return y
}

// relErr returns max|got−want| / max(max|want|, 1e-30) and fails on NaN (an unwritten, poisoned element).
func relErr[T float32 | int32](t *testing.T, name string, got, want []T) float64 {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d elements, want %d", name, len(got), len(want))
	}
	num, den := 0.0, 1e-30
	for i := range got {
		g, w := float64(got[i]), float64(want[i])
		if math.IsNaN(g) != math.IsNaN(w) {
			t.Fatalf("%s[%d] = %v, want %v (NaN: element not written?)", name, i, g, w)
		}
		num, den = math.Max(num, math.Abs(g-w)), math.Max(den, math.Abs(w))
	}
	return num / den
}

func checkClose[T float32 | int32](t *testing.T, name string, got, want []T) {
	t.Helper()
	if e := relErr(t, name, got, want); e > tol {
		t.Errorf("%s: relative error %.3g > %g", name, e, tol)
	}
}

func checkScalar(t *testing.T, name string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > tol*math.Max(1e-3, math.Abs(want)) {
		t.Errorf("%s = %.9g, CPU %.9g", name, got, want)
	}
}

var testShapes = []struct{ B, L, start, empty int }{
	{1, 2, 1, -1}, {3, 17, 5, -1}, {8, 64, 20, 3}, {5, 2047, 100, -1}, {4, 2049, 1, 0}, {2, 5000, 300, -1},
}

func TestKLShapedParity(t *testing.T) {
	k := openOrSkip(t)
	rng := rand.New(rand.NewPCG(1, 1))
	for _, sh := range testShapes {
		t.Run(fmt.Sprintf("B=%d,L=%d", sh.B, sh.L), func(t *testing.T) {
			B, L := sh.B, sh.L
			a := kernels.KLArgs[float32]{B: B, L: L, Start: sh.start, KLCoeff: 0.1, ClipRangeScore: 3,
				Reward: randn(rng, B, 3), Cost: randn(rng, B, 3), LogProbs: randn(rng, B*L, 1),
				RefLogProbs: randn(rng, B*L, 1), SeqMask: rollout(rng, B, L, sh.start, sh.empty)}
			wr, wc := make([]float32, B*L), make([]float32, B*L)
			want, err := kernels.KLShapedRewardsCosts(nil, a, wr, wc)
			if err != nil {
				t.Fatal(err)
			}
			gr, gc := make([]float32, B*L), make([]float32, B*L)
			got, err := k.KLShapedRewardsCostsHost(a, gr, gc)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "rewards", gr, wr)
			checkClose(t, "costs", gc, wc)
			checkScalar(t, "KL", got.KL, want.KL)
			checkScalar(t, "RewardWithKLPenalty", got.RewardWithKLPenalty, want.RewardWithKLPenalty)
			// Plain PPO: the reward stream only.
			want1, _ := kernels.KLShapedRewards(nil, a, wr)
			got1, err := k.KLShapedRewardsCostsHost(a, gr, nil)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "rewards (PPO)", gr, wr)
			checkScalar(t, "KL (PPO)", got1.KL, want1.KL)
		})
	}
}

func TestGAEParity(t *testing.T) {
	k := openOrSkip(t)
	rng := rand.New(rand.NewPCG(2, 2))
	for _, sh := range testShapes {
		t.Run(fmt.Sprintf("B=%d,L=%d", sh.B, sh.L), func(t *testing.T) {
			B, L, N := sh.B, sh.L, sh.L-sh.start
			a := kernels.GAEArgs[float32]{B: B, L: L, Start: sh.start, Gamma: 1, Lambda: 0.95,
				RewardValues: randn(rng, B*L, 1), Rewards: randn(rng, B*L, 0.5), CostValues: randn(rng, B*L, 1),
				Costs: randn(rng, B*L, 0.5), SeqMask: rollout(rng, B, L, sh.start, sh.empty)}
			mk := func() kernels.GAEOut[float32] {
				return kernels.GAEOut[float32]{RewardAdv: make([]float32, B*N), RewardRet: make([]float32, B*N),
					CostAdv: make([]float32, B*N), CostRet: make([]float32, B*N)}
			}
			want, got := mk(), mk()
			if err := kernels.GAE(nil, a, want); err != nil {
				t.Fatal(err)
			}
			if err := k.GAEHost(a, got); err != nil {
				t.Fatal(err)
			}
			checkClose(t, "reward advantages", got.RewardAdv, want.RewardAdv)
			checkClose(t, "reward returns", got.RewardRet, want.RewardRet)
			checkClose(t, "cost advantages", got.CostAdv, want.CostAdv)
			checkClose(t, "cost returns", got.CostRet, want.CostRet)
			// Single stream, with γ < 1.
			a.CostValues, a.Costs, a.Gamma = nil, nil, 0.9
			one := kernels.GAEOut[float32]{RewardAdv: make([]float32, B*N), RewardRet: make([]float32, B*N)}
			if err := kernels.GAE(nil, a, want); err == nil {
				t.Fatal("CPU GAE accepted cost outputs without cost inputs")
			}
			want1 := kernels.GAEOut[float32]{RewardAdv: make([]float32, B*N), RewardRet: make([]float32, B*N)}
			if err := kernels.GAE(nil, a, want1); err != nil {
				t.Fatal(err)
			}
			if err := k.GAEHost(a, one); err != nil {
				t.Fatal(err)
			}
			checkClose(t, "advantages (one stream)", one.RewardAdv, want1.RewardAdv)
			checkClose(t, "returns (one stream)", one.RewardRet, want1.RewardRet)
		})
	}
}

func TestActorCriticParity(t *testing.T) {
	k := openOrSkip(t)
	rng := rand.New(rand.NewPCG(3, 3))
	for _, sh := range testShapes {
		B, N := sh.B, sh.L-sh.start
		t.Run(fmt.Sprintf("B=%d,N=%d", B, N), func(t *testing.T) {
			mask := slice(rollout(rng, B, sh.L, sh.start, sh.empty), B, sh.L, sh.start)
			a := kernels.ActorArgs[float32]{B: B, N: N, ClipRatio: 0.2, Lambda: 0.8,
				LogProbs: randn(rng, B*N, 0.2), OldLogProbs: randn(rng, B*N, 0.2),
				RewardAdv: randn(rng, B*N, 1), CostAdv: randn(rng, B*N, 1), Mask: mask}
			for _, lag := range []bool{true, false} {
				cpu, gpu := kernels.ActorLossPPO[float32], k.ActorLossPPOHost
				if lag {
					cpu, gpu = kernels.ActorLossPPOLag[float32], k.ActorLossPPOLagHost
				}
				wg, gg := make([]float32, B*N), make([]float32, B*N)
				want, err := cpu(nil, a, wg)
				if err != nil {
					t.Fatal(err)
				}
				got, err := gpu(a, gg)
				if err != nil {
					t.Fatal(err)
				}
				name := fmt.Sprintf("actor (lag=%v)", lag)
				checkClose(t, name+" grad", gg, wg)
				checkScalar(t, name+" loss", got.Loss, want.Loss)
				checkScalar(t, name+" clipfrac", got.ClipFrac, want.ClipFrac)
				checkScalar(t, name+" approxKL", got.ApproxKL, want.ApproxKL)
				if _, err := gpu(a, nil); err != nil { // no gradient wanted
					t.Fatal(err)
				}
			}
			c := kernels.CriticArgs[float32]{B: B, N: N, ClipValue: 0.3, Values: randn(rng, B*N, 1),
				OldValues: randn(rng, B*N, 1), Returns: randn(rng, B*N, 1), Mask: mask}
			wg, gg := make([]float32, B*N), make([]float32, B*N)
			want, err := kernels.CriticLoss(nil, c, wg)
			if err != nil {
				t.Fatal(err)
			}
			got, err := k.CriticLossHost(c, gg)
			if err != nil {
				t.Fatal(err)
			}
			checkClose(t, "critic grad", gg, wg)
			checkScalar(t, "critic loss", got, want)
		})
	}
}

func TestActorLossNonFinite(t *testing.T) {
	k := openOrSkip(t)
	a := kernels.ActorArgs[float32]{B: 1, N: 2, ClipRatio: 0.2, LogProbs: []float32{0, float32(math.NaN())},
		OldLogProbs: []float32{0, 0}, RewardAdv: []float32{1, 1}, Mask: []float32{1, 1}}
	if _, err := k.ActorLossPPOHost(a, nil); !errors.Is(err, kernels.ErrNonFinite) {
		t.Fatalf("NaN log-prob: error %v, want ErrNonFinite", err)
	}
}

func TestEndScoresParity(t *testing.T) {
	k := openOrSkip(t)
	rng := rand.New(rand.NewPCG(4, 4))
	for _, sh := range testShapes {
		B, T := sh.B, sh.L
		mask := rollout(rng, B, T, sh.start, sh.empty)
		rs, cs := randn(rng, B*T, 1), randn(rng, B*T, 1)
		wr, wc, wi := make([]float32, B), make([]float32, B), make([]int32, B)
		gr, gc, gi := make([]float32, B), make([]float32, B), make([]int32, B)
		if err := kernels.EndScores(B, T, mask, rs, cs, wr, wc, wi); err != nil {
			t.Fatal(err)
		}
		if err := k.EndScoresHost(B, T, mask, rs, cs, gr, gc, gi); err != nil {
			t.Fatal(err)
		}
		checkClose(t, "end reward", gr, wr)
		checkClose(t, "end cost", gc, wc)
		checkClose(t, "end index", gi, wi)
		if err := k.EndScoresHost(B, T, mask, rs, nil, gr, nil, nil); err != nil {
			t.Fatal(err)
		}
		checkClose(t, "end reward (one head)", gr, wr)
	}
}

func TestTokenLogProbs(t *testing.T) {
	k := openOrSkip(t)
	rng := rand.New(rand.NewPCG(5, 5))
	for _, sz := range []struct{ N, V int }{{1, 1}, {3, 7}, {5, 1001}, {64, 32000}, {7, 32003}} {
		t.Run(fmt.Sprintf("N=%d,V=%d", sz.N, sz.V), func(t *testing.T) {
			N, V := sz.N, sz.V
			logits := randn(rng, N*V, 4)
			tg := make([]int32, N)
			for i := range tg {
				tg[i] = int32(rng.IntN(V))
			}
			if N > 2 {
				tg[1] = -100 // ignore index
				logits[2*V] = float32(math.Inf(-1))
				logits[2*V+V/2] = 60 // a large logit: the max shift matters
			}
			wl, wlse := make([]float32, N), make([]float32, N)
			if err := TokenLogProbsCPU(N, V, logits, tg, wl, wlse); err != nil {
				t.Fatal(err)
			}
			gl, glse := make([]float32, N), make([]float32, N)
			if err := k.TokenLogProbsHost(N, V, logits, tg, gl, glse); err != nil {
				t.Fatal(err)
			}
			checkClose(t, "logp", gl, wl)
			checkClose(t, "lse", glse, wlse)
			g := randn(rng, N, 1)
			dx := make([]float32, N*V)
			if err := k.TokenLogProbsGradHost(N, V, logits, tg, glse, g, dx); err != nil {
				t.Fatal(err)
			}
			want := make([]float32, N*V)
			for n := range N {
				y := int(tg[n])
				if y < 0 || y >= V {
					continue
				}
				for v := range V {
					oh := 0.0
					if v == y {
						oh = 1
					}
					want[n*V+v] = float32(float64(g[n]) * (oh - math.Exp(float64(logits[n*V+v])-float64(wlse[n]))))
				}
			}
			checkClose(t, "dlogits", dx, want)
		})
	}
}

func TestPJRTStubWithoutXLA(t *testing.T) {
	if native.Compiled && xlaBuild {
		t.Skip("XLA build: covered by TestPJRTInterop")
	}
	if _, err := DevicePointer(nil, nil); !errors.Is(err, native.ErrNoCUDA) {
		t.Errorf("DevicePointer error = %v, want ErrNoCUDA", err)
	}
	if _, err := ViewTensor(nil, 1, 0, 1); !errors.Is(err, native.ErrNoCUDA) {
		t.Errorf("ViewTensor error = %v, want ErrNoCUDA", err)
	}
}
