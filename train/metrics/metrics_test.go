package metrics

import (
	"bytes"
	"fmt"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func writeRun(t *testing.T, w *Writer, from, to int) {
	t.Helper()
	for s := from; s <= to; s++ {
		if err := w.Write(s, map[string]float64{"loss": 1 / float64(s+1), "lr": 1e-5 * float64(s), "grad_norm": math.Sqrt(float64(s))}); err != nil {
			t.Fatal(err)
		}
		if s%3 == 0 {
			if err := w.WriteRecord(Record{Step: s, Values: map[string]float64{"loss": 0.1 * float64(s)}, Tags: map[string]string{"split": "eval"}}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestJSONLResumeIsByteIdentical(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full.jsonl")
	w, err := Create(full)
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, w, 0, 20)
	w.Close()

	// Interrupted run: checkpoint at step 9, killed during step 13 with a torn line.
	part := filepath.Join(dir, "part.jsonl")
	w, _ = Create(part)
	writeRun(t, w, 0, 12)
	w.f.WriteString(`{"step":13,"loss":0.0`)
	w.Close()
	w, err = Resume(part, 9)
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, w, 10, 20)
	w.Close()

	a, _ := os.ReadFile(full)
	b, _ := os.ReadFile(part)
	if !bytes.Equal(a, b) {
		t.Fatalf("resumed file differs:\n%s\n---\n%s", a, b)
	}
	recs, err := Read(full)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 21+7 {
		t.Fatalf("%d records", len(recs))
	}
	x, y := Series(recs, "loss", "split=eval")
	if len(x) != 7 || x[2] != 6 || math.Abs(y[2]-0.6) > 1e-15 {
		t.Errorf("eval series %v %v", x, y)
	}
	if !strings.HasPrefix(string(a), `{"step":0,"grad_norm":0,"loss":1,"lr":0}`+"\n") {
		t.Errorf("first line %q", strings.SplitN(string(a), "\n", 2)[0])
	}
}

// TestResumeDropsCrashTail: a resumed metrics file keeps the records up to the
// checkpoint whatever a crash left after them, and never glues or pads lines.
func TestResumeDropsCrashTail(t *testing.T) {
	var upTo4, later bytes.Buffer
	for s := 0; s <= 4; s++ {
		fmt.Fprintf(&upTo4, "{\"step\":%d,\"loss\":%d}\n", s, s)
	}
	for s := 5; s <= 6; s++ {
		fmt.Fprintf(&later, "{\"step\":%d,\"loss\":%d}\n", s, s)
	}
	for _, tc := range []struct {
		name, tail, err string
	}{
		{"clean", "", ""},
		{"later records", later.String(), ""},
		{"NUL padding", "\x00\x00\x00\x00\x00\x00", ""},
		{"NUL padding then newline", "\x00\x00\x00\n", ""},
		{"torn line", `{"step":5,"lo`, ""},
		{"torn line glued to a later record", `{"step":5,"lo{"step":6,"loss":6}` + "\n" + later.String(), ""},
		{"unreadable line before a kept record", "garbage\n{\"step\":3,\"loss\":3}\n", ":6: unreadable line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.jsonl")
			os.WriteFile(path, []byte(upTo4.String()+tc.tail), 0o644)
			w, err := Resume(path, 4)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := w.WriteJSON(struct {
				Step int     `json:"step"`
				Loss float64 `json:"loss"`
			}{5, 5}); err != nil {
				t.Fatal(err)
			}
			w.Close()
			got, _ := os.ReadFile(path)
			if want := upTo4.String() + `{"step":5,"loss":5}` + "\n"; string(got) != want {
				t.Fatalf("got %q\nwant %q", got, want)
			}
		})
	}
	// A missing file is created empty.
	w, err := Resume(filepath.Join(t.TempDir(), "new.jsonl"), 3)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	// WriteJSON refuses a value without a numeric step.
	if err := w.WriteJSON(map[string]int{"loss": 1}); err == nil {
		t.Error("record without step accepted")
	}
}

func TestRecordRoundTrip(t *testing.T) {
	r := Record{Step: 7, Values: map[string]float64{"a": 0.1, "b": math.NaN(), "c": -3e-300, "d": math.Inf(1)}, Tags: map[string]string{"split": "train"}}
	b, err := r.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"step":7,"a":0.1,"b":null,"c":-3e-300,"d":null,"split":"train"}` {
		t.Fatalf("%s", b)
	}
	var back Record
	if err := back.UnmarshalJSON(b); err != nil {
		t.Fatal(err)
	}
	if back.Step != 7 || back.Values["a"] != 0.1 || !math.IsNaN(back.Values["b"]) || back.Values["c"] != -3e-300 || back.Tags["split"] != "train" {
		t.Errorf("%+v", back)
	}
	if _, err := (Record{Values: map[string]float64{"step": 1}}).MarshalJSON(); err == nil {
		t.Error("reserved key accepted")
	}
}

func TestReadErrors(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.jsonl")
	os.WriteFile(p, []byte("{\"step\":1}\nnot json\n{\"step\":2}\n"), 0o644)
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "m.jsonl:2") {
		t.Errorf("error %v", err)
	}
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 200 {
		t.Errorf("%s: %v", path, b)
	}
}

func TestPlots(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "metrics.jsonl")
	w, _ := Create(p)
	writeRun(t, w, 0, 40)
	w.Close()
	files, err := PlotFile(p, filepath.Join(dir, "plots"), map[string][]string{
		"loss": {"loss", "loss@split=eval"}, "optim": {"lr", "grad_norm"}, "empty": {"nothing"},
	}, 0.8)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("files %v", files)
	}
	for _, f := range files {
		checkPNG(t, f)
	}
	files, err = PlotFile(p, filepath.Join(dir, "auto"), nil, 0)
	if err != nil || len(files) != 3 {
		t.Fatalf("auto groups: %v %v", files, err)
	}
	var safe, unsafe []float64
	for i := range 500 {
		safe = append(safe, -2+math.Sin(float64(i)))
		unsafe = append(unsafe, 1.5+math.Cos(float64(i)*0.7))
	}
	h := filepath.Join(dir, "costs.png")
	if err := PlotDensities(h, "cost model", "cost", []Sample{{"safe", safe}, {"unsafe", unsafe}}, 40, 0); err != nil {
		t.Fatal(err)
	}
	checkPNG(t, h)
	if err := PlotDensities(h, "x", "x", []Sample{{"nan", []float64{math.NaN()}}}, 10); err == nil {
		t.Error("no error for no finite values")
	}
}

func TestSmooth(t *testing.T) {
	got := Smooth([]float64{1, 1, 1, 5}, 0.5)
	// Debiased EMA: constant input stays constant; then (0.5·0.875 + 2.5)/0.9375.
	want := []float64{1, 1, 1, (0.5*0.875 + 2.5) / 0.9375}
	for i := range got {
		if math.Abs(got[i]-want[i]) > 1e-12 {
			t.Errorf("Smooth[%d] = %g, want %g", i, got[i], want[i])
		}
	}
}

func TestProgressLines(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress(10, 4, "sft", &buf)
	now := p.t0
	p.now = func() time.Time { return now }
	p.LogEvery = 10 * time.Second
	for s := 5; s <= 10; s++ {
		now = now.Add(4 * time.Second)
		p.Update(s, 0.5, 1000)
	}
	p.Finish()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// Logged at step 5 (first), 8 (12 s later) and 10 (the end).
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "sft step 5/10 loss 0.5 | 250 tok/s | ETA 20s") || !strings.Contains(lines[2], "step 10/10") {
		t.Fatalf("%q", lines)
	}
}

// FuzzRecord checks that any line either fails to parse or round-trips through MarshalJSON.
func FuzzRecord(f *testing.F) {
	f.Add([]byte(`{"step":7,"a":0.1,"b":null,"split":"train"}`))
	f.Add([]byte(`{"step":1e3}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Record
		if r.UnmarshalJSON(b) != nil {
			return
		}
		out, err := r.MarshalJSON()
		if err != nil {
			return // e.g. a key both value and tag cannot occur, but "step" clashes can
		}
		var back Record
		if err := back.UnmarshalJSON(out); err != nil {
			t.Fatalf("%s -> %s: %v", b, out, err)
		}
	})
}

// Tick labels read their ticks' values and never repeat, even on a narrow range that the
// default ticker rounds to equal labels.
func TestDistinctTicks(t *testing.T) {
	for _, r := range [][2]float64{{0.100001, 0.100004}, {1e-5, 1.00001e-5}, {123456.001, 123456.003}, {0, 1}, {-3, 250}, {5, 5}, {1, 96},
		{0, 150}, {0.43, 0.64}, {0, 112}} {
		seen := map[string]bool{}
		for _, tk := range (DistinctTicks{}).Ticks(r[0], r[1]) {
			if tk.Label == "" {
				continue
			}
			if v, err := strconv.ParseFloat(tk.Label, 64); err != nil || math.Abs(v-tk.Value) > 1e-6*math.Max(r[1]-r[0], 1) {
				t.Errorf("range %v: tick %v labelled %q", r, tk.Value, tk.Label)
			}
			if seen[tk.Label] {
				t.Errorf("range %v: tick label %q repeated", r, tk.Label)
			}
			if strings.Contains(tk.Label, "e") && math.Abs(tk.Value) >= 1e-4 && math.Abs(tk.Value) < 1e6 {
				t.Errorf("range %v: tick label %q in exponent notation (want plain decimals)", r, tk.Label)
			}
			seen[tk.Label] = true
		}
	}
}

// Curve plots label both axes and keep the legend clear of the curves.
func TestCurvesPlotLabels(t *testing.T) {
	p, err := curvesPlot("kl", "step", "kl, approx_kl", []Curve{{Name: "kl", X: []float64{0, 1, 2}, Y: []float64{0, 1, 2}}}, 0.6)
	if err != nil {
		t.Fatal(err)
	}
	if p.X.Label.Text != "step" || p.Y.Label.Text != "kl, approx_kl" {
		t.Errorf("labels %q, %q", p.X.Label.Text, p.Y.Label.Text)
	}
	if p.Y.Max <= 2 {
		t.Errorf("no headroom for the legend: y max %v", p.Y.Max)
	}
}
