package ppo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/model"
)

// withSpec sets the nets' backend.
func withSpec(t testing.TB, spec string) func(*GraphNetsConfig) {
	return func(gc *GraphNetsConfig) {
		be, err := backend.New(spec)
		if err != nil {
			t.Fatal(err)
		}
		gc.Backend = be
	}
}

// testPTXBatch is a right-padded PTX batch of b rows of random tokens whose first two tokens are
// prompt (label −100).
func testPTXBatch(b, tt int, seed uint64) *PTXBatch {
	rng := rand.New(rand.NewPCG(seed, 1))
	p := &PTXBatch{B: b, T: tt, IDs: make([]int32, b*tt), Mask: make([]float32, b*tt), Labels: make([]int32, b*tt)}
	for i := 0; i < b; i++ {
		n := tt - i%3
		for j := 0; j < tt; j++ {
			p.IDs[i*tt+j], p.Labels[i*tt+j] = 0, -100
			if j < n {
				id := int32(3 + rng.IntN(500))
				if j == 0 {
					id = 1
				}
				p.IDs[i*tt+j], p.Mask[i*tt+j] = id, 1
				if j >= 2 {
					p.Labels[i*tt+j] = id
				}
			}
		}
	}
	return p
}

// TestNativeUpdatesMatchGraph: two PPO-Lag actor updates with PTX (whole-batch or micro-batched:
// the graph path too makes one AdamW step per update of micro-batches with PTX) and two
// updates of each critic on the native engine report the graph steppers' losses, clip fractions,
// approximate KLs and gradient norms within 1e-4 relative, and leave the same context state: the
// same variables (the graph's gradient accumulators aside), optimiser steps equal, moments within
// what gradients within 1e-3 of the tensor's largest allow (momentTolerance), and trained weights
// within 2% of an Adam step (lr) but for at most one in a thousand per tensor, still within one
// step (Adam turns float32 noise in a near-zero gradient into a visible update); for full weights
// and LoRA.
func TestNativeUpdatesMatchGraph(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg := tinyConfig()
	cfg.MaxNewTokens = 8
	const lr = 1e-3
	for _, tc := range []struct {
		name        string
		lora, micro bool
	}{{"full weights", false, false}, {"LoRA, micro-batches", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			build := func(spec string) *GraphNets {
				opts := []func(*GraphNetsConfig){withSpec(t, spec), func(gc *GraphNetsConfig) { gc.ActorWeightDecay, gc.CriticWeightDecay = 0.1, 0.1 }}
				if tc.lora {
					opts = append(opts, func(gc *GraphNetsConfig) {
						gc.LoRA = model.LoRAConfig{Rank: 2, Alpha: 4, Targets: []string{"q_proj", "v_proj", "down_proj"}}
						gc.LoRASeed = 3
					})
				}
				if tc.micro {
					opts = append(opts, func(gc *GraphNetsConfig) { gc.MicroBatchSize, gc.TrainBatchSize = 2, 4 })
				}
				return tinyNets(t, cfg, opts...)
			}
			gn, nn := build("go"), build(backend.Native)
			ro, err := gn.Generate([][]int32{{1, 403, 407}, {1, 30, 100, 200, 250}, {1, 9}, {1, 77, 78, 79}}, 3, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := gn.Score(ro); err != nil {
				t.Fatal(err)
			}
			L := ro.L()
			mask := ro.ResponseMask()
			rng := rand.New(rand.NewPCG(4, 4))
			vec := func(s float64) []float32 {
				v := make([]float32, ro.B*L)
				for i := range v {
					v[i] = float32(rng.NormFloat64() * s)
				}
				return v
			}
			rAdv, cAdv, rRet, cRet := vec(1), vec(1), vec(0.5), vec(0.5)
			ptx := testPTXBatch(ro.B, 7, 5)
			near := func(what string, got, want float64) {
				t.Helper()
				if math.Abs(got-want) > 1e-4*math.Max(math.Abs(want), 1e-2) {
					t.Errorf("%s: native %g, graph %g", what, got, want)
				}
			}
			for step := 0; step < 2; step++ {
				b := ActorBatch{LR: lr, Rollout: ro, RewardAdv: rAdv, CostAdv: cAdv, Lambda: 0.7, Mask: mask, PTX: ptx, PTXCoeff: 4}
				want, err := gn.UpdateActor(b)
				if err != nil {
					t.Fatal(err)
				}
				got, err := nn.UpdateActor(b)
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range []struct {
					name      string
					got, want float64
				}{{"actor loss", got.Loss, want.Loss}, {"ptx loss", got.PTXLoss, want.PTXLoss}, {"clip frac", got.ClipFrac, want.ClipFrac},
					{"approx kl", got.ApproxKL, want.ApproxKL}, {"grad norm", got.GradNorm, want.GradNorm}} {
					near(fmt.Sprintf("step %d %s", step, c.name), c.got, c.want)
				}
				if step == 1 && (got.ApproxKL == 0 || got.PTXLoss == 0) {
					t.Errorf("step 1: degenerate stats %+v", got)
				}
				for _, cost := range []bool{false, true} {
					ret := rRet
					if cost {
						ret = cRet
					}
					want, err := gn.UpdateCritic(cost, lr, ro, ret, mask)
					if err != nil {
						t.Fatal(err)
					}
					got, err := nn.UpdateCritic(cost, lr, ro, ret, mask)
					if err != nil {
						t.Fatal(err)
					}
					near(fmt.Sprintf("step %d critic (cost %v) loss", step, cost), got, want)
				}
			}
			if err := nn.syncNative(); err != nil {
				t.Fatal(err)
			}
			compareContexts(t, nn.Context(), gn.Context(), lr)
		})
	}
}

// compareContexts checks that got holds the variables of want outside the frozen scopes (less
// gradient accumulators) and no others, with close values (see TestNativeUpdatesMatchGraph).
func compareContexts(t *testing.T, got, want *mlctx.Context, lr float64) {
	t.Helper()
	skip := func(v *mlctx.Variable) bool {
		for _, s := range frozenScopes {
			if v.Scope() == s || strings.HasPrefix(v.Scope(), s+"/") {
				return true
			}
		}
		return strings.HasSuffix(v.Name(), "_accum")
	}
	n := 0
	for v := range want.IterVariables() {
		if skip(v) {
			continue
		}
		n++
		g := got.GetVariableByScopeAndName(v.Scope(), v.Name())
		if g == nil {
			t.Errorf("native context lacks %s", v.ScopeAndName())
			continue
		}
		a, b := tensors.MustCopyFlatData[float32](g.MustValue()), tensors.MustCopyFlatData[float32](v.MustValue())
		if len(a) != len(b) {
			t.Errorf("%s: %d values, graph %d", v.ScopeAndName(), len(a), len(b))
			continue
		}
		tol, loose := 2e-2*lr, 0
		switch {
		case v.Name() == "step":
			tol = 0
		case strings.HasSuffix(v.Name(), "_m1"), strings.HasSuffix(v.Name(), "_m2"):
			tol = momentTolerance(t, want, v)
		default: // trained weights
			loose = max(1, len(a)/1000)
		}
		bad, worst := 0, 0.0
		for i := range a {
			if d := math.Abs(float64(a[i] - b[i])); d > tol {
				bad++
				worst = math.Max(worst, d)
			}
		}
		if bad > loose || (bad > 0 && worst > lr) {
			t.Errorf("%s: %d of %d values differ by more than %g (worst %g)", v.ScopeAndName(), bad, len(a), tol, worst)
		}
	}
	for v := range got.IterVariables() {
		if !skip(v) && want.GetVariableByScopeAndName(v.Scope(), v.Name()) == nil {
			t.Errorf("native context has %s, the graph's does not", v.ScopeAndName())
		}
	}
	if n == 0 {
		t.Fatal("no trained variables compared")
	}
}

// momentTolerance is the tolerance of the AdamW moment v of want (the graph's context). A
// moment's float32 error comes from its gradients' error, which is relative to the largest
// gradient of the tensor, not to the moment (the first gradient of LoRA A is exactly zero as B
// starts at 0, and an element whose gradients nearly cancel keeps its absolute noise). After t
// updates every gradient element is at most Gmax = sqrt(max m2 / ((1-β2) β2^(t-1))), so
// gradients within gradTol·Gmax bound the first moment's error by gradTol·(1-β1^t)·Gmax and the
// second's by 2·gradTol·(1-β2^t)·Gmax².
func momentTolerance(t *testing.T, want *mlctx.Context, v *mlctx.Variable) float64 {
	t.Helper()
	const gradTol, beta1, beta2 = 1e-3, 0.9, 0.999 // the Stepper's default betas, as GraphNets uses
	base := v.Name()[:len(v.Name())-len("_m1")]
	m2 := want.GetVariableByScopeAndName(v.Scope(), base+"_m2")
	optimScope := strings.Join(strings.SplitN(v.Scope(), "/", 4)[:3], "/") // /optim/<model>
	step := want.GetVariableByScopeAndName(optimScope, "step")
	if m2 == nil || step == nil {
		t.Fatalf("%s: no %s_m2 or %s/step in the graph's context", v.ScopeAndName(), base, optimScope)
	}
	steps := float64(tensors.ToScalar[float32](step.MustValue()))
	maxM2 := 0.0
	for _, x := range tensors.MustCopyFlatData[float32](m2.MustValue()) {
		maxM2 = math.Max(maxM2, float64(x))
	}
	g2 := maxM2 / ((1 - beta2) * math.Pow(beta2, steps-1)) // Gmax²
	if strings.HasSuffix(v.Name(), "_m1") {
		return gradTol * (1 - math.Pow(beta1, steps)) * math.Sqrt(g2)
	}
	return 2 * gradTol * (1 - math.Pow(beta2, steps)) * g2
}

// TestNativeRunMatchesGraph: three PPO-Lag steps through the Trainer on the native engine write
// the graph path's metrics (rewards, costs, λ, losses, KL) within 1e-3 relative.
func TestNativeRunMatchesGraph(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg := tinyConfig()
	run := func(spec string) []map[string]float64 {
		out := t.TempDir()
		tr, err := NewTrainer(cfg, Options{OutDir: out}, tinyNets(t, cfg, withSpec(t, spec)), tinyPrompts(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		tr.Close()
		return metricRows(t, out)
	}
	want, got := run("go"), run(backend.Native)
	if len(got) != len(want) || len(want) != cfg.MaxSteps {
		t.Fatalf("native %d steps, graph %d", len(got), len(want))
	}
	for i := range want {
		for k, w := range want[i] {
			if g := got[i][k]; math.Abs(g-w) > 1e-3*math.Max(math.Abs(w), 1e-2) {
				t.Errorf("step %d %s: native %g, graph %g", i+1, k, g, w)
			}
		}
	}
}

// TestNativeResumeLoRAPTX: a native PPO-Lag run with LoRA adapters, PTX mixing and micro-batches,
// interrupted after one step and resumed in fresh nets, writes the uninterrupted run's metrics
// byte for byte.
func TestNativeResumeLoRAPTX(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg := tinyConfig()
	cfg.TrainBatchSize, cfg.PTXCoeff = 4, 2
	opts := []func(*GraphNetsConfig){withSpec(t, backend.Native), func(gc *GraphNetsConfig) {
		gc.LoRA = model.LoRAConfig{Rank: 2, Alpha: 4, Targets: []string{"q_proj", "v_proj"}}
		gc.LoRASeed, gc.MicroBatchSize, gc.TrainBatchSize = 3, 2, 4
	}}
	ptx := func() *PTXSet {
		p := testPTXBatch(6, 7, 8)
		var ids, labels [][]int32
		for i := 0; i < p.B; i++ {
			ids, labels = append(ids, p.IDs[i*p.T:(i+1)*p.T]), append(labels, p.Labels[i*p.T:(i+1)*p.T])
		}
		s, err := NewPTXSet(ids, labels, 0, 7)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	run := func(out string, o Options) {
		o.OutDir = out
		tr, err := NewTrainer(cfg, o, tinyNets(t, cfg, opts...), tinyPrompts(t), ptx())
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		tr.Close()
	}
	ref, out := t.TempDir(), t.TempDir()
	run(ref, Options{})
	run(out, Options{StopAfter: 1})
	run(out, Options{Resume: true})
	want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
	got, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	if len(want) == 0 || !bytes.Equal(got, want) {
		t.Fatalf("resumed run differs:\n got %s\nwant %s", got, want)
	}
	if !bytes.Contains(want, []byte(`"ptx_loss"`)) {
		t.Fatalf("no PTX loss in the metrics: %s", want)
	}
}

// TestNativeResumeAcrossBackends: one checkpoint format serves both engines. A PPO-Lag run
// interrupted after one step on one backend and resumed on the other writes the uninterrupted
// run's metrics within 1e-3 relative (the engines differ by float32 rounding only), both ways.
func TestNativeResumeAcrossBackends(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg := tinyConfig()
	run := func(out, spec string, o Options) {
		o.OutDir = out
		tr, err := NewTrainer(cfg, o, tinyNets(t, cfg, withSpec(t, spec)), tinyPrompts(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		tr.Close()
	}
	ref := t.TempDir()
	run(ref, backend.Native, Options{})
	want := metricRows(t, ref)
	for _, c := range [][2]string{{backend.Native, "go"}, {"go", backend.Native}} {
		out := t.TempDir()
		run(out, c[0], Options{StopAfter: 1})
		run(out, c[1], Options{Resume: true})
		got := metricRows(t, out)
		if len(got) != len(want) {
			t.Fatalf("%s then %s: %d steps, want %d", c[0], c[1], len(got), len(want))
		}
		for i := range want {
			for k, w := range want[i] {
				if g := got[i][k]; math.Abs(g-w) > 1e-3*math.Max(math.Abs(w), 1e-2) {
					t.Errorf("%s then %s: step %d %s: %g, uninterrupted native run %g", c[0], c[1], i+1, k, g, w)
				}
			}
		}
	}
}

// TestNativeScoreMicroBatch: with --micro-batch-size the native scoring pass runs row chunks
// (2 + 1 rows here) and returns exactly the whole batch's outputs.
func TestNativeScoreMicroBatch(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg := tinyConfig()
	whole := tinyNets(t, cfg, withSpec(t, backend.Native))
	micro := tinyNets(t, cfg, withSpec(t, backend.Native), func(gc *GraphNetsConfig) { gc.MicroBatchSize, gc.TrainBatchSize = 2, 4 })
	ro, err := whole.Generate([][]int32{{1, 403, 407}, {1, 30, 100, 200, 250}, {1, 9}}, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	want, got := *ro, *ro
	if err := whole.Score(&want); err != nil {
		t.Fatal(err)
	}
	if err := micro.Score(&got); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want []float32
	}{{"log-probs", got.LogProbs, want.LogProbs}, {"reference log-probs", got.RefLogProbs, want.RefLogProbs},
		{"reward", got.Reward, want.Reward}, {"cost", got.Cost, want.Cost},
		{"reward values", got.RewardValues, want.RewardValues}, {"cost values", got.CostValues, want.CostValues}} {
		if len(c.want) == 0 || !slices.Equal(c.got, c.want) {
			t.Errorf("%s: chunked %v\nwhole %v", c.name, c.got, c.want)
		}
	}
}

// TestNativeRefusesBF16: --dtype bf16 on the native engine (float32 only) is an error naming the
// flag, not a silent float32 run.
func TestNativeRefusesBF16(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	be, err := backend.New(backend.Native)
	if err != nil {
		t.Fatal(err)
	}
	acfg, err := model.Preset("stories260K")
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewGraphNets(GraphNetsConfig{Backend: be, DType: dtypes.BFloat16, Actor: ModelSpec{Cfg: acfg}, Reward: ModelSpec{Cfg: acfg}}, 0.2, 0.2)
	if err == nil || !strings.Contains(err.Error(), "--dtype bf16") {
		t.Fatalf("bf16 on the native engine: %v", err)
	}
}

// metricRows reads out's metrics.jsonl, every field of a record as a number.
func metricRows(t *testing.T, out string) []map[string]float64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]float64
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var m map[string]float64
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatal(err)
		}
		rows = append(rows, m)
	}
	return rows
}
