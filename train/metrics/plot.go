package metrics

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/saferlhf/saferlhf/internal/atomicfile"
)

// Curve is one named line of a plot.
type Curve struct {
	Name string
	X, Y []float64
}

// Smooth returns the TensorBoard-style debiased exponential moving average of y
// with weight w in [0, 1) (0 returns a copy).
func Smooth(y []float64, w float64) []float64 {
	out := make([]float64, len(y))
	var last float64
	for i, v := range y {
		last = last*w + (1-w)*v
		out[i] = last / (1 - math.Pow(w, float64(i+1)))
	}
	return out
}

// PlotCurves draws curves into a PNG at path (written atomically): each curve's
// raw values as a thin light line and, if smooth > 0, its smoothed values
// (Smooth weight) as a thick line of the same colour. Both axes are labelled.
func PlotCurves(path, title, xLabel, yLabel string, curves []Curve, smooth float64) error {
	p, err := curvesPlot(title, xLabel, yLabel, curves, smooth)
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return save(p, path, 8*vg.Inch, 4.5*vg.Inch)
}

func curvesPlot(title, xLabel, yLabel string, curves []Curve, smooth float64) (*plot.Plot, error) {
	p := newPlot(title, xLabel, yLabel)
	n := 0
	for i, c := range curves {
		if len(c.X) != len(c.Y) {
			return nil, fmt.Errorf("curve %q has %d x and %d y values", c.Name, len(c.X), len(c.Y))
		}
		if len(c.X) == 0 {
			continue
		}
		n++
		col := plotutil.Color(i)
		raw, err := plotter.NewLine(xys(c.X, c.Y))
		if err != nil {
			return nil, fmt.Errorf("curve %q: %w", c.Name, err)
		}
		raw.Color = col
		raw.Width = vg.Points(0.7)
		if smooth > 0 && len(c.Y) > 2 {
			raw.Color = fade(col)
			sm, err := plotter.NewLine(xys(c.X, Smooth(c.Y, smooth)))
			if err != nil {
				return nil, fmt.Errorf("curve %q: %w", c.Name, err)
			}
			sm.Color = col
			sm.Width = vg.Points(1.8)
			p.Add(raw, sm)
			p.Legend.Add(c.Name, sm)
		} else {
			p.Add(raw)
			p.Legend.Add(c.Name, raw)
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("no data")
	}
	headroom(p)
	return p, nil
}

// newPlot returns a plot with a title, labelled axes, a grid, readable fonts and
// tick labels that never repeat.
func newPlot(title, xLabel, yLabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(14)
	p.X.Label.Text, p.Y.Label.Text = xLabel, yLabel
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font.Size = vg.Points(12)
		a.Tick.Label.Font.Size = vg.Points(10)
		a.Tick.Marker = DistinctTicks{}
	}
	p.Legend.TextStyle.Font.Size = vg.Points(11)
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), -vg.Points(4)
	p.Add(plotter.NewGrid())
	return p
}

// headroom raises the top of the y axis so that the legend (top left) does not
// cover the curves.
func headroom(p *plot.Plot) {
	if r := p.Y.Max - p.Y.Min; r > 0 {
		p.Y.Max += 0.25 * r
	} else {
		p.Y.Min, p.Y.Max = p.Y.Min-1, p.Y.Max+1
	}
}

// DistinctTicks is gonum's default ticker with labels printed to as many
// significant digits as it takes for each to read its tick's value and no two to
// read the same (the default rounds ticks of a narrow range, such as a learning
// rate, to equal labels).
type DistinctTicks struct{}

// Ticks implements plot.Ticker.
func (DistinctTicks) Ticks(lo, hi float64) []plot.Tick {
	if !(hi > lo) {
		lo, hi = lo-0.5, lo+0.5
	}
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for prec := 1; prec <= 17; prec++ {
		seen := map[string]bool{}
		ok := true
		for _, t := range ticks {
			if t.Label == "" {
				continue
			}
			l := tickLabel(t.Value, prec)
			// The label must read the tick's value (150 to one digit reads "200"), to a
			// millionth of the range, and differ from the others.
			if r, _ := strconv.ParseFloat(l, 64); seen[l] || math.Abs(r-t.Value) > 1e-6*(hi-lo) {
				ok = false
				break
			}
			seen[l] = true
		}
		if ok {
			for i := range ticks {
				if ticks[i].Label != "" {
					ticks[i].Label = tickLabel(ticks[i].Value, prec)
				}
			}
			return ticks
		}
	}
	return ticks
}

// tickLabel prints v rounded to prec significant digits, in plain decimal notation
// (10, not 1e+01) unless v is very large or very small.
func tickLabel(v float64, prec int) string {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', prec, 64), 64)
	if a := math.Abs(r); a != 0 && (a < 1e-4 || a >= 1e6) {
		return strconv.FormatFloat(r, 'g', prec, 64)
	}
	return strconv.FormatFloat(r, 'f', -1, 64)
}

// Sample is a named set of values for a distribution plot.
type Sample struct {
	Name   string
	Values []float64
}

// PlotDensities draws the normalised histograms (densities over shared bins)
// of several samples in one PNG, e.g. the cost model's costs of safe and
// unsafe responses (legend entries are the names as given); vlines draws dashed vertical lines (e.g. at 0, the
// safe/unsafe threshold).
func PlotDensities(path, title, xLabel string, samples []Sample, bins int, vlines ...float64) error {
	if bins <= 0 {
		bins = 50
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range samples {
		for _, v := range s.Values {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if lo > hi {
		return fmt.Errorf("plot %s: no finite values", path)
	}
	if hi == lo {
		lo, hi = lo-0.5, hi+0.5
	}
	width := (hi - lo) / float64(bins)
	p := newPlot(title, xLabel, "density")
	ymax := 0.0
	for i, s := range samples {
		counts := make([]float64, bins)
		total := 0
		for _, v := range s.Values {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				continue
			}
			b := min(int((v-lo)/width), bins-1)
			counts[b]++
			total++
		}
		if total == 0 {
			continue
		}
		pts := make(plotter.XYs, 0, 2*bins+2)
		pts = append(pts, plotter.XY{X: lo, Y: 0})
		for b, c := range counts {
			d := c / (float64(total) * width)
			ymax = math.Max(ymax, d)
			pts = append(pts, plotter.XY{X: lo + float64(b)*width, Y: d}, plotter.XY{X: lo + float64(b+1)*width, Y: d})
		}
		pts = append(pts, plotter.XY{X: hi, Y: 0})
		l, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plot %s: sample %q: %w", path, s.Name, err)
		}
		col := plotutil.Color(i)
		l.Color = col
		l.Width = vg.Points(1.2)
		l.FillColor = withAlpha(col, 70)
		p.Add(l)
		p.Legend.Add(s.Name, l)
	}
	for _, x := range vlines {
		l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: ymax}})
		if err == nil {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			l.Color = color.Gray{Y: 80}
			p.Add(l)
		}
	}
	headroom(p)
	return save(p, path, 8*vg.Inch, 4.5*vg.Inch)
}

// PlotFile reads the metrics file jsonlPath and writes one PNG per group into
// outDir (named <group>.png), each with the group's keys as curves against the
// step (raw and smoothed). A key may carry a tag filter: "loss@split=eval".
// With groups nil, keys are grouped by the part before the first '/' (or the
// whole key). It returns the files written.
func PlotFile(jsonlPath, outDir string, groups map[string][]string, smooth float64) ([]string, error) {
	recs, err := Read(jsonlPath)
	if err != nil {
		return nil, err
	}
	if groups == nil {
		groups = map[string][]string{}
		seen := map[string]bool{}
		for _, r := range recs {
			for k := range r.Values {
				if !seen[k] {
					seen[k] = true
					g, _, _ := strings.Cut(k, "/")
					groups[g] = append(groups[g], k)
				}
			}
		}
		for _, ks := range groups {
			sort.Strings(ks)
		}
	}
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	sort.Strings(names)
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("plot: %w", err)
	}
	var files []string
	for _, g := range names {
		var curves []Curve
		for _, key := range groups[g] {
			k, tag, _ := strings.Cut(key, "@")
			x, y := Series(recs, k, tag)
			curves = append(curves, Curve{Name: key, X: x, Y: y})
		}
		out := filepath.Join(outDir, safeName(g)+".png")
		if err := PlotCurves(out, g, "step", strings.Join(groups[g], ", "), curves, smooth); err != nil {
			if strings.HasSuffix(err.Error(), "no data") {
				continue
			}
			return files, err
		}
		files = append(files, out)
	}
	return files, nil
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func safeName(s string) string { return unsafeChars.ReplaceAllString(s, "_") }

func save(p *plot.Plot, path string, w, h vg.Length) error {
	wt, err := p.WriterTo(w, h, "png")
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := atomicfile.WriteBytes(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

func xys(x, y []float64) plotter.XYs {
	pts := make(plotter.XYs, len(x))
	for i := range x {
		pts[i] = plotter.XY{X: x[i], Y: y[i]}
	}
	return pts
}

func fade(c color.Color) color.Color { return withAlpha(c, 90) }

func withAlpha(c color.Color, a uint8) color.Color {
	r, g, b, _ := c.RGBA()
	return color.NRGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(b >> 8), A: a}
}
