// Package eval holds the evaluation statistics of saferlhf: Elo ratings from
// pairwise outcomes with bootstrap confidence intervals, win rates, and the
// arena's better/safer table and harmful rate (spec §8). Results are plain
// structs that marshal to JSON, with human-readable table formatters.
package eval

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"text/tabwriter"
)

// Battle is one pairwise comparison: ScoreA is 1 if A won, 0.5 for a tie, 0 if B won.
type Battle struct {
	A, B   string
	ScoreA float64
}

// BattlesFromScores turns per-prompt scores of two models into battles: A wins
// prompt i if its score is better (higher when higherIsBetter, e.g. reward;
// lower otherwise, e.g. cost), ties on equal scores.
func BattlesFromScores(nameA, nameB string, a, b []float64, higherIsBetter bool) ([]Battle, error) {
	if len(a) != len(b) {
		return nil, fmt.Errorf("eval: %s has %d scores, %s has %d", nameA, len(a), nameB, len(b))
	}
	out := make([]Battle, len(a))
	for i := range a {
		s := 0.5
		switch {
		case a[i] > b[i] == higherIsBetter && a[i] != b[i]:
			s = 1
		case a[i] != b[i]:
			s = 0
		}
		out[i] = Battle{A: nameA, B: nameB, ScoreA: s}
	}
	return out, nil
}

// EloConfig configures Elo.
type EloConfig struct {
	// Scale, Base and Init map Bradley–Terry strengths p to ratings
	// Init + Scale·log_Base(p). Without a prior the geometric mean of p is 1
	// (mean rating Init); with one, Init is the rating of the prior's virtual
	// opponent. Zero values mean 400, 10 and 1000.
	Scale, Base, Init float64
	// Prior adds, for every model, Prior won and Prior lost pseudo-games against a
	// virtual opponent of average strength, so that a model that won (or lost)
	// every game still gets a finite rating. 0 disables it.
	Prior float64
	// Bootstrap is the number of resamples of the battles for the confidence
	// intervals (0: none); CI is their level (default 0.95); Seed seeds them.
	Bootstrap int
	CI        float64
	Seed      uint64
	// MaxIter and Tol bound the MM iterations (defaults 10000 and 1e-10 relative change).
	MaxIter int
	Tol     float64
}

// DefaultEloConfig returns the usual Elo scale (400, base 10, mean 1000), a
// prior of 0.5 pseudo-games, and 1000 bootstrap resamples for 95% intervals.
func DefaultEloConfig() EloConfig {
	return EloConfig{Scale: 400, Base: 10, Init: 1000, Prior: 0.5, Bootstrap: 1000, CI: 0.95, Seed: 1}
}

// Rating is one model's Elo rating with its bootstrap interval and record.
type Rating struct {
	Model  string  `json:"model"`
	Elo    float64 `json:"elo"`
	Lo     float64 `json:"ci_lo"`
	Hi     float64 `json:"ci_hi"`
	Wins   int     `json:"wins"`
	Ties   int     `json:"ties"`
	Losses int     `json:"losses"`
}

// EloResult holds ratings (best first) and the pairwise win-rate matrix.
type EloResult struct {
	Method    string      `json:"method"`
	Ratings   []Rating    `json:"ratings"`
	Models    []string    `json:"models"`   // order of WinRate's rows and columns
	WinRate   [][]float64 `json:"win_rate"` // WinRate[i][j]: (wins + ties/2)/games of i against j; NaN-free: -1 when they never met
	Games     [][]int     `json:"games"`
	Battles   int         `json:"battles"`
	Bootstrap int         `json:"bootstrap"`
	CI        float64     `json:"ci_level"`
	Seed      uint64      `json:"seed"`
	Prior     float64     `json:"prior"`
}

// Elo fits Bradley–Terry strengths to the battles by maximum likelihood
// (Hunter's MM algorithm, ties counted as half a win for each side — the
// order of battles does not matter, unlike sequential Elo updates) and reports
// them on the Elo scale, with percentile bootstrap intervals from resampling
// the battles with replacement.
func Elo(battles []Battle, cfg EloConfig) (EloResult, error) {
	if cfg.Scale == 0 {
		cfg.Scale = 400
	}
	if cfg.Base == 0 {
		cfg.Base = 10
	}
	if cfg.Init == 0 {
		cfg.Init = 1000
	}
	if cfg.CI == 0 {
		cfg.CI = 0.95
	}
	if cfg.MaxIter == 0 {
		cfg.MaxIter = 10000
	}
	if cfg.Tol == 0 {
		cfg.Tol = 1e-10
	}
	if cfg.Prior < 0 || cfg.Bootstrap < 0 || cfg.CI <= 0 || cfg.CI >= 1 || cfg.Base <= 1 {
		return EloResult{}, fmt.Errorf("eval: bad Elo config %+v", cfg)
	}
	if len(battles) == 0 {
		return EloResult{}, errors.New("eval: no battles")
	}
	idx := map[string]int{}
	var models []string
	for i, b := range battles {
		if b.A == b.B {
			return EloResult{}, fmt.Errorf("eval: battle %d: model %q against itself", i, b.A)
		}
		if b.ScoreA != 0 && b.ScoreA != 0.5 && b.ScoreA != 1 {
			return EloResult{}, fmt.Errorf("eval: battle %d (%s vs %s): score %g is not 0, 0.5 or 1", i, b.A, b.B, b.ScoreA)
		}
		for _, m := range []string{b.A, b.B} {
			if _, ok := idx[m]; !ok {
				idx[m] = len(models)
				models = append(models, m)
			}
		}
	}
	sort.Strings(models)
	for i, m := range models {
		idx[m] = i
	}
	k := len(models)
	type pair struct {
		a, b int
		s    float64
	}
	ps := make([]pair, len(battles))
	for i, b := range battles {
		ps[i] = pair{idx[b.A], idx[b.B], b.ScoreA}
	}
	tally := func(sel func(yield func(pair))) (w, n [][]float64) {
		w, n = square(k), square(k)
		sel(func(p pair) {
			w[p.a][p.b] += p.s
			w[p.b][p.a] += 1 - p.s
			n[p.a][p.b]++
			n[p.b][p.a]++
		})
		return w, n
	}
	all := func(yield func(pair)) {
		for _, p := range ps {
			yield(p)
		}
	}
	w, n := tally(all)
	strength, err := fitBT(w, n, cfg)
	if err != nil {
		return EloResult{}, err
	}
	toElo := func(p float64) float64 { return cfg.Init + cfg.Scale*math.Log(p)/math.Log(cfg.Base) }

	res := EloResult{
		Method:    "Bradley-Terry MLE (MM algorithm), ties = half win; percentile bootstrap over battles",
		Models:    models,
		Battles:   len(battles),
		Bootstrap: cfg.Bootstrap,
		CI:        cfg.CI,
		Seed:      cfg.Seed,
		Prior:     cfg.Prior,
		WinRate:   make([][]float64, k),
		Games:     make([][]int, k),
	}
	for i := range k {
		res.WinRate[i] = make([]float64, k)
		res.Games[i] = make([]int, k)
		for j := range k {
			res.Games[i][j] = int(n[i][j])
			res.WinRate[i][j] = -1
			if n[i][j] > 0 {
				res.WinRate[i][j] = w[i][j] / n[i][j]
			}
		}
	}
	ratings := make([]Rating, k)
	for i, m := range models {
		e := toElo(strength[i])
		ratings[i] = Rating{Model: m, Elo: e, Lo: e, Hi: e} // Lo = Hi = Elo without bootstrap
	}
	for _, b := range battles {
		a, c := &ratings[idx[b.A]], &ratings[idx[b.B]]
		switch b.ScoreA {
		case 1:
			a.Wins++
			c.Losses++
		case 0:
			a.Losses++
			c.Wins++
		default:
			a.Ties++
			c.Ties++
		}
	}
	if cfg.Bootstrap > 0 {
		rng := rand.New(rand.NewPCG(cfg.Seed, 0x5afe41f))
		samples := make([][]float64, k)
		for range cfg.Bootstrap {
			bw, bn := tally(func(yield func(pair)) {
				for range ps {
					yield(ps[rng.IntN(len(ps))])
				}
			})
			s, err := fitBT(bw, bn, cfg)
			if err != nil {
				return EloResult{}, fmt.Errorf("eval: bootstrap: %w", err)
			}
			for i := range k {
				samples[i] = append(samples[i], toElo(s[i]))
			}
		}
		alpha := (1 - cfg.CI) / 2
		for i := range k {
			sort.Float64s(samples[i])
			ratings[i].Lo = quantile(samples[i], alpha)
			ratings[i].Hi = quantile(samples[i], 1-alpha)
		}
	}
	sort.SliceStable(ratings, func(i, j int) bool { return ratings[i].Elo > ratings[j].Elo })
	res.Ratings = ratings
	return res, nil
}

func square(k int) [][]float64 {
	m := make([][]float64, k)
	for i := range m {
		m[i] = make([]float64, k)
	}
	return m
}

// fitBT runs the MM iterations p_i ← W_i / Σ_j n_ij/(p_i+p_j) (Hunter 2004),
// with the prior's pseudo-games against a virtual opponent of strength 1
// (which then fixes the scale: rating Init is that opponent's); without a
// prior it renormalises the geometric mean of p to 1 after each iteration.
func fitBT(w, n [][]float64, cfg EloConfig) ([]float64, error) {
	k := len(w)
	p := make([]float64, k)
	for i := range p {
		p[i] = 1
	}
	wins := make([]float64, k)
	for i := range k {
		wins[i] = cfg.Prior
		for j := range k {
			wins[i] += w[i][j]
		}
	}
	if cfg.Prior == 0 {
		for i := range k {
			var games float64
			for j := range k {
				games += n[i][j]
			}
			if games > 0 && (wins[i] == 0 || wins[i] == games) {
				return nil, errors.New("a model won or lost every game: its Bradley-Terry MLE is infinite (use Prior > 0)")
			}
		}
	}
	next := make([]float64, k)
	for range cfg.MaxIter {
		for i := range k {
			den := 2 * cfg.Prior / (p[i] + 1)
			for j := range k {
				if n[i][j] > 0 {
					den += n[i][j] / (p[i] + p[j])
				}
			}
			if den == 0 {
				next[i] = p[i] // never played
				continue
			}
			next[i] = wins[i] / den
		}
		g := 1.0 // with a prior the virtual opponent (strength 1) fixes the scale
		if cfg.Prior == 0 {
			var lg float64
			for i := range k {
				lg += math.Log(next[i])
			}
			g = math.Exp(lg / float64(k))
		}
		change := 0.0
		for i := range k {
			v := next[i] / g
			change = math.Max(change, math.Abs(math.Log(v)-math.Log(p[i])))
			p[i] = v
		}
		if math.IsNaN(change) || math.IsInf(change, 0) {
			return nil, errors.New("Bradley-Terry fit diverged (a model won or lost every game? use a prior)")
		}
		if change < cfg.Tol {
			break
		}
	}
	return p, nil
}

// quantile of sorted xs with linear interpolation (numpy's default).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(xs)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(xs)-1)
	return xs[lo] + (pos-float64(lo))*(xs[hi]-xs[lo])
}

// Format writes the ratings and the win-rate matrix as aligned text tables.
func (r EloResult) Format(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Elo (%s; %d battles", r.Method, r.Battles)
	if r.Bootstrap > 0 {
		fmt.Fprintf(tw, ", %d resamples, %.0f%% CI, seed %d", r.Bootstrap, 100*r.CI, r.Seed)
	}
	fmt.Fprintln(tw, ")")
	fmt.Fprintln(tw, "rank\tmodel\tElo\tCI\tW\tT\tL\t")
	for i, x := range r.Ratings {
		ci := "-"
		if r.Bootstrap > 0 {
			ci = fmt.Sprintf("[%.0f, %.0f]", x.Lo, x.Hi)
		}
		fmt.Fprintf(tw, "%d\t%s\t%.0f\t%s\t%d\t%d\t%d\t\n", i+1, x.Model, x.Elo, ci, x.Wins, x.Ties, x.Losses)
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "win rate (row vs column)\t%s\t\n", strings.Join(r.Models, "\t"))
	for i, m := range r.Models {
		cells := make([]string, len(r.Models))
		for j := range r.Models {
			switch {
			case i == j:
				cells[j] = "-"
			case r.WinRate[i][j] < 0:
				cells[j] = "n/a"
			default:
				cells[j] = fmt.Sprintf("%.1f%% (%d)", 100*r.WinRate[i][j], r.Games[i][j])
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t\n", m, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}
