package config

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type flags struct {
	lr        *float64
	epochs    *int
	scheduler *string
	bf16      *bool
	datasets  *string
	outDir    *string
}

func newFlags() (*flag.FlagSet, *flags) {
	fs := flag.NewFlagSet("sft", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs, &flags{
		lr:        fs.Float64("lr", 1e-3, ""),
		epochs:    fs.Int("epochs", 1, ""),
		scheduler: fs.String("lr-scheduler", "cosine", ""),
		bf16:      fs.Bool("bf16", false, ""),
		datasets:  fs.String("datasets", "", ""),
		outDir:    fs.String("out-dir", "out", ""),
	}
}

func write(t *testing.T, name, body string) string {
	p := filepath.Join(t.TempDir(), name)
	os.WriteFile(p, []byte(body), 0o644)
	return p
}

func TestFileAndCommandLine(t *testing.T) {
	p := write(t, "c.yaml", "# SFT\nlr: 2e-5\nepochs: 3\nlr_scheduler: constant\nbf16: true\ndatasets: [alpaca, PKU-SafeRLHF/train]\n")
	fs, f := newFlags()
	if err := Parse(fs, []string{"--config", p, "--epochs", "5"}); err != nil {
		t.Fatal(err)
	}
	if *f.lr != 2e-5 || *f.epochs != 5 || *f.scheduler != "constant" || !*f.bf16 || *f.datasets != "alpaca,PKU-SafeRLHF/train" || *f.outDir != "out" {
		t.Errorf("lr %v epochs %v sched %v bf16 %v datasets %v out %v", *f.lr, *f.epochs, *f.scheduler, *f.bf16, *f.datasets, *f.outDir)
	}
	// JSON works too.
	p = write(t, "c.json", `{"lr": 0.5, "out-dir": "x"}`)
	fs, f = newFlags()
	if err := Parse(fs, []string{"-config=" + p}); err != nil || *f.lr != 0.5 || *f.outDir != "x" {
		t.Errorf("json: %v %v %v", err, *f.lr, *f.outDir)
	}
	// No config: plain flags.
	fs, f = newFlags()
	if err := Parse(fs, []string{"--lr", "3"}); err != nil || *f.lr != 3 {
		t.Errorf("no config: %v", err)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		body string
		want []string
	}{
		{"lr: 1\nlearning_rate: 2\n", []string{"c.yaml:2", `"learning_rate"`, "unknown key"}},
		{"lr_schedular: cosine\n", []string{`did you mean "lr-scheduler"`}},
		{"epochs: three\n", []string{"c.yaml:1", `"epochs"`, `invalid value "three"`}},
		{"bf16: {a: 1}\n", []string{`"bf16"`, "mapping"}},
		{"lr: 1\nlr: 2\n", []string{"c.yaml:2"}},
		{"- lr\n", []string{"must be a mapping"}},
		{"lr: [1\n", []string{"c.yaml"}},
		{"config: other.yaml\n", []string{"another config"}},
		{"lr: ~\n", []string{"null"}},
	}
	for _, tc := range tests {
		p := write(t, "c.yaml", tc.body)
		fs, _ := newFlags()
		err := Parse(fs, []string{"--config", p})
		if err == nil {
			t.Errorf("%q: no error", tc.body)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q lacks %q", tc.body, err, w)
			}
		}
	}
	fs, _ := newFlags()
	if err := Parse(fs, []string{"--config", "/nonexistent/c.yaml"}); err == nil {
		t.Error("missing file accepted")
	}
}

func TestWriteEffectiveRoundTrip(t *testing.T) {
	fs, f := newFlags()
	Parse(fs, []string{"--lr", "2e-05", "--datasets", "a,b", "--out-dir", ""})
	p := filepath.Join(t.TempDir(), "effective.yaml")
	if err := WriteEffective(fs, p); err != nil {
		t.Fatal(err)
	}
	fs2, f2 := newFlags()
	*f2.outDir = "changed"
	if err := Parse(fs2, []string{"--config", p}); err != nil {
		b, _ := os.ReadFile(p)
		t.Fatalf("%v\n%s", err, b)
	}
	if !reflect.DeepEqual(Effective(fs), Effective(fs2)) || *f2.lr != *f.lr {
		t.Errorf("%v\n%v", Effective(fs), Effective(fs2))
	}
}

func TestChecker(t *testing.T) {
	var c Checker
	c.Positive("lr", -1)
	c.NonNegative("weight-decay", 0)
	c.Range("clip-range-ratio", 1.5, 0, 1)
	c.PositiveInt("epochs", 0)
	c.OneOf("lr-scheduler", "cosin", "constant", "cosine")
	c.Required("model", "")
	c.Check(true, "never")
	err := c.Err()
	want := "--lr must be > 0, got -1\n--clip-range-ratio must be in [0, 1], got 1.5\n--epochs must be > 0, got 0\n" +
		"--lr-scheduler must be one of constant, cosine, got \"cosin\"\n--model is required"
	if err == nil || err.Error() != want {
		t.Errorf("got %q", err)
	}
	var ok Checker
	ok.Positive("lr", 1)
	if ok.Err() != nil {
		t.Error("unexpected error")
	}
}

// FuzzApply checks that no config file content panics Apply.
func FuzzApply(f *testing.F) {
	f.Add([]byte("lr: 2e-5\nepochs: 3\ndatasets: [a, b]\n"))
	f.Add([]byte(`{"lr": 1, "bf16": true}`))
	f.Add([]byte("a: &x 1\nlr: *x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs, _ := newFlags()
		fs.Parse(nil)
		Apply(fs, "fuzz.yaml", b)
	})
}
