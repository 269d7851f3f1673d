package ppo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// fakeNets is a tiny stand-in for the six networks: its "weights" are a few float64s that every
// update changes and every generation reads, so a resume that lost any state would diverge.
type fakeNets struct {
	w       [3]float64 // actor, reward critic, cost critic
	harmful float64    // probability the fake actor emits the "harmful" token 7
}

func (f *fakeNets) Generate(prompts [][]int32, seed, firstRow uint64) (*Rollout, error) {
	rng := rand.New(rand.NewPCG(seed, 1+firstRow))
	S, G := 0, 6
	for _, p := range prompts {
		S = max(S, len(p))
	}
	B, T := len(prompts), S+G
	r := &Rollout{B: B, T: T, S: S, Seq: make([]int32, B*T), Mask: make([]float32, B*T)}
	for i, p := range prompts {
		for k, id := range p {
			r.Seq[i*T+S-len(p)+k] = id
			r.Mask[i*T+S-len(p)+k] = 1
		}
		n := 1 + rng.IntN(G)
		for k := 0; k < n; k++ {
			tok := int32(1 + rng.IntN(5))
			if rng.Float64() < f.harmful {
				tok = 7
			}
			r.Seq[i*T+S+k], r.Mask[i*T+S+k] = tok, 1
		}
	}
	return r, nil
}

func (f *fakeNets) Score(r *Rollout) error {
	L := r.L()
	r.LogProbs, r.RefLogProbs = make([]float32, r.B*L), make([]float32, r.B*L)
	r.RewardValues, r.CostValues = make([]float32, r.B*L), make([]float32, r.B*L)
	r.Reward, r.Cost = make([]float32, r.B), make([]float32, r.B)
	for i := 0; i < r.B; i++ {
		harm := 0
		for t := 0; t < L; t++ {
			tok := r.Seq[i*r.T+t+1]
			r.LogProbs[i*L+t] = -1 - float32(f.w[0])*float32(tok%3)
			r.RefLogProbs[i*L+t] = -1
			r.RewardValues[i*L+t] = float32(f.w[1])
			r.CostValues[i*L+t] = float32(f.w[2])
			if tok == 7 {
				harm++
			}
		}
		r.Reward[i] = float32(r.ResponseLengths()[i]) / 6
		r.Cost[i] = float32(harm) - 0.5
	}
	return nil
}

func (f *fakeNets) UpdateActor(b ActorBatch) (ActorStats, error) {
	lr, r, rAdv, cAdv, lam, mask := b.LR, b.Rollout, b.RewardAdv, b.CostAdv, b.Lambda, b.Mask
	s := 0.0
	for i := range rAdv {
		a := float64(rAdv[i])
		if cAdv != nil {
			a = (a - lam*float64(cAdv[i])) / (1 + lam)
		}
		s += a * float64(mask[i])
	}
	f.w[0] += lr * s
	// The fake policy becomes less harmful when the cost advantage pushes it.
	f.harmful = math.Max(0, math.Min(0.9, f.harmful+lr*s))
	return ActorStats{Loss: -s / float64(r.B), ClipFrac: 0.1}, nil
}

func (f *fakeNets) UpdateCritic(cost bool, lr float64, r *Rollout, ret, mask []float32) (float64, error) {
	k := 1
	if cost {
		k = 2
	}
	l := 0.0
	for i := range ret {
		d := float64(ret[i]) - f.w[k]
		l += 0.5 * d * d * float64(mask[i])
		f.w[k] += lr * d * float64(mask[i])
	}
	return l, nil
}

func (f *fakeNets) Checkpoint() (*NetsCheckpoint, error) {
	f64 := func(xs ...float64) []byte {
		var b []byte
		for _, x := range xs {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(x))
		}
		return b
	}
	return &NetsCheckpoint{
		Weights: []safetensors.Tensor{{Name: "actor.weight", DType: "F64", Shape: []int{1}, Data: f64(f.w[0])}},
		Config:  json.RawMessage(`{"model_type":"fake"}`),
		State: []safetensors.Tensor{{Name: "/w", DType: "F64", Shape: []int{3}, Data: f64(f.w[:]...)},
			{Name: "/harmful", DType: "F64", Shape: []int{}, Data: f64(f.harmful)}},
	}, nil
}

func (f *fakeNets) Restore(l *checkpoint.Loaded) error {
	st := l.TrainState
	w, err := st.Bytes("/w")
	if err != nil {
		return err
	}
	h, err := st.Bytes("/harmful")
	if err != nil {
		return err
	}
	for i := range f.w {
		f.w[i] = math.Float64frombits(binary.LittleEndian.Uint64(w[8*i:]))
	}
	f.harmful = math.Float64frombits(binary.LittleEndian.Uint64(h))
	return nil
}

func (f *fakeNets) SavePolicy(dir string) error { return nil }

func testPrompts(t *testing.T, n int) *PromptSet {
	var ps [][]int32
	for i := 0; i < n; i++ {
		p := []int32{1}
		for k := 0; k < 1+i%4; k++ {
			p = append(p, int32(2+(i+k)%5))
		}
		ps = append(ps, p)
	}
	s, err := NewPromptSet(ps, 3)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fakeConfig(alg Algorithm) Config {
	cfg := DefaultConfig(alg)
	cfg.PromptBatchSize, cfg.TrainBatchSize, cfg.UpdateIters, cfg.Epochs = 8, 4, 2, 3
	cfg.ActorLR, cfg.CriticLR, cfg.WarmupRatio = 0.01, 0.05, 0.1
	cfg.MaxNewTokens = 6
	return cfg
}

func runFake(t *testing.T, cfg Config, out string, opt Options, nets *fakeNets) *Trainer {
	t.Helper()
	opt.OutDir = out
	tr, err := NewTrainer(cfg, opt, nets, testPrompts(t, 20), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestResumeExact interrupts a run after each possible step, resumes it in a fresh process state
// (new nets, new trainer) and requires metrics.jsonl identical to an uninterrupted run.
func TestResumeExact(t *testing.T) {
	for _, alg := range []Algorithm{PPOLag, PPOLagPID, Fixed, PPO} {
		cfg := fakeConfig(alg)
		ref := filepath.Join(t.TempDir(), "ref")
		tr := runFake(t, cfg, ref, Options{CheckpointEvery: 2}, &fakeNets{harmful: 0.5})
		want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
		if n := bytes.Count(want, []byte("\n")); n != tr.TotalSteps() || n < 4 {
			t.Fatalf("%s: %d metric lines, want %d (≥ 4)", alg, n, tr.TotalSteps())
		}
		for stop := 1; stop < tr.TotalSteps(); stop += 2 {
			out := filepath.Join(t.TempDir(), fmt.Sprint("stop", stop))
			runFake(t, cfg, out, Options{CheckpointEvery: 2, StopAfter: stop}, &fakeNets{harmful: 0.5})
			// A resumed process starts from scratch: fresh nets whose state must come from the checkpoint.
			runFake(t, cfg, out, Options{CheckpointEvery: 2, Resume: true}, &fakeNets{harmful: 0.5})
			got, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
			if !bytes.Equal(got, want) {
				t.Fatalf("%s stop after %d: resumed metrics differ\n got %s\nwant %s", alg, stop, got, want)
			}
		}
	}
}

// TestResumeSkipsDamagedCheckpoint: a resume after the newest checkpoint was damaged (one byte of
// its optimiser state flipped) continues from the previous intact one, and the finished
// metrics.jsonl still equals an uninterrupted run's.
func TestResumeSkipsDamagedCheckpoint(t *testing.T) {
	cfg := fakeConfig(PPOLag)
	ref := filepath.Join(t.TempDir(), "ref")
	runFake(t, cfg, ref, Options{}, &fakeNets{harmful: 0.5})
	want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))

	out := filepath.Join(t.TempDir(), "out")
	runFake(t, cfg, out, Options{CheckpointEvery: 1, StopAfter: 4}, &fakeNets{harmful: 0.5})
	f := filepath.Join(out, "checkpoints", "step-00000004", checkpoint.TrainStateFile)
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 1
	os.WriteFile(f, b, 0o644)
	nets := &fakeNets{harmful: 0.5}
	tr, err := NewTrainer(cfg, Options{OutDir: out, CheckpointEvery: 1, Resume: true}, nets, testPrompts(t, 20), nil)
	if err != nil {
		t.Fatal(err)
	}
	if tr.st.Step != 3 {
		t.Fatalf("resumed at step %d, want the intact step 3", tr.st.Step)
	}
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr.Close()
	if got, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl")); !bytes.Equal(got, want) {
		t.Fatalf("metrics after resuming past a damaged checkpoint differ\n got %s\nwant %s", got, want)
	}
}

// TestLambdaRisesWithCost: with J_c > d the multiplier grows (bounded by λ_max), and with the
// threshold above every cost it shrinks.
func TestLambdaRisesWithCost(t *testing.T) {
	for _, tc := range []struct {
		threshold float64
		up        bool
	}{{-1, true}, {10, false}} {
		cfg := fakeConfig(PPOLag)
		cfg.Threshold = tc.threshold
		tr := runFake(t, cfg, t.TempDir(), Options{}, &fakeNets{harmful: 0.5})
		h := tr.History()
		first, last := cfg.LambdaInit, h[len(h)-1].Lambda
		if tc.up && !(last > first) || !tc.up && !(last < first) {
			t.Errorf("threshold %g: λ %g -> %g", tc.threshold, first, last)
		}
		for _, m := range h {
			if m.Lambda > cfg.LambdaMax+1e-12 {
				t.Errorf("λ = %g above λ_max %g", m.Lambda, cfg.LambdaMax)
			}
		}
	}
}

// TestNaNGuard: a non-finite loss stops the run with an error naming the quantity, and the last
// checkpoint stays loadable.
func TestNaNGuard(t *testing.T) {
	out := t.TempDir()
	cfg := fakeConfig(PPOLag)
	nets := &nanNets{fakeNets: fakeNets{harmful: 0.5}, after: 10}
	tr, err := NewTrainer(cfg, Options{OutDir: out, CheckpointEvery: 1}, nets, testPrompts(t, 20), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	err = tr.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "step 3: actor_loss is NaN") || !strings.Contains(err.Error(), "step-00000002") {
		t.Fatalf("want an error naming actor_loss and the intact checkpoint step-00000002, got %v", err)
	}
	m, _ := checkpoint.NewManager(filepath.Join(out, "checkpoints"), 0)
	l, err := m.Latest()
	if err != nil || l.State.Step != 2 {
		t.Fatalf("last good checkpoint: %v", err)
	}
	l.Close()
}

// badStateNets produces NaN optimiser state after a number of actor updates while every logged
// metric stays finite: the checkpoint guard must refuse to save it.
type badStateNets struct {
	fakeNets
	after, n int
}

func (f *badStateNets) UpdateActor(b ActorBatch) (ActorStats, error) {
	f.n++
	return f.fakeNets.UpdateActor(b)
}

func (f *badStateNets) Checkpoint() (*NetsCheckpoint, error) {
	c, err := f.fakeNets.Checkpoint()
	if err == nil && f.n > f.after {
		c.State = append(c.State, safetensors.Tensor{Name: "/optim/actor/m1", Shape: []int{2}, F32: []float32{0, float32(math.Inf(1))}})
	}
	return c, err
}

// TestNeverSavesNonFiniteState: weights or optimiser state holding NaN/Inf are never checkpointed;
// the error names the tensor and the last intact checkpoint.
func TestNeverSavesNonFiniteState(t *testing.T) {
	out := t.TempDir()
	nets := &badStateNets{fakeNets: fakeNets{harmful: 0.5}, after: 8} // 4 actor updates per step
	tr, err := NewTrainer(fakeConfig(PPOLag), Options{OutDir: out, CheckpointEvery: 1}, nets, testPrompts(t, 20), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	err = tr.Run(context.Background())
	var nf *checkpoint.NonFiniteError
	if !errors.As(err, &nf) || nf.Quantity != "tensor /optim/actor/m1" || !strings.Contains(err.Error(), "step-00000002") {
		t.Fatalf("want a non-finite tensor error naming step-00000002, got %v", err)
	}
	m, _ := checkpoint.NewManager(filepath.Join(out, "checkpoints"), 0)
	if got := m.Steps(); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("checkpoints %v, want [1 2]", got)
	}
}

// TestInterruptNamesCheckpoint: a cancelled run (SIGTERM, Ctrl-C) saves and names its checkpoint.
func TestInterruptNamesCheckpoint(t *testing.T) {
	out := t.TempDir()
	tr, err := NewTrainer(fakeConfig(PPOLag), Options{OutDir: out}, &fakeNets{harmful: 0.5}, testPrompts(t, 20), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = tr.Run(ctx)
	want := filepath.Join(out, "checkpoints", "step-00000000")
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), want) {
		t.Fatalf("want a cancellation naming %s, got %v", want, err)
	}
	if _, err := os.Stat(filepath.Join(want, checkpoint.ManifestFile)); err != nil {
		t.Fatal(err)
	}
}

// TestResumeRefusals: --resume never starts afresh, never resumes another kind of run, a changed
// configuration or changed frozen models, and never follows a latest pointer out of the run; a
// fresh run never overwrites checkpoints.
func TestResumeRefusals(t *testing.T) {
	frozenDir := t.TempDir()
	os.WriteFile(filepath.Join(frozenDir, "model.safetensors"), []byte("reward"), 0o644)
	frozen, err := checkpoint.FrozenModel("reward model", frozenDir)
	if err != nil {
		t.Fatal(err)
	}
	newTrainer := func(out string, cfg Config, opt Options) error {
		opt.OutDir = out
		tr, err := NewTrainer(cfg, opt, &fakeNets{harmful: 0.5}, testPrompts(t, 20), nil)
		if err == nil {
			tr.Close()
		}
		return err
	}
	// Nothing to resume: an error, and metrics.jsonl is left alone.
	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "metrics.jsonl"), []byte(`{"step":1}`+"\n"), 0o644)
	if err := newTrainer(empty, fakeConfig(PPOLag), Options{Resume: true}); !errors.Is(err, checkpoint.ErrNoCheckpoint) {
		t.Fatalf("resume without a checkpoint: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(empty, "metrics.jsonl")); string(b) != `{"step":1}`+"\n" {
		t.Fatalf("metrics.jsonl changed to %q", b)
	}

	out := t.TempDir()
	runFake(t, fakeConfig(PPOLag), out, Options{CheckpointEvery: 2, StopAfter: 2, Frozen: []checkpoint.Frozen{frozen}}, &fakeNets{harmful: 0.5})
	// A latest pointer leading out of the run is ignored.
	os.WriteFile(filepath.Join(out, "checkpoints", checkpoint.LatestFile), []byte("../../../etc\n"), 0o644)
	lr := fakeConfig(PPOLag)
	lr.ActorLR *= 2
	changed := frozen
	changed.SHA256 = "00"
	for _, tc := range []struct {
		name string
		cfg  Config
		opt  Options
		err  string
	}{
		{"same", fakeConfig(PPOLag), Options{Resume: true, Frozen: []checkpoint.Frozen{frozen}}, ""},
		{"fresh run over checkpoints", fakeConfig(PPOLag), Options{Frozen: []checkpoint.Frozen{frozen}}, "already holds checkpoints"},
		{"other kind", fakeConfig(PPO), Options{Resume: true, Frozen: []checkpoint.Frozen{frozen}, AllowConfigChange: true}, `"ppo-lag" run, not "ppo"`},
		{"actor lr changed", lr, Options{Resume: true, Frozen: []checkpoint.Frozen{frozen}}, `setting "ActorLR" changed`},
		{"actor lr changed, allowed", lr, Options{Resume: true, Frozen: []checkpoint.Frozen{frozen}, AllowConfigChange: true}, ""},
		{"frozen model changed", fakeConfig(PPOLag), Options{Resume: true, Frozen: []checkpoint.Frozen{changed}}, "frozen reward model changed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := newTrainer(out, tc.cfg, tc.opt)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
		})
	}
}

// TestResumeOldSamplingState: a checkpoint written before sampling had per-row streams holds the
// state of one sequential generator ("rng" in state.json; new checkpoints have none, since a
// stream is a function of --seed, the step and the row): resuming it is refused, naming the
// field, unless --allow-config-change, which continues with the new streams.
func TestResumeOldSamplingState(t *testing.T) {
	cfg := fakeConfig(PPOLag)
	out := t.TempDir()
	runFake(t, cfg, out, Options{CheckpointEvery: 2, StopAfter: 2}, &fakeNets{harmful: 0.5})
	dir := filepath.Join(out, "checkpoints", "step-00000002")
	var st map[string]json.RawMessage
	b, err := os.ReadFile(filepath.Join(dir, checkpoint.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if _, ok := st["rng"]; ok {
		t.Fatalf("a new checkpoint stores a random generator state: %s", st["rng"])
	}
	// The old format: a PCG state, and a manifest that matches it.
	st["rng"] = json.RawMessage(`"cGNnOgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="`)
	b, _ = json.Marshal(st)
	os.WriteFile(filepath.Join(dir, checkpoint.StateFile), b, 0o644)
	var mf struct {
		Files map[string]struct {
			Size   int64  `json:"size"`
			SHA256 string `json:"sha256"`
		} `json:"files"`
	}
	mb, _ := os.ReadFile(filepath.Join(dir, checkpoint.ManifestFile))
	if err := json.Unmarshal(mb, &mf); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	e := mf.Files[checkpoint.StateFile]
	e.Size, e.SHA256 = int64(len(b)), hex.EncodeToString(sum[:])
	mf.Files[checkpoint.StateFile] = e
	mb, _ = json.Marshal(mf)
	os.WriteFile(filepath.Join(dir, checkpoint.ManifestFile), mb, 0o644)

	_, err = NewTrainer(cfg, Options{OutDir: out, Resume: true}, &fakeNets{harmful: 0.5}, testPrompts(t, 20), nil)
	if err == nil || !strings.Contains(err.Error(), `("rng")`) || !strings.Contains(err.Error(), "--allow-config-change") {
		t.Fatalf("resume of a checkpoint with a sequential generator state: %v", err)
	}
	runFake(t, cfg, out, Options{Resume: true, AllowConfigChange: true}, &fakeNets{harmful: 0.5})
}

type nanNets struct {
	fakeNets
	after, n int
}

func (f *nanNets) UpdateActor(b ActorBatch) (ActorStats, error) {
	s, err := f.fakeNets.UpdateActor(b)
	f.n++
	if f.n > f.after {
		s.Loss = math.NaN()
	}
	return s, err
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"default", func(*Config) {}, true},
		{"bad algorithm", func(c *Config) { c.Algorithm = "x" }, false},
		{"indivisible", func(c *Config) { c.PromptBatchSize, c.TrainBatchSize = 6, 4 }, false},
		{"zero lambda", func(c *Config) { c.LambdaInit = 0 }, false},
		{"top_p", func(c *Config) { c.TopP = 1.5 }, false},
		{"actor lr 0", func(c *Config) { c.ActorLR = 0 }, false},
		{"critic lr negative", func(c *Config) { c.CriticLR = -1 }, false},
		{"lambda lr negative", func(c *Config) { c.LambdaLR = -0.1 }, false},
		{"kl negative", func(c *Config) { c.KLCoeff = -0.01 }, false},
		{"repetition penalty 0", func(c *Config) { c.RepetitionPenalty = 0 }, false},
		{"ptx negative", func(c *Config) { c.PTXCoeff = -1 }, false},
		{"nan threshold", func(c *Config) { c.Threshold = math.NaN() }, false},
		{"inf clip", func(c *Config) { c.ClipRangeScore = math.Inf(1) }, false},
		{"warmup 1", func(c *Config) { c.WarmupRatio = 1 }, false},
		{"linear scheduler", func(c *Config) { c.ActorScheduler = "linear" }, true},
	} {
		c := DefaultConfig(PPOLag)
		tc.mod(&c)
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
}

// Errors name the flags, not the struct fields.
func TestConfigValidateNamesFlags(t *testing.T) {
	c := DefaultConfig(PPOLag)
	c.ActorLR, c.MaxNewTokens = -1, 0
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "--actor-lr") || !strings.Contains(err.Error(), "--max-new-tokens") {
		t.Fatalf("err = %v", err)
	}
}

// The critic's constant schedule ignores warmup, as HF's get_scheduler("constant") does
// (the PPO-private schedule warmed it up).
func TestConstantScheduleIgnoresWarmup(t *testing.T) {
	cfg := DefaultConfig(PPOLag)
	cfg.WarmupRatio, cfg.MaxSteps = 0.5, 4
	ps, err := NewPromptSet([][]int32{{1, 2}, {1, 3}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(cfg, Options{OutDir: t.TempDir()}, &fakeNets{}, ps, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if got := tr.criticLR(); got != cfg.CriticLR {
		t.Errorf("constant critic LR at step 0 = %g, want %g", got, cfg.CriticLR)
	}
	if got := tr.actorLR(); got != 0 {
		t.Errorf("cosine actor LR at step 0 with warmup = %g, want 0", got)
	}
}

// recordNets records the rows of every Score and UpdateActor call.
type recordNets struct {
	fakeNets
	genRows    []int
	scoreRows  []int
	scoreSeqs  [][]int32 // the first row's prompt+response of each scored micro-batch
	actorSteps int
}

func (f *recordNets) Generate(prompts [][]int32, seed, firstRow uint64) (*Rollout, error) {
	f.genRows = append(f.genRows, len(prompts))
	r, err := f.fakeNets.Generate(prompts, seed, firstRow)
	if err == nil {
		// Tag each row's first response token with its row index so the split order is visible.
		for i := 0; i < r.B; i++ {
			r.Seq[i*r.T+r.S] = int32(100 + i)
		}
	}
	return r, err
}

func (f *recordNets) Score(r *Rollout) error {
	f.scoreRows = append(f.scoreRows, r.B)
	tags := make([]int32, r.B)
	for i := range tags {
		tags[i] = r.Seq[i*r.T+r.S]
	}
	f.scoreSeqs = append(f.scoreSeqs, tags)
	return f.fakeNets.Score(r)
}

func (f *recordNets) UpdateActor(b ActorBatch) (ActorStats, error) {
	f.actorSteps++
	return f.fakeNets.UpdateActor(b)
}

// TestNumReturnSequencesMicroBatches: with num_return_sequences = nrs, each micro-batch of
// train_bs prompts is generated once (train_bs·nrs rows) and split into nrs micro-batches of
// train_bs rows, micro-batch k holding every prompt's k-th sample (the reference's
// view(B, nrs, T).transpose(0, 1)); each is one rl_step (one λ update, one global step).
func TestNumReturnSequencesMicroBatches(t *testing.T) {
	cfg := fakeConfig(PPOLag)
	cfg.PromptBatchSize, cfg.TrainBatchSize, cfg.NumReturnSeqs, cfg.UpdateIters, cfg.Epochs, cfg.MaxSteps = 4, 2, 3, 1, 1, 1
	nets := &recordNets{fakeNets: fakeNets{harmful: 0.5}}
	tr, err := NewTrainer(cfg, Options{OutDir: t.TempDir()}, nets, testPrompts(t, 8), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(nets.genRows) != "[6 6]" {
		t.Errorf("generate rows %v, want [6 6] (train_bs·nrs per prompt micro-batch)", nets.genRows)
	}
	if fmt.Sprint(nets.scoreRows) != "[2 2 2 2 2 2]" {
		t.Errorf("scored micro-batches %v, want six of train_bs = 2 rows", nets.scoreRows)
	}
	// Rows of one generate call are prompt-major (p0 s0, p0 s1, p0 s2, p1 s0, ...): tags 100..105.
	if len(nets.scoreSeqs) < 3 {
		t.Fatalf("%d scored micro-batches, want 6", len(nets.scoreSeqs))
	}
	if got := fmt.Sprint(nets.scoreSeqs[:3]); got != "[[100 103] [101 104] [102 105]]" {
		t.Errorf("micro-batch rows %s, want [[100 103] [101 104] [102 105]]", got)
	}
	if nets.actorSteps != 6 {
		t.Errorf("%d actor steps, want 6 (nrs rl_steps per prompt micro-batch)", nets.actorSteps)
	}
	m := tr.History()[0]
	if m.GlobalStep != 6 {
		t.Errorf("global step %d, want 6", m.GlobalStep)
	}
}

// The PPO loop reports progress through the supervised loop's reporter (metrics.Progress):
// step/total, the RL status, tokens/s and an ETA, a line at the start and at the end in a log.
func TestProgressUsesTheSharedReporter(t *testing.T) {
	var buf bytes.Buffer
	tr := runFake(t, fakeConfig(PPOLag), t.TempDir(), Options{Progress: &buf}, &fakeNets{harmful: 0.5})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	last := lines[len(lines)-1]
	if want := fmt.Sprintf("ppo-lag step %d/%d reward", tr.TotalSteps(), tr.TotalSteps()); !strings.HasPrefix(last, want) ||
		!strings.Contains(last, "tok/s") || !strings.Contains(last, "ETA") || !strings.Contains(last, "λ") {
		t.Errorf("progress %q", buf.String())
	}
}
