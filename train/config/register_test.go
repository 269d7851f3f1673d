package config

import (
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
)

type testConfig struct {
	LR     float64  `flag:"lr" help:"learning rate"`
	Steps  int      `flag:"max-steps" alias:"steps" help:"cap"`
	Data   []string `flag:"data" help:"data"`
	Out    string   `flag:"out" alias:"output" help:"out"`
	Resume bool     `flag:"resume" help:"resume"`
	Seed   uint64   `flag:"seed" help:"seed"`
	Reg    float64  `flag:"regularization" group:"score" help:"reg"`
	hidden int
	Plain  int
}

type outer struct {
	testConfig
	Backend string `flag:"backend" help:"backend"`
}

func parse(t *testing.T, args []string, groups ...string) (*outer, *flag.FlagSet, error) {
	t.Helper()
	c := &outer{testConfig: testConfig{LR: 2e-5, Steps: 0, Data: []string{"default.json"}, Seed: 42}, Backend: "go"}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	Register(fs, c, groups...)
	return c, fs, Parse(fs, args)
}

func TestRegister(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		groups  []string
		check   func(*outer) bool
		wantErr string
	}{
		{"defaults from the struct", nil, nil, func(c *outer) bool {
			return c.LR == 2e-5 && c.Seed == 42 && c.Backend == "go" && reflect.DeepEqual(c.Data, []string{"default.json"})
		}, ""},
		{"values", []string{"--lr", "0.5", "--max-steps", "3", "--resume", "--seed", "7", "--backend", "xla"}, nil, func(c *outer) bool {
			return c.LR == 0.5 && c.Steps == 3 && c.Resume && c.Seed == 7 && c.Backend == "xla"
		}, ""},
		{"alias", []string{"--steps", "4", "--output", "o"}, nil, func(c *outer) bool { return c.Steps == 4 && c.Out == "o" }, ""},
		{"list replaces the default, then accumulates", []string{"--data", "a,b", "--data", "c"}, nil, func(c *outer) bool {
			return reflect.DeepEqual(c.Data, []string{"a", "b", "c"})
		}, ""},
		{"repeated scalar", []string{"--lr", "1", "--lr", "2"}, nil, nil, "--lr given more than once"},
		{"alias and name", []string{"--steps", "1", "--max-steps", "2"}, nil, nil, "--max-steps given more than once"},
		{"nan", []string{"--lr", "NaN"}, nil, nil, "finite"},
		{"inf", []string{"--lr", "+Inf"}, nil, nil, "finite"},
		{"group off", []string{"--regularization", "1"}, nil, nil, "not defined"},
		{"group on", []string{"--regularization", "1"}, []string{"score"}, func(c *outer) bool { return c.Reg == 1 }, ""},
		{"untagged fields are not flags", []string{"--plain", "1"}, nil, nil, "not defined"},
	} {
		c, _, err := parse(t, tc.args, tc.groups...)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: err = %v, want %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !tc.check(c) {
			t.Errorf("%s: err %v, config %+v", tc.name, err, c)
		}
	}
}

func TestRegisterConfigFile(t *testing.T) {
	// A file key may be an old spelling; the command line (in either spelling) wins.
	p := write(t, "c.yaml", "steps: 9\nlr: 0.25\noutput: fromfile\ndata: [x, y]\n")
	c, fs, err := parse(t, []string{"--config", p, "--max-steps", "5"})
	if err != nil || c.Steps != 5 || c.LR != 0.25 || c.Out != "fromfile" || !reflect.DeepEqual(c.Data, []string{"x", "y"}) {
		t.Fatalf("err %v config %+v", err, c)
	}
	if !IsSet(fs, "max-steps") || !IsSet(fs, "lr") || IsSet(fs, "seed") {
		t.Errorf("IsSet wrong")
	}
	c, _, err = parse(t, []string{"--config", p, "--steps", "6"})
	if err != nil || c.Steps != 6 {
		t.Errorf("alias on the command line: err %v steps %d", err, c.Steps)
	}
	// The same setting twice in one file is an error even under two spellings.
	p = write(t, "d.yaml", "steps: 1\nmax-steps: 2\n")
	if _, _, err := parse(t, []string{"--config", p}); err == nil || !strings.Contains(err.Error(), "already set") {
		t.Errorf("duplicate key: %v", err)
	}
	// Effective lists canonical names only.
	_, fs, _ = parse(t, []string{"--steps", "3"})
	m := Effective(fs)
	if _, ok := m["steps"]; ok || m["max-steps"] != "3" || m["data"] != "default.json" {
		t.Errorf("effective = %v", m)
	}
}

func TestCheckerFinite(t *testing.T) {
	c := outer{}
	c.LR = 1
	var ck Checker
	ck.Finite(&c)
	if ck.Err() != nil {
		t.Fatal(ck.Err())
	}
	c.Reg = -1 / zero()
	ck.Finite(&c)
	if err := ck.Err(); err == nil || !strings.Contains(err.Error(), "--regularization must be finite") {
		t.Errorf("err = %v", err)
	}
}

func zero() float64 { return 0 }

// A flag defined directly on the flag set (not by Register) may not be repeated either.
func TestParsePlainFlagOnce(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	kind := fs.String("kind", "", "")
	quiet := fs.Bool("quiet", false, "")
	if err := Parse(fs, []string{"--kind", "sft", "--quiet"}); err != nil || *kind != "sft" || !*quiet {
		t.Fatalf("err %v kind %q quiet %v", err, *kind, *quiet)
	}
	fs = flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("kind", "", "")
	if err := Parse(fs, []string{"--kind", "sft", "--kind", "prompts"}); err == nil || !strings.Contains(err.Error(), "--kind given more than once") {
		t.Errorf("repeated: %v", err)
	}
}
