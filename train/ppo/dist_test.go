package ppo

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// dpConfig is a PPO-Lag run with λ moving from the first step (threshold below every cost); the
// nets sample (top-k 50, temperature 1: see sampled), every row from its own stream.
func dpConfig() Config {
	cfg := tinyConfig()
	cfg.PromptBatchSize, cfg.TrainBatchSize, cfg.MaxSteps = 8, 4, 2
	cfg.Threshold, cfg.LambdaLR = -2, 0.5
	return cfg
}

// sampled is HF's default sampling (top-k 50, temperature 1, no top-p).
func sampled(c *GraphNetsConfig) { c.TopK, c.Temperature, c.TopP = 50, 1, 1 }

type rankRun struct {
	hist    []StepMetrics
	weights model.Weights
	moments int64 // AdamW moment elements the rank holds at the end
	err     error
}

// runRanks runs cfg on world in-process ranks (TCP over loopback, the multi-process code path)
// into dir and returns each rank's history and final actor weights.
func runRanks(t *testing.T, cfg Config, world int, opt Options, ptx func() *PTXSet, nets ...func(*GraphNetsConfig)) []rankRun {
	t.Helper()
	return runRanksCtx(t, context.Background(), cfg, world, opt, ptx, nets...)
}

// runRanksCtx is runRanks with every rank's Run under ctx.
func runRanksCtx(t *testing.T, ctx context.Context, cfg Config, world int, opt Options, ptx func() *PTXSet, nets ...func(*GraphNetsConfig)) []rankRun {
	t.Helper()
	out := make([]rankRun, world)
	one := func(r int, comm dist.Communicator) {
		o := opt
		o.Comm = comm
		opts := append([]func(*GraphNetsConfig){sampled, func(c *GraphNetsConfig) { c.Comm, c.TrainBatchSize = comm, cfg.TrainBatchSize/world }}, nets...)
		nets := tinyNets(t, cfg, opts...)
		var ps *PTXSet
		if ptx != nil {
			ps = ptx()
		}
		tr, err := NewTrainer(cfg, o, nets, tinyPrompts(t), ps)
		if err != nil {
			out[r].err = err
			comm.Close() // the other ranks then fail instead of waiting
			return
		}
		defer tr.Close()
		if out[r].err = tr.Run(ctx); out[r].err != nil {
			comm.Close()
			return
		}
		out[r].hist = tr.History()
		out[r].weights, out[r].err = nets.ActorWeights() // syncs the native models' state into the context
		out[r].moments = trainer.OptimizerStateElements(nets.ctx, "/optim")
	}
	if world == 1 {
		one(0, dist.Self{})
		return out
	}
	comms, err := dist.NewLocalGroup(context.Background(), world, dist.Options{Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for r := range world {
		wg.Go(func() {
			defer comms[r].Close()
			one(r, comms[r])
		})
	}
	wg.Wait()
	return out
}

// metricFields returns the float fields of m by JSON name.
func metricFields(m StepMetrics) map[string]float64 {
	out := map[string]float64{}
	v := reflect.ValueOf(m)
	for i := 0; i < v.NumField(); i++ {
		name := strings.Split(v.Type().Field(i).Tag.Get("json"), ",")[0]
		switch f := v.Field(i); f.Kind() {
		case reflect.Float64:
			out[name] = f.Float()
		case reflect.Int:
			out[name] = float64(f.Int())
		}
	}
	return out
}

// TestDataParallelPPOLag: PPO-Lag with PTX on 2 ranks (each generating, scoring and training on
// half of every micro-batch, gradients averaged, λ from the ranks' mean window cost) follows the
// 1-rank run with the same global batch: with sampling (top-k 50, temperature 1; every row has its
// own stream) and PTX rows whose label counts differ between the ranks (the PTX loss is the global
// token mean), every logged metric (λ included) within 1e-4 relative and the actor's weights
// within 1e-5; both ranks log the same metrics and end with identical weights.
// Then a 2-rank run stopped after one rollout batch and resumed on 2 ranks writes the
// uninterrupted 2-rank run's metrics.jsonl byte for byte (every rank's episode-cost window is in
// the checkpoint), and resuming it on 1 rank is refused, naming both world sizes.
func TestDataParallelPPOLag(t *testing.T) { testDataParallelPPOLag(t, true) }

// TestDataParallelPPOLagLayerwise: the same equivalence with layer-by-layer updates (the XLA
// default: gradients into the Stepper's accumulators, then ApplyAccumulated).
func TestDataParallelPPOLagLayerwise(t *testing.T) {
	testDataParallelPPOLag(t, false, func(c *GraphNetsConfig) { c.Updates = UpdatesLayerwise })
}

// TestNativeDataParallelPPOLag is TestDataParallelPPOLag with the native engine's updates.
func TestNativeDataParallelPPOLag(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	testDataParallelPPOLag(t, true, withSpec(t, "native"))
}

// unequalPTX is a PTX set of 8 examples of 3 to 12 tokens, the first 2 prompt (1 to 10 labels), so
// that the ranks' shares of a PTX batch hold different label counts.
func unequalPTX(t *testing.T) func() *PTXSet {
	return func() *PTXSet {
		var ids, labels [][]int32
		for i := 0; i < 8; i++ {
			row, lab := []int32{1}, []int32{-100}
			for j := 1; j < 3+3*(i%4)+i/4; j++ {
				id := int32(3 + (37*i+11*j)%500)
				row, lab = append(row, id), append(lab, id)
			}
			lab[1] = -100
			ids, labels = append(ids, row), append(labels, lab)
		}
		s, err := NewPTXSet(ids, labels, 0, 7)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

func testDataParallelPPOLag(t *testing.T, resume bool, nets ...func(*GraphNetsConfig)) {
	cfg := dpConfig()
	cfg.PTXCoeff = 2
	ptx := unequalPTX(t)
	ref, out := t.TempDir(), t.TempDir()
	one := runRanks(t, cfg, 1, Options{OutDir: t.TempDir()}, ptx, nets...)
	two := runRanks(t, cfg, 2, Options{OutDir: ref}, ptx, nets...)
	for r, x := range append(one, two...) {
		if x.err != nil {
			t.Fatalf("run %d: %v", r, x.err)
		}
	}
	if !reflect.DeepEqual(two[0].hist, two[1].hist) {
		t.Errorf("the ranks log different metrics:\n%+v\n%+v", two[0].hist, two[1].hist)
	}
	for name, w := range two[0].weights {
		if !reflect.DeepEqual(w.Data, two[1].weights[name].Data) {
			t.Errorf("%s differs between the ranks", name)
		}
	}
	if len(one[0].hist) != 2 || len(two[0].hist) != 2 {
		t.Fatalf("%d and %d steps", len(one[0].hist), len(two[0].hist))
	}
	worst := 0.0
	for i := range one[0].hist {
		a, b := metricFields(one[0].hist[i]), metricFields(two[0].hist[i])
		for k, v := range a {
			d := math.Abs(v-b[k]) / max(1, math.Abs(v))
			worst = max(worst, d)
			if d > 1e-4 {
				t.Errorf("step %d %s: 1 rank %.7g, 2 ranks %.7g", i+1, k, v, b[k])
			}
		}
	}
	if l := one[0].hist[1].Lambda; l <= cfg.LambdaInit {
		t.Errorf("λ did not move (%g): the test does not exercise the λ update", l)
	}
	if one[0].hist[0].PTXLoss == 0 {
		t.Error("no PTX loss logged")
	}
	wworst := 0.0
	for name, w := range one[0].weights {
		v := two[0].weights[name].Data
		for i := range w.Data {
			wworst = max(wworst, math.Abs(float64(w.Data[i]-v[i])))
		}
	}
	if wworst > 1e-5 {
		t.Errorf("actor weights: 1 vs 2 ranks differ by up to %g", wworst)
	}
	t.Logf("PPO-Lag, 2 rollout batches of 8 prompts: largest relative metric difference 1 vs 2 ranks %.3g, largest weight difference %.3g", worst, wworst)
	if !resume {
		return
	}

	for _, run := range [][]rankRun{
		runRanks(t, cfg, 2, Options{OutDir: out, StopAfter: 1}, ptx, nets...),
		runRanks(t, cfg, 2, Options{OutDir: out, Resume: true}, ptx, nets...),
	} {
		for r, x := range run {
			if x.err != nil {
				t.Fatalf("rank %d: %v", r, x.err)
			}
		}
	}
	want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
	got, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	if !bytes.Equal(got, want) || bytes.Count(want, []byte("\n")) != 2 {
		t.Fatalf("resumed 2-rank run differs:\n got %s\nwant %s", got, want)
	}
	_, err := NewTrainer(cfg, Options{OutDir: out, Resume: true}, tinyNets(t, cfg, append(nets, sampled)...), tinyPrompts(t), ptx())
	if err == nil || !strings.Contains(err.Error(), "written by 2 rank(s) and this run has 1") {
		t.Fatalf("resume on 1 rank of a 2-rank checkpoint: %v", err)
	}
}

// TestZeroOnePPOLag: PPO-Lag on 2 ranks with the actor's and critics' AdamW moments sharded
// (--zero-stage 1) logs the replicated 2-rank run's metrics and ends with its weights, bit for
// bit (the clip sees every gradient), each rank holding part of the moments and the two parts
// making the replicated run's; a ZeRO-1 run stopped after one rollout batch resumes, with
// ZeRO-1 or without, to the uninterrupted run's metrics.jsonl byte for byte.
func TestZeroOnePPOLag(t *testing.T) { testZeroOnePPOLag(t, true) }

// TestZeroOnePPOLagLayerwise: the same equivalence (no resume) with layer-by-layer updates
// (gradients into the Stepper's accumulators, then ApplyAccumulated on this rank's share).
func TestZeroOnePPOLagLayerwise(t *testing.T) {
	testZeroOnePPOLag(t, false, func(c *GraphNetsConfig) { c.Updates = UpdatesLayerwise })
}

// TestNativeZeroOnePPOLag is TestZeroOnePPOLag with the native engine's updates.
func TestNativeZeroOnePPOLag(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	testZeroOnePPOLag(t, true, withSpec(t, "native"))
}

func testZeroOnePPOLag(t *testing.T, resume bool, nets ...func(*GraphNetsConfig)) {
	cfg := dpConfig()
	zero := func(stage int) []func(*GraphNetsConfig) {
		return append(append([]func(*GraphNetsConfig){}, nets...), func(c *GraphNetsConfig) { c.ZeroStage = stage })
	}
	ref := t.TempDir()
	rep := runRanks(t, cfg, 2, Options{OutDir: ref}, nil, zero(0)...)
	sh := runRanks(t, cfg, 2, Options{OutDir: t.TempDir()}, nil, zero(1)...)
	for r, x := range append(rep, sh...) {
		if x.err != nil {
			t.Fatalf("run %d: %v", r, x.err)
		}
	}
	if !reflect.DeepEqual(sh[0].hist, rep[0].hist) || !reflect.DeepEqual(sh[1].hist, rep[0].hist) {
		t.Errorf("ZeRO-1 metrics differ from the replicated run's:\n%+v\n%+v", sh[0].hist, rep[0].hist)
	}
	for name, w := range rep[0].weights {
		if !reflect.DeepEqual(w.Data, sh[0].weights[name].Data) || !reflect.DeepEqual(w.Data, sh[1].weights[name].Data) {
			t.Errorf("%s: ZeRO-1 weights differ from the replicated run's", name)
		}
	}
	m := rep[0].moments
	t.Logf("AdamW moment elements per rank: replicated %d, %d; ZeRO-1 %d, %d", rep[0].moments, rep[1].moments, sh[0].moments, sh[1].moments)
	if m == 0 || rep[1].moments != m || sh[0].moments+sh[1].moments != m || sh[0].moments == 0 || sh[1].moments == 0 || max(sh[0].moments, sh[1].moments) > m*6/10 {
		t.Errorf("moment elements: replicated %d, %d; ZeRO-1 %d, %d (want the replicated count split about evenly)", m, rep[1].moments, sh[0].moments, sh[1].moments)
	}
	if !resume {
		return
	}
	want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
	for _, stage := range []int{1, 0} {
		out := t.TempDir()
		for _, run := range [][]rankRun{
			runRanks(t, cfg, 2, Options{OutDir: out, StopAfter: 1}, nil, zero(1)...),
			runRanks(t, cfg, 2, Options{OutDir: out, Resume: true}, nil, zero(stage)...),
		} {
			for r, x := range run {
				if x.err != nil {
					t.Fatalf("resume with zero stage %d: rank %d: %v", stage, r, x.err)
				}
			}
		}
		got, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
		if !bytes.Equal(got, want) || bytes.Count(want, []byte("\n")) != 2 {
			t.Errorf("ZeRO-1 run resumed with zero stage %d differs:\n got %s\nwant %s", stage, got, want)
		}
	}
	// Restoring a finished 1-step run's checkpoint (full state, replicated) with nothing left to
	// train: each ZeRO-1 rank's context holds its own moments only, never the others' (there was
	// no update to drop them).
	out := t.TempDir()
	done := cfg
	done.MaxSteps = 1
	for r, x := range runRanks(t, done, 2, Options{OutDir: out}, nil, zero(0)...) {
		if x.err != nil || x.moments != m {
			t.Fatalf("1-step replicated run: rank %d: %d moment elements (want %d), %v", r, x.moments, m, x.err)
		}
	}
	res := runRanks(t, done, 2, Options{OutDir: out, Resume: true}, nil, zero(1)...)
	for r, x := range res {
		if x.err != nil {
			t.Fatalf("restore only: rank %d: %v", r, x.err)
		}
		if x.moments != sh[r].moments {
			t.Errorf("rank %d holds %d moment elements right after restoring with ZeRO-1 (want its own %d of %d)", r, x.moments, sh[r].moments, m)
		}
	}
}

// TestZeroOnePPOLagInterruptedBeforeFirstStep: a resumed 2-rank ZeRO-1 PPO-Lag run interrupted (Ctrl-C
// during start-up) before its first rollout batch leaves the checkpoint it resumed from as it was:
// each rank then holds only its own moments, and rewriting that step from rank 0's context alone
// dropped rank 1's. Resuming again still writes the uninterrupted run's metrics.jsonl byte for byte.
func TestZeroOnePPOLagInterruptedBeforeFirstStep(t *testing.T) {
	testZeroOneInterruptedBeforeFirstStep(t)
}

// TestNativeZeroOnePPOLagInterruptedBeforeFirstStep is the same with the native engine's updates.
func TestNativeZeroOnePPOLagInterruptedBeforeFirstStep(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	testZeroOneInterruptedBeforeFirstStep(t, withSpec(t, "native"))
}

func testZeroOneInterruptedBeforeFirstStep(t *testing.T, nets ...func(*GraphNetsConfig)) {
	cfg := dpConfig()
	nets = append(nets, func(c *GraphNetsConfig) { c.ZeroStage = 1 })
	ref, out := t.TempDir(), t.TempDir()
	check := func(what string, run []rankRun) {
		t.Helper()
		for r, x := range run {
			if x.err != nil {
				t.Fatalf("%s: rank %d: %v", what, r, x.err)
			}
		}
	}
	check("uninterrupted", runRanks(t, cfg, 2, Options{OutDir: ref}, nil, nets...))
	check("first step", runRanks(t, cfg, 2, Options{OutDir: out, StopAfter: 1}, nil, nets...))
	state := filepath.Join(out, "checkpoints", "step-00000001", checkpoint.TrainStateFile)
	before, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for r, x := range runRanksCtx(t, ctx, cfg, 2, Options{OutDir: out, Resume: true}, nil, nets...) {
		if x.err == nil || !strings.Contains(x.err.Error(), "interrupted after step 1") || strings.Count(x.err.Error(), "interrupted after") != 1 {
			t.Errorf("rank %d resumed under a cancelled context: %v", r, x.err)
		}
	}
	if after, err := os.ReadFile(state); err != nil || !bytes.Equal(after, before) {
		t.Errorf("the interrupted resume rewrote %s (%d bytes, was %d): %v", state, len(after), len(before), err)
	}
	check("resumed", runRanks(t, cfg, 2, Options{OutDir: out, Resume: true}, nil, nets...))
	want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
	got, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
	if !bytes.Equal(got, want) || bytes.Count(want, []byte("\n")) != 2 {
		t.Errorf("resumed after the interruption:\n got %s\nwant %s", got, want)
	}
}

// TestBenchDataParallel: Bench on 2 ranks (with --zero-stage 1) reports each rank's rates, rank
// 0's time in collectives, each rank's AdamW moment bytes (about half each) and host↔device bytes
// (its own rows'), and the same aggregate table on both ranks.
func TestBenchDataParallel(t *testing.T) {
	cfg, err := model.Preset("stories260K")
	if err != nil {
		t.Fatal(err)
	}
	comms, err := dist.NewLocalGroup(context.Background(), 2, dist.Options{Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	res := make([]*BenchResult, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() {
			defer comms[r].Close()
			be, err := backend.New("go")
			if err != nil {
				errs[r] = err
				return
			}
			res[r], errs[r] = Bench(BenchOptions{Backend: be, BackendName: "go", Cfg: cfg, Batch: 4, PromptLen: 4, GenLen: 4,
				Steps: 1, Sampling: Sampling{Temperature: 1, TopP: 1, RepetitionPenalty: 1}, Comm: comms[r], ZeroStage: 1})
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	r0 := res[0]
	if r0.WorldSize != 2 || len(r0.Ranks) != 2 || r0.CollectiveSecs <= 0 {
		t.Fatalf("world %d, ranks %+v, collective %g s", r0.WorldSize, r0.Ranks, r0.CollectiveSecs)
	}
	for _, k := range r0.Ranks {
		if k.GenTokPerS <= 0 || k.TrainTokPerS <= 0 || k.CollectiveSecs <= 0 || k.CollectiveSecs > k.UpdateSeconds {
			t.Errorf("rank %d: %+v", k.Rank, k)
		}
	}
	if b0, b1 := r0.Ranks[0].OptimStateBytes, r0.Ranks[1].OptimStateBytes; b0 <= 0 || b1 <= 0 || b0 != r0.OptimStateBytes || max(b0, b1) > (b0+b1)*6/10 {
		t.Errorf("ZeRO-1: AdamW moment bytes per rank %d, %d (rank 0 reports %d): want about half each", b0, b1, r0.OptimStateBytes)
	}
	if !reflect.DeepEqual(r0.Ranks, res[1].Ranks) || r0.ActorSeconds != res[1].ActorSeconds {
		t.Errorf("the ranks report different tables: %+v vs %+v", r0.Ranks, res[1].Ranks)
	}
	// Each rank's bytes are its own: generation's for its 2 of the 4 rows (host sampling on the
	// pure-Go backend: 4 tokens' logits come down) plus the rest it counted.
	for r, x := range res {
		if got := x.H2DBytes + x.D2HBytes - x.HostDeviceBytes; got != x.GenH2DBytes+x.GenD2HBytes || x.HostDeviceBytes <= 0 ||
			x.GenH2DBytes <= 0 || x.GenD2HBytes != int64(4*4*2*cfg.VocabSize) {
			t.Errorf("rank %d: generation's bytes %d up, %d down (want %d: its 2 rows' logits), %d in all, %d counted besides",
				r, x.GenH2DBytes, x.GenD2HBytes, 4*4*2*cfg.VocabSize, got, x.HostDeviceBytes)
		}
	}
	t.Logf("2 ranks: %+v", r0.Ranks)
}

// TestNativeDataParallelVariants: plain PPO, the fixed-penalty baseline, and PPO-Lag with PTX
// (rows of unequal label counts) on 2 ranks follow 1 rank with the same global batch, sampling
// with top-k 50: every metric within 1e-4 relative; PPO-Lag with PTX also with two micro-batches
// per update.
func TestNativeDataParallelVariants(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	ptx := unequalPTX(t)
	// Two micro-batches per update (each rank's --micro-batch-size is half its share): the PTX
	// rows of global micro-batch i are the ranks' micro-batches i together.
	halves := func(c *GraphNetsConfig) { c.MicroBatchSize = c.TrainBatchSize / 2 }
	for _, v := range []struct {
		name  string
		alg   Algorithm
		ptx   func() *PTXSet
		micro bool
	}{{"ppo", PPO, nil, false}, {"fixed", Fixed, nil, false}, {"ppo-lag+ptx", PPOLag, ptx, false},
		{"ppo-lag+ptx, 2 micro-batches", PPOLag, ptx, true}} {
		t.Run(v.name, func(t *testing.T) {
			cfg := dpConfig()
			cfg.Algorithm = v.alg
			if v.ptx != nil {
				cfg.PTXCoeff = 2
			}
			nets := []func(*GraphNetsConfig){withSpec(t, "native")}
			if v.micro {
				nets = append(nets, halves)
			}
			one := runRanks(t, cfg, 1, Options{OutDir: t.TempDir()}, v.ptx, nets...)
			two := runRanks(t, cfg, 2, Options{OutDir: t.TempDir()}, v.ptx, nets...)
			for r, x := range append(one, two...) {
				if x.err != nil {
					t.Fatalf("run %d: %v", r, x.err)
				}
			}
			worst := 0.0
			for i := range one[0].hist {
				a, b := metricFields(one[0].hist[i]), metricFields(two[0].hist[i])
				for k, x := range a {
					d := math.Abs(x-b[k]) / max(1, math.Abs(x))
					worst = max(worst, d)
					if d > 1e-4 {
						t.Errorf("step %d %s: 1 rank %.7g, 2 ranks %.7g", i+1, k, x, b[k])
					}
				}
			}
			if v.ptx != nil && one[0].hist[0].PTXLoss == 0 {
				t.Error("no PTX loss logged")
			}
			t.Logf("%s: largest relative metric difference 1 vs 2 ranks %.3g", v.name, worst)
		})
	}
}

// onRanks runs one for each rank of a world of in-process TCP ranks (dist.Self for one) and
// waits for all of them.
func onRanks(t *testing.T, world int, one func(rank int, comm dist.Communicator)) {
	t.Helper()
	if world == 1 {
		one(0, dist.Self{})
		return
	}
	comms, err := dist.NewLocalGroup(context.Background(), world, dist.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for r := range world {
		wg.Go(func() { defer comms[r].Close(); one(r, comms[r]) })
	}
	wg.Wait()
}

// rowNets is fakeNets recording each Generate call's sampling seed and global rows.
type rowNets struct {
	*fakeNets
	calls []genCall
}

type genCall struct{ seed, first, n uint64 }

func (r *rowNets) Generate(prompts [][]int32, seed, firstRow uint64) (*Rollout, error) {
	r.calls = append(r.calls, genCall{seed, firstRow, uint64(len(prompts))})
	return r.fakeNets.Generate(prompts, seed, firstRow)
}

// TestRolloutRowStreams: with 2 samples per prompt and 2 rollout micro-batches per step, the
// trainer's Generate calls give every row of a step's rollout batch its own global index (the
// calls' row ranges tile [0, prompt batch × samples) with no overlap), one seed per step, a new
// seed each step, and 2 ranks split exactly those rows under the same seeds (a firstRow that
// forgot the micro-batch, the rank's offset or the samples per prompt reuses a stream).
func TestRolloutRowStreams(t *testing.T) {
	cfg := fakeConfig(PPOLag)
	cfg.NumReturnSeqs, cfg.MaxSteps = 2, 2
	rows := uint64(cfg.PromptBatchSize * cfg.NumReturnSeqs)
	run := func(world int) [][]genCall { // per step, every rank's calls
		nets := make([]*rowNets, world)
		errs := make([]error, world)
		one := func(r int, comm dist.Communicator) {
			nets[r] = &rowNets{fakeNets: &fakeNets{harmful: 0.5}}
			tr, err := NewTrainer(cfg, Options{OutDir: filepath.Join(t.TempDir(), "out"), Comm: comm}, nets[r], testPrompts(t, 20), nil)
			if err != nil {
				errs[r] = err
				return
			}
			defer tr.Close()
			errs[r] = tr.Run(context.Background())
		}
		onRanks(t, world, one)
		steps := make([][]genCall, cfg.MaxSteps)
		for r, n := range nets {
			if errs[r] != nil {
				t.Fatalf("world %d rank %d: %v", world, r, errs[r])
			}
			per := len(n.calls) / cfg.MaxSteps
			for s := range steps {
				steps[s] = append(steps[s], n.calls[s*per:(s+1)*per]...)
			}
		}
		return steps
	}
	one := run(1)
	for world, steps := range map[int][][]genCall{1: one, 2: run(2)} {
		for s, calls := range steps {
			covered := make([]int, rows)
			for _, c := range calls {
				if c.seed != one[s][0].seed {
					t.Errorf("world %d step %d: seed %#x, one process's is %#x", world, s, c.seed, one[s][0].seed)
				}
				for i := c.first; i < c.first+c.n; i++ {
					if i >= rows {
						t.Fatalf("world %d step %d: row %d beyond the rollout batch of %d", world, s, i, rows)
					}
					covered[i]++
				}
			}
			for i, k := range covered {
				if k != 1 {
					t.Errorf("world %d step %d: global row %d sampled by %d calls, want 1 (calls %v)", world, s, i, k, calls)
				}
			}
		}
	}
	if one[0][0].seed == one[1][0].seed {
		t.Error("steps 1 and 2 sample with the same seed")
	}
}

// TestCheckRankShares: batch sizes that would fail an update mid-run are refused before the
// ranks meet, among them a smaller last rollout micro-batch (--prompt-batch-size not a multiple of
// --train-batch-size, with 2 samples per prompt) that does not split into the accumulation's
// micro-batches.
func TestCheckRankShares(t *testing.T) {
	for _, c := range []struct {
		pb, tb, nrs, micro, world int
		want                      string
	}{
		{8, 4, 1, 2, 2, ""},
		{9, 6, 2, 3, 1, "last micro-batch of --prompt-batch-size 9 (3 prompts per rank) does not split into the 2"},
		{9, 6, 2, 2, 1, ""}, // 3 micro-batches of 1 row
		{9, 6, 2, 0, 1, ""},
		{18, 12, 2, 3, 2, "(3 prompts per rank) does not split into the 2"},
		{10, 5, 1, 0, 2, "--train-batch-size 5 is global"},
		{8, 4, 1, 4, 2, "--micro-batch-size 4 must divide each rank's share"},
	} {
		rc := DefaultRunConfig(PPOLag)
		rc.PromptBatchSize, rc.TrainBatchSize, rc.NumReturnSeqs, rc.MicroBatch = c.pb, c.tb, c.nrs, c.micro
		err := checkRankShares(rc, c.world)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c, err, c.want)
		}
	}
}

// TestEvaluateRowStreams: the held-out evaluation gives prompt i the global row i whatever the
// batch size and world size (batch j on rank j mod world), so before/after and ranked
// evaluations sample each prompt from the same stream.
func TestEvaluateRowStreams(t *testing.T) {
	prompts := testPrompts(t, 7).prompts
	for _, c := range []struct{ batch, world int }{{2, 1}, {3, 1}, {7, 1}, {2, 2}, {3, 2}} {
		nets := make([]*rowNets, c.world)
		errs := make([]error, c.world)
		one := func(r int, comm dist.Communicator) {
			nets[r] = &rowNets{fakeNets: &fakeNets{}}
			_, _, errs[r] = EvaluateRanked(nets[r], prompts, c.batch, 5, comm)
		}
		onRanks(t, c.world, one)
		covered := make([]int, len(prompts))
		for r, n := range nets {
			if errs[r] != nil {
				t.Fatalf("%+v rank %d: %v", c, r, errs[r])
			}
			for _, call := range n.calls {
				if call.seed != 5 {
					t.Errorf("%+v: seed %d, want 5", c, call.seed)
				}
				for i := call.first; i < call.first+call.n; i++ {
					if int(i) >= len(prompts) {
						t.Fatalf("%+v: row %d beyond the %d prompts", c, i, len(prompts))
					}
					covered[i]++
				}
			}
		}
		for i, k := range covered {
			if k != 1 {
				t.Errorf("%+v: prompt %d sampled as its own row by %d calls, want 1", c, i, k)
			}
		}
	}
}
