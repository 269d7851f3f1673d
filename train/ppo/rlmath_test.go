package ppo

import (
	"bytes"
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"

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
			got, dev, err := rm.shapeAndGAE(&cfg, r)
			if err != nil || dev != nil {
				t.Fatal(err, dev)
			}
			name := string(alg)
			// The same program on device inputs (a rollout scored on the device) keeps its
			// outputs there: they equal the host-input run's bit for bit.
			checkDeviceRLMath(t, rm, &cfg, r, got)
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
	if rm.Transfers.Up.Load() == 0 || rm.Transfers.Down.Load() == 0 {
		t.Errorf("bytes not counted: %d up, %d down", rm.Transfers.Up.Load(), rm.Transfers.Down.Load())
	}
}

// checkDeviceRLMath runs rm on r's slices put on the device (as GraphNets' scoring leaves them)
// and checks that its device outputs equal want (the host-input run) exactly, that the critics'
// inputs are padded to width T with a zero last column, and that only the end scores went up and
// the scalars came down.
func checkDeviceRLMath(t *testing.T, rm *RLMath, cfg *Config, r *Rollout, want shaped) {
	t.Helper()
	B, L, T := r.B, r.L(), r.T
	dr := *r
	dr.dev = &rolloutDev{mask: onDevice(t, rm, r.Mask, B, T), logp: onDevice(t, rm, r.LogProbs, B, L),
		ref: onDevice(t, rm, r.RefLogProbs, B, L), rV: onDevice(t, rm, padLastCol(r.RewardValues, B, L), B, T)}
	if cfg.UsesCostCritic() {
		dr.dev.cV = onDevice(t, rm, padLastCol(r.CostValues, B, L), B, T)
	}
	defer dr.free()
	up, down := rm.Transfers.Up.Load(), rm.Transfers.Down.Load()
	got, dev, err := rm.shapeAndGAE(cfg, &dr)
	if err != nil || dev == nil {
		t.Fatal(err, dev)
	}
	defer dev.free()
	if got.rAdv != nil || got.rRet != nil {
		t.Error("device run returned host advantages")
	}
	wantUp := int64(4 * B)
	if cfg.UsesCost() {
		wantUp *= 2
	}
	if u, d := rm.Transfers.Up.Load()-up, rm.Transfers.Down.Load()-down; u != wantUp || d != int64(4*len(want.means)+8) {
		t.Errorf("device run moved %d bytes up (want the end scores, %d) and %d down (want %d scalars)", u, wantUp, d, len(want.means)+2)
	}
	if got.stats != want.stats || !slices.Equal(got.means, want.means) {
		t.Errorf("device run scalars %v %v, host-input run %v %v", got.stats, got.means, want.stats, want.means)
	}
	flat := func(x *tensors.Tensor) []float32 { return tensors.MustCopyFlatData[float32](x) }
	resp := r.ResponseMask()
	checks := []struct {
		what string
		got  *tensors.Tensor
		want []float32
	}{{"reward adv", dev.rAdv, toF32(want.rAdv)}, {"reward ret", dev.rRet, padLastCol(toF32(want.rRet), B, L)},
		{"reward old values", dev.rOld, padLastCol(r.RewardValues, B, L)}, {"actor mask", dev.resp, resp},
		{"critic mask", dev.criticMask, padLastCol(resp, B, L)}}
	if cfg.UsesCostCritic() {
		checks = append(checks, []struct {
			what string
			got  *tensors.Tensor
			want []float32
		}{{"cost adv", dev.cAdv, toF32(want.cAdv)}, {"cost ret", dev.cRet, padLastCol(toF32(want.cRet), B, L)},
			{"cost old values", dev.cOld, padLastCol(r.CostValues, B, L)}}...)
	} else if dev.cAdv != nil || dev.cRet != nil {
		t.Error("cost outputs without a cost critic")
	}
	for _, c := range checks {
		if g := flat(c.got); !slices.Equal(g, c.want) {
			t.Errorf("%s %s on the device: %v, want %v", cfg.Algorithm, c.what, g, c.want)
		}
	}
}

// onDevice puts x [dims] on rm's device.
func onDevice(t *testing.T, rm *RLMath, x []float32, dims ...int) *tensors.Tensor {
	t.Helper()
	v := tensors.FromFlatDataAndDimensions(slices.Clone(x), dims...)
	if err := v.MaterializeOnDevice(rm.be, false, 0); err != nil {
		t.Fatal(err)
	}
	v.FinalizeLocal()
	return v
}

// TestRLMathGraphTrainer: three PPO-Lag steps on stories260K with --rl-math graph log the same
// metrics as with host RL math within tolerance (the same samples: the first step's rollout is
// identical, later ones follow slightly different float32 weights), and a run interrupted after
// one step resumes to exactly the uninterrupted graph run's metrics.
func TestRLMathGraphTrainer(t *testing.T) {
	run := func(cfg Config, opt Options) []StepMetrics {
		t.Helper()
		return runTiny(t, cfg, opt, nil).History()
	}
	host := tinyConfig()
	graph := host
	graph.RLMath = RLMathGraph
	hm := run(host, Options{OutDir: t.TempDir()})
	ref := t.TempDir()
	gm := run(graph, Options{OutDir: ref})
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
	want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
	out := t.TempDir()
	run(graph, Options{OutDir: out, StopAfter: 1})
	run(graph, Options{OutDir: out, Resume: true})
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

// tinyRun is a finished runTiny: its trainer, nets and graph RL math (nil with host RL math).
type tinyRun struct {
	*Trainer
	nets *GraphNets
	rm   *RLMath
}

// runTiny runs cfg on tinyNets (with --rl-math graph, an RLMath on the nets' backend), the nets
// wrapped by wrap when not nil.
func runTiny(t *testing.T, cfg Config, opt Options, wrap func(*GraphNets) Nets, opts ...func(*GraphNetsConfig)) tinyRun {
	t.Helper()
	nets := tinyNets(t, cfg, opts...)
	var rm *RLMath
	if cfg.RLMath == RLMathGraph {
		rm = NewRLMath(nets.cfg.Backend)
		t.Cleanup(rm.Close)
		opt.RLMath = rm
	}
	var n Nets = nets
	if wrap != nil {
		n = wrap(nets)
	}
	tr, err := NewTrainer(cfg, opt, n, tinyPrompts(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr.Close()
	return tinyRun{Trainer: tr, nets: nets, rm: rm}
}

// scoringNets records the rollouts' width T; with host it is GraphNets scoring on the host even
// under --rl-math graph: the per-token tensors then make the round trip the device-resident path
// avoids (scores down, RL math inputs up, its advantages and returns down, the updates' inputs up).
type scoringNets struct {
	*GraphNets
	host bool
	T    int
}

func (s *scoringNets) Score(r *Rollout) error {
	if s.host {
		r.onDevice = false
	}
	s.T = r.T
	return s.GraphNets.Score(r)
}

// TestRLMathDeviceResident: with --rl-math graph the per-token tensors stay on the device from
// scoring to the updates (micro-batches sliced there; PPO-Lag with fused and with layerwise
// updates, PPO and the fixed penalty) and the run writes exactly the metrics of the same run
// making the host round trip; per rl_step,
// the bytes besides token ids that cross host↔device stay below one [B,L] float32 tensor, which
// the round trip moves many times over.
func TestRLMathDeviceResident(t *testing.T) {
	for _, c := range []struct {
		name  string
		alg   Algorithm
		upd   UpdatePrograms
		micro int
	}{{"fused micro-batches", PPOLag, UpdatesFused, 1}, {"layerwise", PPOLag, UpdatesLayerwise, 0},
		{"ppo fused", PPO, UpdatesFused, 0}, {"fixed penalty layerwise micro-batches", Fixed, UpdatesLayerwise, 1}} {
		t.Run(c.name, func(t *testing.T) {
			cfg := tinyConfig()
			if c.alg != PPOLag {
				cfg = DefaultConfig(c.alg)
				cfg.PromptBatchSize, cfg.TrainBatchSize = 4, 2
				cfg.MaxNewTokens, cfg.MaxPromptTokens = 6, 8
				cfg.ActorLR, cfg.CriticLR = 1e-3, 1e-3
			}
			cfg.RLMath, cfg.MaxSteps = RLMathGraph, 2
			if c.alg != PPOLag {
				cfg.MaxSteps = 1 // the update inputs and losses; PPO-Lag's cases check a second step
			}
			o := func(gc *GraphNetsConfig) {
				gc.Updates, gc.MicroBatchSize, gc.TrainBatchSize = c.upd, c.micro, cfg.TrainBatchSize
			}
			devOut, hostOut := t.TempDir(), t.TempDir()
			ds, hs := &scoringNets{}, &scoringNets{host: true}
			dev := runTiny(t, cfg, Options{OutDir: devOut}, func(n *GraphNets) Nets { ds.GraphNets = n; return ds }, o)
			host := runTiny(t, cfg, Options{OutDir: hostOut}, func(n *GraphNets) Nets { hs.GraphNets = n; return hs }, o)
			want, _ := os.ReadFile(filepath.Join(hostOut, "metrics.jsonl"))
			got, _ := os.ReadFile(filepath.Join(devOut, "metrics.jsonl"))
			if len(want) == 0 || !bytes.Equal(got, want) {
				t.Fatalf("device-resident run differs from the host round trip:\n got %s\nwant %s", got, want)
			}
			rlSteps := int64(cfg.MaxSteps * cfg.PromptBatchSize / cfg.TrainBatchSize * cfg.UpdateIters)
			B, L := int64(cfg.TrainBatchSize), int64(ds.T-1)
			floats := func(r tinyRun) int64 {
				return (r.nets.xfer.Up.Load() + r.nets.xfer.Down.Load() + r.rm.Transfers.Up.Load() + r.rm.Transfers.Down.Load()) / rlSteps
			}
			t.Logf("B=%d L=%d: device %d, host %d bytes besides ids per rl_step; ids %d", B, L, floats(dev), floats(host), dev.nets.xfer.IDsUp.Load()/rlSteps)
			if got, bound := floats(dev), 4*B*L; got >= bound {
				t.Errorf("device-resident: %d bytes besides ids per rl_step, want < %d (one [%d,%d] float32 tensor)", got, bound, B, L)
			}
			if got, least := floats(host), 5*4*B*L; got < least {
				t.Errorf("host round trip: %d bytes besides ids per rl_step, want ≥ %d: is the counter counting?", got, least)
			}
			if ids := dev.nets.xfer.IDsUp.Load() / rlSteps; ids > 4*B*(L+1) {
				t.Errorf("device-resident: %d bytes of ids up per rl_step, want the sequences once (%d)", ids, 4*B*(L+1))
			}
		})
	}
}
