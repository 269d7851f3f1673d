package stages

import (
	stdctx "context"
	"encoding/binary"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/model"
)

const assets = "../../assets/data"

// tinyConfig is a short CPU run of stage on the bundled stories260K model.
func tinyConfig(t *testing.T, stage Stage, data ...string) Config {
	c := Defaults(stage)
	c.Model = filepath.Join(assets, "models/stories260K.bin")
	c.Tokenizer = filepath.Join(assets, "models/tok512.bin")
	for _, d := range data {
		c.Data = append(c.Data, filepath.Join(assets, d))
	}
	c.Out = t.TempDir()
	c.Truncate = "prompt-left"
	c.Accumulation = 1
	c.LR = 1e-3
	return c
}

func TestSFTLowersHeldOutLoss(t *testing.T) {
	c := tinyConfig(t, SFT, "helpful/hh-rlhf-helpful-base-test.jsonl.gz")
	c.MaxLength, c.BatchSize, c.Steps, c.EvalMax, c.Epochs = 48, 8, 30, 64, 1
	r, err := Run(stdctx.Background(), SFT, c)
	if err != nil {
		t.Fatal(err)
	}
	before, after := r.Initial["loss"], r.Final["loss"]
	t.Logf("SFT: held-out loss %.4f -> %.4f on %d held-out dialogues, %d train, %d steps, %.1f s",
		before, after, r.HeldOut, r.Train, r.Steps, r.Seconds)
	if r.HeldOut < 64 || !(after < before-0.4) {
		t.Fatalf("held-out loss %.4f -> %.4f on %d examples: want a fall of more than 0.4", before, after, r.HeldOut)
	}
	// The saved model loads back for the next stage.
	if _, _, err := model.LoadAny(r.ModelDir); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidation(t *testing.T) {
	base := tinyConfig(t, RM, "hh-rlhf/harmless-base-test.jsonl.gz")
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"lr", func(c *Config) { c.LR = -1 }, "--lr"},
		{"batch", func(c *Config) { c.BatchSize = 0 }, "--batch-size"},
		{"warmup", func(c *Config) { c.Warmup = 1.5 }, "--warmup-ratio"},
		{"loss type", func(c *Config) { c.LossType = "pairwise" }, "--loss-type"},
		{"scheduler", func(c *Config) { c.Scheduler = "step" }, "--lr-scheduler"},
		{"no data", func(c *Config) { c.Data = nil }, "--data"},
		{"steps", func(c *Config) { c.Epochs, c.Steps = 0, 0 }, "--epochs"},
		{"train layers", func(c *Config) { c.TrainLayers = "embed" }, "--train-layers \"embed\""},
	} {
		c := base
		tc.mod(&c)
		err := c.Validate(RM)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one naming %s", tc.name, err, tc.want)
		}
		if _, err := Run(stdctx.Background(), RM, c); err == nil {
			t.Errorf("%s: Run accepted a bad config", tc.name)
		}
	}
	if err := base.Validate(RM); err != nil {
		t.Fatal(err)
	}
}

// scoreRun trains a reward or cost model briefly and returns its held-out result.
func scoreRun(t *testing.T, stage Stage, steps int, lr float64, lossType string, data ...string) *Result {
	if testing.Short() {
		t.Skip("trains on real data for about a minute; TestScoreModelLearnsSyntheticRule covers the path in -short")
	}
	c := tinyConfig(t, stage, data...)
	c.MaxLength, c.BatchSize, c.Steps, c.Epochs, c.EvalMax, c.EvalRatio = 64, 16, steps, 1, 224, 0.1
	c.LR, c.LossType = lr, lossType
	r, err := Run(stdctx.Background(), stage, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: held-out accuracy %.4f -> %.4f on %d pairs (%d train, %d steps, %.1f s); final %v",
		stage, r.Initial["accuracy"], r.Final["accuracy"], r.HeldOut, r.Train, r.Steps, r.Seconds, r.Final)
	return r
}

func TestRewardModelBeatsChance(t *testing.T) {
	r := scoreRun(t, RM, rmTestSteps, 3e-4, "sequence-wise", "helpful/hh-rlhf-helpful-base-test.jsonl.gz")
	if r.HeldOut < 224 || r.Final["accuracy"] < rmTestAccuracy {
		t.Fatalf("held-out accuracy %.4f on %d pairs: want >= %.2f", r.Final["accuracy"], r.HeldOut, rmTestAccuracy)
	}
	// The saved score model has a score head and loads back.
	cfg, w, err := model.LoadAny(r.ModelDir)
	if err != nil || cfg.ScoreDim != 1 || w["score_head.weight"] == nil {
		t.Fatalf("saved reward model: score dim %d, err %v", cfg.ScoreDim, err)
	}
	checkScoreConfig(t, cfg, "reward")
}

// checkScoreConfig: a saved score model's config carries its score_type and the normaliser
// tracked during training (EMA, momentum 0.9, statistics moved from the initial 0/1).
func checkScoreConfig(t *testing.T, cfg *model.Config, typ string) {
	t.Helper()
	sc := cfg.Score
	if sc.Type != typ || sc.DoNormalize || sc.NormalizerType != "ExponentialMovingAverage" || sc.Momentum != 0.9 ||
		len(sc.Mean) != 1 || len(sc.Var) != 1 || sc.Mean[0] == 0 || sc.Var[0] == 1 {
		t.Errorf("saved %s model's score config %+v", typ, sc)
	}
}

// TestCostModelBeatsChance trains the demo's cost-model recipe at half its length (bench/README "Score
// models that learn": a fresh one-layer trunk over the Llama-2 32K vocabulary, the sign term weighted 3×,
// two epochs of 400 PKU-SafeRLHF rows, 64 tokens where the demo reads 128) and requires held-out sign accuracy well above chance: it measured
// 0.67–0.71 over three seeds (0.44 untrained), so the 0.62 floor has a margin and a lower bound of its
// 95% Wilson interval above 0.5, and a cost model that does not learn harm (stories260K's character-level
// vocabulary, or a broken sign term) fails it.
func TestCostModelBeatsChance(t *testing.T) {
	if testing.Short() {
		t.Skip("trains on real data for about 20 s (idle machine); TestScoreModelLearnsSyntheticRule covers the path in -short")
	}
	c := tinyConfig(t, CM, "pku-saferlhf/pku-saferlhf-train-head500.jsonl", "pku-saferlhf/align-anything-preference-sample.json")
	c.Model, c.Tokenizer, c.Init = "../../scripts/configs/score-llama2-1layer.json", filepath.Join(assets, "models/tokenizer.model"), "scratch"
	c.Truncate, c.MaxLength, c.BatchSize, c.Epochs, c.Steps, c.EvalRatio, c.EvalMax = "right", 64, 16, 2, 0, 0.2, 0
	c.LR, c.SignWeight = 5e-3, 3
	r, err := Run(stdctx.Background(), CM, c)
	if err != nil {
		t.Fatal(err)
	}
	before, after := r.Initial["sign_accuracy"], r.Final["sign_accuracy"]
	t.Logf("CM: held-out sign accuracy %.4f -> %.4f, pair accuracy %.4f -> %.4f on %d pairs (%d train, %d steps, %.1f s)",
		before, after, r.Initial["accuracy"], r.Final["accuracy"], r.HeldOut, r.Train, r.Steps, r.Seconds)
	if r.HeldOut < 90 || after < cmTestSignAccuracy {
		t.Fatalf("held-out sign accuracy %.4f on %d pairs: want >= %.2f", after, r.HeldOut, cmTestSignAccuracy)
	}
	cfg, _, err := model.LoadAny(r.ModelDir)
	if err != nil {
		t.Fatal(err)
	}
	checkScoreConfig(t, cfg, "cost")
}

// Settings of the real-data tests and the held-out accuracies they must reach
// (measured values and held-out sizes are in bench/README.md).
const (
	rmTestSteps        = 30
	rmTestAccuracy     = 0.5
	cmTestSignAccuracy = 0.62
)

// TestNormalizerInCheckpoint: a reward model's checkpoint carries the score normaliser's
// statistics, equal to those in its config.json, so a resumed run continues them.
func TestNormalizerInCheckpoint(t *testing.T) {
	c := tinyConfig(t, RM, "pku-saferlhf/align-anything-preference-sample.json")
	c.MaxLength, c.BatchSize, c.Steps, c.Epochs, c.EvalMax, c.EvalRatio = 48, 4, 2, 1, 4, 0.2
	r, err := Run(stdctx.Background(), RM, c)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := model.LoadAny(r.ModelDir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := checkpoint.NewManager(filepath.Join(c.Out, "checkpoints"), 2)
	if err != nil {
		t.Fatal(err)
	}
	ld, err := m.Latest()
	if err != nil {
		t.Fatal(err)
	}
	defer ld.Close()
	for name, want := range map[string]float64{normScope + "/mean": cfg.Score.Mean[0], normScope + "/var": cfg.Score.Var[0]} {
		b, err := ld.TrainState.Bytes(name)
		if err != nil || len(b) != 8 {
			t.Fatalf("checkpoint %s: %d bytes, %v", name, len(b), err)
		}
		if got := math.Float64frombits(binary.LittleEndian.Uint64(b)); got != want || want == 0 {
			t.Errorf("checkpoint %s = %v, want %v as in config.json", name, got, want)
		}
	}
}

// An SFT set whose targets are all empty (a prompt-only file) is an error, not a run that
// learns EOS.
func TestSFTEmptyTargets(t *testing.T) {
	c := tinyConfig(t, SFT, "eval/safe-rlhf-gpt4-problems.json")
	c.Steps, c.MaxLength = 1, 32
	if _, err := Run(stdctx.Background(), SFT, c); err == nil || !strings.Contains(err.Error(), "every SFT target") {
		t.Fatalf("err = %v", err)
	}
}

// TestSFTDTypes: --dtype bf16 trains with bf16 matmuls (float32 masters) on the pure-Go backend,
// its held-out loss within bf16 error of the f32 run's, and --save-dtype bf16 saves bf16
// safetensors with torch_dtype bfloat16; --dtype bf16 on the native engine is refused.
func TestSFTDTypes(t *testing.T) {
	run := func(dt, save string) *Result {
		c := tinyConfig(t, SFT, "helpful/hh-rlhf-helpful-base-test.jsonl.gz")
		c.Backend, c.DType, c.SaveDType = "go", dt, save
		c.MaxLength, c.BatchSize, c.Steps, c.EvalMax, c.Epochs = 32, 4, 2, 8, 1
		r, err := Run(stdctx.Background(), SFT, c)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	f32, bf16 := run("f32", ""), run("bf16", "bf16")
	for _, k := range []string{"loss"} {
		a, b := f32.Final[k], bf16.Final[k]
		if math.IsNaN(b) || math.Abs(a-b) > 0.05*math.Abs(a) {
			t.Fatalf("held-out %s: f32 %g, bf16 %g", k, a, b)
		}
		if a == b {
			t.Fatalf("held-out %s identical in f32 and bf16 (%g): --dtype had no effect", k, a)
		}
	}
	cfg, err := model.LoadHFConfig(bf16.ModelDir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TorchDType != "bfloat16" {
		t.Fatalf("saved torch_dtype %q, want bfloat16", cfg.TorchDType)
	}
	if c, err := model.LoadHFConfig(f32.ModelDir); err != nil || c.TorchDType == "bfloat16" {
		t.Fatalf("f32 run saved torch_dtype %q (%v)", c.TorchDType, err)
	}
	if !engine.Available {
		return
	}
	c := tinyConfig(t, SFT, "helpful/hh-rlhf-helpful-base-test.jsonl.gz")
	c.Backend, c.DType, c.Steps = "native", "bf16", 1
	if _, err := Run(stdctx.Background(), SFT, c); err == nil || !strings.Contains(err.Error(), "--dtype") {
		t.Fatalf("bf16 on the native engine: %v", err)
	}
}
