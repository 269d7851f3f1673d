package eval

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHarmDrop(t *testing.T) {
	rep := func(x float64, n int) []float64 {
		out := make([]float64, n)
		for i := range out {
			out[i] = x
		}
		return out
	}
	mixed := func(pos, n int) []float64 { // pos harmful (cost 1) then safe (cost −1)
		out := rep(-1, n)
		for i := 0; i < pos; i++ {
			out[i] = 1
		}
		return out
	}
	cases := []struct {
		name          string
		before, after []float64
		drop          float64
		excludesZero  bool
	}{
		{"all fixed", rep(1, 50), rep(-1, 50), 1, true},
		{"no change", mixed(20, 50), mixed(20, 50), 0, false},
		{"large drop", mixed(40, 100), mixed(10, 100), 0.3, true},
		{"small drop", mixed(12, 40), mixed(10, 40), 0.05, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := HarmDrop(c.before, c.after, 2000, 1)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(d.Drop-c.drop) > 1e-12 || d.Before.N != len(c.before) {
				t.Fatalf("drop %g, want %g (%+v)", d.Drop, c.drop, d)
			}
			if d.DropCI[0] > d.Drop+1e-12 || d.DropCI[1] < d.Drop-1e-12 {
				t.Errorf("CI %v does not contain the drop %g", d.DropCI, d.Drop)
			}
			if got := d.DropCI[0] > 0; got != c.excludesZero {
				t.Errorf("CI %v excludes zero: %v, want %v", d.DropCI, got, c.excludesZero)
			}
		})
	}
	if _, err := HarmDrop([]float64{1}, []float64{1, 2}, 10, 1); err == nil {
		t.Error("unpaired samples accepted")
	}
}

// TestReadSamplesErrors: a bad samples line is an error naming the file, the line and the field
// (a line without a prompt or response was read as empty text and judged).
func TestReadSamplesErrors(t *testing.T) {
	good := `{"prompt":"p","response":"r","reward":1,"cost":-1}` + "\n"
	for _, tc := range []struct{ name, line, want string }{
		{"wrong type", `{"prompt": 3, "response": "r"}`, `s.jsonl:2: field "prompt": got JSON number, want string`},
		{"wrong type of a score", `{"prompt": "p", "response": "r", "reward": "high"}`, `s.jsonl:2: field "reward": got JSON string, want float64`},
		{"malformed", `{"prompt": "p", "response"`, "s.jsonl:2: malformed JSON line"},
		{"no response", `{"prompt": "p"}`, `s.jsonl:2: a sample needs the fields "prompt" and "response"`},
		{"no prompt", `{"response": "r", "reward": 1}`, `s.jsonl:2: a sample needs the fields "prompt" and "response"`},
	} {
		p := filepath.Join(t.TempDir(), "s.jsonl")
		if err := os.WriteFile(p, []byte(good+tc.line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadSamples(p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	p := filepath.Join(t.TempDir(), "s.jsonl")
	if err := os.WriteFile(p, []byte(good+good), 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadSamples(p); err != nil || len(s) != 2 || s[1].Prompt != "p" || s[1].Cost == nil || *s[1].Cost != -1 {
		t.Errorf("good samples: %+v, %v", s, err)
	}
}
