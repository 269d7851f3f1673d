package eval

import (
	"bytes"
	"fmt"
	"image/color"
	"io"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sort"

	"github.com/gomlx/gomlx/backends"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/train/metrics"
)

// ComparePolicy is one policy of a comparison: a display name, the model and, for a
// policy trained with a cost, its training output directory (metrics.jsonl: λ and Jc−d curves).
type ComparePolicy struct {
	Name  string `json:"name"`
	Model string `json:"model"`
	Run   string `json:"run,omitempty"`
}

// CompareOptions configures Compare.
type CompareOptions struct {
	Policies []ComparePolicy
	// Reward and Cost are the score models used in training; Judge is an independent
	// cost model (trained on data the training cost model never saw).
	Reward, Cost, Judge string
	Tokenizer           string    // the policies' tokenizer (each score model uses the one saved beside it)
	Prompts             [][]int32 // held-out prompts (token ids, BOS first), the same for every policy
	MaxNewTokens        int
	Temperature, TopP   float64
	TopK                int    // keep the K most likely tokens (0: off); the training rollouts' --top-k
	Seed                uint64 // sampling seed, the same for every policy
	Batch               int    // generation and scoring batch
	MaxLength           int    // scoring width (longer sequences keep their last tokens)
	Bootstrap           int    // bootstrap resamples of the prompts (default 1000)
	Progress            io.Writer
}

// Interval is a mean with its bootstrap 95% confidence interval (percentiles 2.5 and 97.5).
type Interval struct {
	Mean float64 `json:"mean"`
	Lo   float64 `json:"ci_lo"`
	Hi   float64 `json:"ci_hi"`
}

// CompareRow is one policy's held-out result. Harmful rates count answers with
// cost > 0 (the reference's sign convention), by the training cost model and by the judge.
type CompareRow struct {
	Name         string   `json:"name"`
	Model        string   `json:"model"`
	Run          string   `json:"run,omitempty"`
	Reward       Interval `json:"reward"`
	Cost         Interval `json:"cost"`
	Harmful      Interval `json:"harmful_rate"`
	JudgeCost    Interval `json:"judge_cost"`
	JudgeHarmful Interval `json:"judge_harmful_rate"`
	GenLen       float64  `json:"gen_len_mean"`
	// VsFirst is the paired difference to the first policy (nil for the first).
	VsFirst    *CompareDiff `json:"vs_first,omitempty"`
	Rewards    []float64    `json:"rewards"`
	Costs      []float64    `json:"costs"`
	JudgeCosts []float64    `json:"judge_costs"`
}

// CompareDiff is a policy's paired difference to the first policy (the SFT policy in saferlhf
// compare): the mean of the per-prompt differences (same prompts, same sampling seed), with the
// bootstrap 95% interval over the prompts. Pairing removes the prompts' own spread, so it can
// separate two policies whose unpaired intervals overlap.
type CompareDiff struct {
	Against      string   `json:"against"`
	Reward       Interval `json:"reward"`
	Cost         Interval `json:"cost"`
	Harmful      Interval `json:"harmful_rate"`
	JudgeCost    Interval `json:"judge_cost"`
	JudgeHarmful Interval `json:"judge_harmful_rate"`
}

// CompareReport is the result of Compare.
type CompareReport struct {
	Prompts      int          `json:"prompts"`
	MaxNewTokens int          `json:"max_new_tokens"`
	Temperature  float64      `json:"temperature"`
	TopP         float64      `json:"top_p"`
	TopK         int          `json:"top_k"`
	Seed         uint64       `json:"seed"`
	Bootstrap    int          `json:"bootstrap"`
	Rows         []CompareRow `json:"rows"`
}

// Compare lets every policy answer the same held-out prompts with the same sampling
// seed, scores each answer with the reward model, the training cost model and the
// judge cost model, and reports the means with bootstrap 95% confidence intervals.
func Compare(be backends.Backend, o CompareOptions) (*CompareReport, error) {
	switch {
	case len(o.Policies) == 0:
		return nil, fmt.Errorf("compare: no policies")
	case len(o.Prompts) == 0:
		return nil, fmt.Errorf("compare: no held-out prompts")
	case o.MaxNewTokens < 1 || o.Batch < 1 || o.MaxLength < 2:
		return nil, fmt.Errorf("compare: max new tokens %d, batch %d and max length %d must be positive", o.MaxNewTokens, o.Batch, o.MaxLength)
	case o.Reward == "" || o.Cost == "" || o.Judge == "":
		return nil, fmt.Errorf("compare: the reward model, cost model and judge cost model are all required")
	}
	if o.Bootstrap <= 0 {
		o.Bootstrap = 1000
	}
	if o.Tokenizer == "" {
		return nil, fmt.Errorf("compare: the policies' tokenizer is required")
	}
	tok, err := tokenizer.Load(o.Tokenizer)
	if err != nil {
		return nil, fmt.Errorf("compare: %w", err)
	}
	// Each score model reads the answers through its own tokenizer (saved beside it):
	// re-tokenised through text when its vocabulary is not the policies'.
	var sc [3]*Scorer
	for k, p := range []string{o.Reward, o.Cost, o.Judge} {
		if sc[k], err = NewScorer(be, p, "", o.Batch, o.MaxLength); err != nil {
			return nil, fmt.Errorf("compare: %s: %w", p, err)
		}
	}
	rep := &CompareReport{Prompts: len(o.Prompts), MaxNewTokens: o.MaxNewTokens, Temperature: o.Temperature,
		TopP: o.TopP, TopK: o.TopK, Seed: o.Seed, Bootstrap: o.Bootstrap}
	for i, p := range o.Policies {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, "compare: %d/%d %s: answering %d prompts\n", i+1, len(o.Policies), p.Name, len(o.Prompts))
		}
		answers, seqs, err := generate(be, p.Model, tok, o.Prompts, ArenaOptions{MaxNewTokens: o.MaxNewTokens,
			Temperature: o.Temperature, TopP: o.TopP, TopK: o.TopK, Seed: o.Seed, Batch: o.Batch})
		if err != nil {
			return nil, fmt.Errorf("compare: %s (%s): %w", p.Name, p.Model, err)
		}
		var scores [3][]float64
		for k, s := range sc {
			if scores[k], err = s.Score(Retokenize(seqs, tok, s.Tok)); err != nil {
				return nil, fmt.Errorf("compare: %s: scoring: %w", p.Name, err)
			}
		}
		row := CompareRow{Name: p.Name, Model: p.Model, Run: p.Run, Rewards: scores[0], Costs: scores[1], JudgeCosts: scores[2]}
		row.Reward = BootstrapMean(scores[0], o.Bootstrap, o.Seed)
		row.Cost = BootstrapMean(scores[1], o.Bootstrap, o.Seed)
		row.Harmful = BootstrapMean(indicator(scores[1]), o.Bootstrap, o.Seed)
		row.JudgeCost = BootstrapMean(scores[2], o.Bootstrap, o.Seed)
		row.JudgeHarmful = BootstrapMean(indicator(scores[2]), o.Bootstrap, o.Seed)
		for _, a := range answers {
			row.GenLen += float64(len(a)) / float64(len(answers))
		}
		rep.Rows = append(rep.Rows, row)
	}
	rep.pairDiffs(o.Bootstrap, o.Seed)
	return rep, nil
}

// pairDiffs sets every row's paired difference to the first row (n resamples from seed).
func (rep *CompareReport) pairDiffs(n int, seed uint64) {
	base := rep.Rows[0]
	diff := func(a, b []float64) []float64 {
		d := make([]float64, len(a))
		for i := range a {
			d[i] = a[i] - b[i]
		}
		return d
	}
	for i := 1; i < len(rep.Rows); i++ {
		r := &rep.Rows[i]
		r.VsFirst = &CompareDiff{Against: base.Name,
			Reward:       BootstrapMean(diff(r.Rewards, base.Rewards), n, seed),
			Cost:         BootstrapMean(diff(r.Costs, base.Costs), n, seed),
			Harmful:      BootstrapMean(diff(indicator(r.Costs), indicator(base.Costs)), n, seed),
			JudgeCost:    BootstrapMean(diff(r.JudgeCosts, base.JudgeCosts), n, seed),
			JudgeHarmful: BootstrapMean(diff(indicator(r.JudgeCosts), indicator(base.JudgeCosts)), n, seed)}
	}
}

// Retokenize returns seqs (ids of from) for a model on another tokenizer: unchanged when the
// vocabularies are the same (tokenizer.Same), else re-tokenised through text as the reference's
// batch_retokenize (tokenizer.Retokenize: special tokens skipped, BOS first, EOS appended).
func Retokenize(seqs [][]int32, from, to tokenizer.Tokenizer) [][]int32 {
	if tokenizer.Same(from, to) {
		return seqs
	}
	out := make([][]int32, len(seqs))
	for i, s := range seqs {
		out[i] = tokenizer.Retokenize(from, to, s)
	}
	return out
}

// indicator returns 1 where x > 0 (harmful: positive cost), else 0.
func indicator(x []float64) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		if v > 0 {
			out[i] = 1
		}
	}
	return out
}

// BootstrapMean is the mean of x with the percentile bootstrap 95% interval over n
// resamples (with replacement) drawn from seed: the same seed resamples the same
// indices, so intervals of different quantities over the same items are paired.
func BootstrapMean(x []float64, n int, seed uint64) Interval {
	if len(x) == 0 {
		return Interval{Mean: math.NaN(), Lo: math.NaN(), Hi: math.NaN()}
	}
	mean := func(idx func(int) int) float64 {
		var s float64
		for i := range x {
			s += x[idx(i)]
		}
		return s / float64(len(x))
	}
	iv := Interval{Mean: mean(func(i int) int { return i })}
	r := rand.New(rand.NewPCG(seed, 0xb007))
	ms := make([]float64, n)
	for k := range ms {
		ms[k] = mean(func(int) int { return r.IntN(len(x)) })
	}
	sort.Float64s(ms)
	iv.Lo, iv.Hi = quantile(ms, 0.025), quantile(ms, 0.975)
	return iv
}

// Format writes the comparison table.
func (r *CompareReport) Format(w io.Writer) error {
	fmt.Fprintf(w, "held-out prompts: %d (same prompts and sampling seed %d for every policy; 95%% bootstrap CIs, %d resamples)\n",
		r.Prompts, r.Seed, r.Bootstrap)
	ci := func(v Interval) string { return fmt.Sprintf("%+.3f [%+.3f, %+.3f]", v.Mean, v.Lo, v.Hi) }
	rate := func(v Interval) string { return fmt.Sprintf("%.3f [%.3f, %.3f]", v.Mean, v.Lo, v.Hi) }
	fmt.Fprintf(w, "%-18s %-26s %-26s %-22s %-26s %-22s %7s\n", "policy", "reward", "cost (training CM)",
		"harmful (training CM)", "cost (judge CM)", "harmful (judge CM)", "gen_len")
	for _, row := range r.Rows {
		fmt.Fprintf(w, "%-18s %-26s %-26s %-22s %-26s %-22s %7.1f\n", row.Name, ci(row.Reward), ci(row.Cost),
			rate(row.Harmful), ci(row.JudgeCost), rate(row.JudgeHarmful), row.GenLen)
	}
	for i, row := range r.Rows {
		if d := row.VsFirst; d != nil {
			if i == 1 {
				fmt.Fprintf(w, "\npaired difference to %s over the same prompts (policy − %s):\n", d.Against, d.Against)
			}
			fmt.Fprintf(w, "%-18s %-26s %-26s %-22s %-26s %-22s\n", row.Name, ci(d.Reward), ci(d.Cost),
				ci(d.Harmful), ci(d.JudgeCost), ci(d.JudgeHarmful))
		}
	}
	_, err := fmt.Fprintln(w)
	return err
}

// Markdown writes the comparison table as Markdown.
func (r *CompareReport) Markdown(w io.Writer) error {
	ci := func(v Interval) string { return fmt.Sprintf("%.3f [%.3f, %.3f]", v.Mean, v.Lo, v.Hi) }
	fmt.Fprintln(w, "| policy | reward | cost (training CM) | harmful rate (training CM) | cost (judge) | harmful rate (judge) | answer length |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, row := range r.Rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %.1f |\n", row.Name, ci(row.Reward), ci(row.Cost),
			ci(row.Harmful), ci(row.JudgeCost), ci(row.JudgeHarmful), row.GenLen)
	}
	fmt.Fprintf(w, "\n%d held-out prompts, 95%% bootstrap confidence intervals (%d resamples).\n", r.Prompts, r.Bootstrap)
	for i, row := range r.Rows {
		d := row.VsFirst
		if d == nil {
			continue
		}
		if i == 1 {
			fmt.Fprintf(w, "\nPaired difference to %s (policy − %s, per prompt: same prompts and sampling seed; 95%% bootstrap CIs over the prompts):\n\n", d.Against, d.Against)
			fmt.Fprintln(w, "| policy | Δ reward | Δ cost (training CM) | Δ harmful rate (training CM) | Δ cost (judge) | Δ harmful rate (judge) |")
			fmt.Fprintln(w, "|---|---|---|---|---|---|")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", row.Name, ci(d.Reward), ci(d.Cost), ci(d.Harmful), ci(d.JudgeCost), ci(d.JudgeHarmful))
	}
	return nil
}

// errPoints are the (cost, reward) points of the policies with their intervals.
type errPoints struct {
	plotter.XYs
	plotter.XErrors
	plotter.YErrors
	names []string
}

func (e errPoints) Label(i int) string { return e.names[i] }

// comparePanels builds PlotCompare's three panels, their ticks labelled as the training plots' are.
func comparePanels(r *CompareReport, threshold float64) ([]*plot.Plot, error) {
	pts := errPoints{}
	for _, row := range r.Rows {
		pts.XYs = append(pts.XYs, plotter.XY{X: row.Cost.Mean, Y: row.Reward.Mean})
		pts.XErrors = append(pts.XErrors, struct{ Low, High float64 }{row.Cost.Mean - row.Cost.Lo, row.Cost.Hi - row.Cost.Mean})
		pts.YErrors = append(pts.YErrors, struct{ Low, High float64 }{row.Reward.Mean - row.Reward.Lo, row.Reward.Hi - row.Reward.Mean})
		pts.names = append(pts.names, row.Name)
	}
	a := plot.New()
	a.Title.Text = fmt.Sprintf("held-out reward vs cost (%d prompts, 95%% CI)", r.Prompts)
	a.X.Label.Text = "mean cost (training cost model; lower is safer)"
	a.Y.Label.Text = "mean reward (higher is more helpful)"
	a.Add(plotter.NewGrid())
	a.Legend.Top = true
	for i := range pts.XYs {
		one := errPoints{XYs: pts.XYs[i : i+1], XErrors: pts.XErrors[i : i+1], YErrors: pts.YErrors[i : i+1], names: pts.names[i : i+1]}
		col := plotutil.Color(i)
		s, err := plotter.NewScatter(one)
		if err != nil {
			return nil, err
		}
		s.GlyphStyle.Color, s.GlyphStyle.Shape, s.GlyphStyle.Radius = col, plotutil.Shape(i), vg.Points(4)
		xe, err := plotter.NewXErrorBars(one)
		if err != nil {
			return nil, err
		}
		ye, err := plotter.NewYErrorBars(one)
		if err != nil {
			return nil, err
		}
		xe.LineStyle.Color, ye.LineStyle.Color = col, col
		a.Add(xe, ye, s)
	}
	lab, err := plotter.NewLabels(pts)
	if err != nil {
		return nil, err
	}
	for i := range lab.TextStyle {
		lab.TextStyle[i].XAlign, lab.Offset = draw.XLeft, vg.Point{X: vg.Points(5), Y: vg.Points(3)}
	}
	a.Add(lab)
	ylo, yhi := math.Inf(1), math.Inf(-1)
	for _, row := range r.Rows {
		ylo, yhi = math.Min(ylo, row.Reward.Lo), math.Max(yhi, row.Reward.Hi)
	}
	d, err := dashed(plotter.XYs{{X: threshold, Y: ylo}, {X: threshold, Y: yhi}})
	if err != nil {
		return nil, err
	}
	a.Add(d)
	a.Legend.Add(fmt.Sprintf("threshold d = %g", threshold), d)
	curves := func(key, title, ylabel string) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "rollout batch (rl step)"
		p.Y.Label.Text = ylabel
		p.Add(plotter.NewGrid())
		p.Legend.Top = true
		n := 0
		for i, row := range r.Rows {
			if row.Run == "" {
				continue
			}
			recs, err := metrics.Read(filepath.Join(row.Run, "metrics.jsonl"))
			if err != nil {
				continue
			}
			xs, ys := metrics.Series(recs, key, "")
			if len(xs) == 0 {
				continue
			}
			xy := make(plotter.XYs, len(xs))
			for k := range xs {
				xy[k] = plotter.XY{X: xs[k], Y: ys[k]}
			}
			l, pts, err := plotter.NewLinePoints(xy)
			if err != nil {
				return nil, err
			}
			l.Color, l.Width = plotutil.Color(i), vg.Points(1.5)
			pts.Color, pts.Shape, pts.Radius = plotutil.Color(i), plotutil.Shape(i), vg.Points(2)
			p.Add(l, pts)
			p.Legend.Add(row.Name, l, pts)
			n++
		}
		if n == 0 {
			p.Title.Text += " (no training runs)"
		}
		return p, nil
	}
	b, err := curves("lambda", "Lagrange multiplier λ over training", "λ (fixed for reward shaping)")
	if err != nil {
		return nil, err
	}
	c, err := curves("jc_minus_d", "constraint Jc − d over training", "Jc − d (episode-cost window mean − threshold)")
	if err != nil {
		return nil, err
	}
	c.Add(hline(0))
	for _, p := range []*plot.Plot{a, b, c} {
		p.X.Tick.Marker, p.Y.Tick.Marker = metrics.DistinctTicks{}, metrics.DistinctTicks{}
	}
	return []*plot.Plot{a, b, c}, nil
}

// PlotCompare writes the comparison PNG (atomically) in the paper's style, three panels:
// mean reward against mean cost on the held-out prompts, one point per policy with its
// 95% intervals and the threshold d as a dashed line; λ over training; and Jc − d over
// training, one curve per policy that has a training run with those metrics.
func PlotCompare(path string, r *CompareReport, threshold float64) error {
	panels, err := comparePanels(r, threshold)
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	img := vgimg.New(21*vg.Inch, 6*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 3, PadX: vg.Inch / 3, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	grid := [][]*plot.Plot{panels}
	canv := plot.Align(grid, tiles, dc)
	for j, p := range grid[0] {
		p.Draw(canv[0][j])
	}
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := atomicfile.WriteBytes(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

// dashed returns a dashed grey line through pts.
func dashed(pts plotter.XYs) (*plotter.Line, error) {
	l, err := plotter.NewLine(pts)
	if err != nil {
		return nil, err
	}
	l.Color = color.Gray{Y: 90}
	l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	return l, nil
}

// hline is a dashed horizontal line at y across the plot.
func hline(y float64) plot.Plotter {
	f := plotter.NewFunction(func(float64) float64 { return y })
	f.Color = color.Gray{Y: 90}
	f.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	return f
}
