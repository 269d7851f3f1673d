package stages

import (
	stdctx "context"
	"path/filepath"
	"strings"
	"testing"
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
	if _, _, err := LoadModel(r.ModelDir); err != nil {
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
