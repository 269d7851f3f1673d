package ppo

import (
	"bytes"
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels"
)

// rlMathTol is the agreement of the float32 graph RL math with the float64 host kernels: the
// inputs are float32 either way; shaping rounds to float32 (relative 2⁻²⁴ per op) and GAE sums
// in float64 in both, so advantages and returns agree to ~1e-6 relative; 1e-5·(1+|x|) leaves margin.
const rlMathTol = 1e-5

func near(a, b float64) bool { return math.Abs(a-b) <= rlMathTol*(1+math.Abs(b)) }

// randomRollout is a scored rollout of B rows: left-padded prompts of width S, right-padded
// responses of random length (row 1 empty), random log-probs, scores and values.
func randomRollout(rng *rand.Rand, B, T, S int, cost bool) *Rollout {
	r := &Rollout{B: B, T: T, S: S, Seq: make([]int32, B*T), Mask: make([]float32, B*T)}
	L := r.L()
	for i := 0; i < B; i++ {
		pad := rng.IntN(S - 1)
		n := 1 + rng.IntN(T-S)
		if i == 1 {
			n = 0
		}
		for t := pad; t < S+n; t++ {
			r.Mask[i*T+t] = 1
		}
	}
	f := func(n int, s float64) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64() * s)
		}
		return x
	}
	r.LogProbs, r.RefLogProbs = f(B*L, 2), f(B*L, 2)
	r.Reward, r.RewardValues = f(B, 3), f(B*L, 1)
	if cost {
		r.Cost, r.CostValues = f(B, 3), f(B*L, 1)
	}
	return r
}

// TestRLMathGraphMatchesHost: the graph RL math equals the host kernels (shapeAndGAE and the
// logged masked means) for PPO-Lag, PPO and the fixed-penalty baseline, within rlMathTol.
func TestRLMathGraphMatchesHost(t *testing.T) {
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	rm := NewRLMath(be)
	defer rm.Close()
	ws := kernels.NewWorkspace(1)
	defer ws.Close()
	rng := rand.New(rand.NewPCG(3, 9))
	for _, alg := range []Algorithm{PPOLag, PPO, Fixed} {
		for _, sz := range [][3]int{{4, 12, 5}, {3, 9, 2}} {
			cfg := DefaultConfig(alg)
			cfg.KLCoeff, cfg.LambdaInit, cfg.ClipRangeScore = 0.3, 0.7, 4 // make the KL, penalty and clip matter
			r := randomRollout(rng, sz[0], sz[1], sz[2], cfg.UsesCost())
			want, err := shapeAndGAE(ws, &cfg, r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := rm.shapeAndGAE(&cfg, r)
			if err != nil {
				t.Fatal(err)
			}
			name := string(alg)
			if !near(got.stats.KL, want.stats.KL) || !near(got.stats.RewardWithKLPenalty, want.stats.RewardWithKLPenalty) {
				t.Errorf("%s: stats %+v, host %+v", name, got.stats, want.stats)
			}
			resp := r.ResponseMask()
			B, L := r.B, r.L()
			pairs := []struct {
				what      string
				got, want []float64
			}{{"reward adv", got.rAdv, want.rAdv}, {"reward ret", got.rRet, want.rRet}}
			wantMeans := []float64{maskedMean(B, L, want.rAdv, resp), maskedMean(B, L, want.rRet, resp), maskedMean(B, L, to64(r.RewardValues), resp)}
			if cfg.UsesCostCritic() {
				pairs = append(pairs, struct {
					what      string
					got, want []float64
				}{"cost adv", got.cAdv, want.cAdv}, struct {
					what      string
					got, want []float64
				}{"cost ret", got.cRet, want.cRet})
				wantMeans = append(wantMeans, maskedMean(B, L, want.cAdv, resp), maskedMean(B, L, want.cRet, resp), maskedMean(B, L, to64(r.CostValues), resp))
			} else if got.cAdv != nil {
				t.Errorf("%s: cost stream without a cost critic", name)
			}
			pairs = append(pairs, struct {
				what      string
				got, want []float64
			}{"means", got.means, wantMeans})
			for _, p := range pairs {
				if len(p.got) != len(p.want) {
					t.Fatalf("%s %s: %d values, want %d", name, p.what, len(p.got), len(p.want))
				}
				for i := range p.want {
					if !near(p.got[i], p.want[i]) {
						t.Errorf("%s %s[%d] = %v, host %v", name, p.what, i, p.got[i], p.want[i])
						break
					}
				}
			}
		}
	}
	if rm.H2DBytes == 0 || rm.D2HBytes == 0 {
		t.Errorf("bytes not counted: %d up, %d down", rm.H2DBytes, rm.D2HBytes)
	}
}

// TestRLMathGraphTrainer: three PPO-Lag steps on stories260K with --rl-math graph log the same
// metrics as with host RL math within tolerance (the same samples: the first step's rollout is
// identical, later ones follow slightly different float32 weights), and a run interrupted after
// one step resumes to exactly the uninterrupted graph run's metrics.
func TestRLMathGraphTrainer(t *testing.T) {
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	rm := NewRLMath(be)
	defer rm.Close()
	run := func(cfg Config, opt Options) []StepMetrics {
		t.Helper()
		tr, err := NewTrainer(cfg, opt, tinyNets(t, cfg), tinyPrompts(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		tr.Close()
		return tr.History()
	}
	host := tinyConfig()
	graph := host
	graph.RLMath = RLMathGraph
	hm := run(host, Options{OutDir: t.TempDir()})
	ref := t.TempDir()
	gm := run(graph, Options{OutDir: ref, RLMath: rm})
	if len(hm) != 3 || len(gm) != 3 {
		t.Fatalf("%d and %d steps", len(hm), len(gm))
	}
	const tol = 1e-3 // three steps of training on float32-rounded advantages
	for i := range hm {
		h, g := hm[i], gm[i]
		for _, c := range []struct {
			name string
			h, g float64
		}{{"kl", h.KL, g.KL}, {"reward", h.Reward, g.Reward}, {"cost", h.Cost, g.Cost}, {"lambda", h.Lambda, g.Lambda},
			{"reward_advantage", h.RewardAdvantage, g.RewardAdvantage}, {"cost_return", h.CostReturn, g.CostReturn},
			{"actor_loss", h.ActorLoss, g.ActorLoss}, {"reward_critic_loss", h.RewardCriticLoss, g.RewardCriticLoss}} {
			if math.Abs(c.h-c.g) > tol*(1+math.Abs(c.h)) {
				t.Errorf("step %d %s: graph %v, host %v", i+1, c.name, c.g, c.h)
			}
		}
	}
	if rm.H2DBytes == 0 {
		t.Error("the graph RL math did not run")
	}
	want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
	out := t.TempDir()
	run(graph, Options{OutDir: out, StopAfter: 1, RLMath: rm})
	run(graph, Options{OutDir: out, Resume: true, RLMath: rm})
	got, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	if !bytes.Equal(got, want) {
		t.Fatalf("resumed graph run differs:\n got %s\nwant %s", got, want)
	}
	// A resume in the other mode is a changed trajectory setting.
	if _, err := NewTrainer(host, Options{OutDir: out, Resume: true}, tinyNets(t, host), tinyPrompts(t), nil); err == nil ||
		!strings.Contains(err.Error(), "RLMath") {
		t.Errorf("resuming a graph run with host RL math: %v", err)
	}
	if _, err := NewTrainer(graph, Options{OutDir: t.TempDir()}, tinyNets(t, graph), tinyPrompts(t), nil); err == nil ||
		!strings.Contains(err.Error(), "--rl-math graph") {
		t.Errorf("graph RL math without a program: %v", err)
	}
}
