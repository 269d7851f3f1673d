package eval

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/gomlx/gomlx/backends"
	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/prefs"
	"github.com/saferlhf/saferlhf/train/metrics"
)

// CMReport is eval-cm's result (spec §8, evaluate/cost.py). Sign accuracy counts a
// labelled response as right when cost·safety_sign < 0 (cost > 0 means unsafe).
type CMReport struct {
	Model        string     `json:"model"`
	Data         []string   `json:"data"`
	Pairs        int        `json:"pairs"`
	Skipped      int        `json:"skipped"`
	Accuracy     float64    `json:"accuracy"` // frac(c_safer < c_unsafer)
	AccuracyCI   [2]float64 `json:"accuracy_ci95"`
	Labelled     int        `json:"labelled_responses"` // responses with a safety label (pairs and singles)
	SignAccuracy float64    `json:"sign_accuracy"`
	SignCI       [2]float64 `json:"sign_accuracy_ci95"`
	Mean         float64    `json:"cost_mean"`
	Std          float64    `json:"cost_std"`
	SafeN        int        `json:"safe_n"`
	SafeMean     float64    `json:"safe_cost_mean"`
	UnsafeN      int        `json:"unsafe_n"`
	UnsafeMean   float64    `json:"unsafe_cost_mean"`
	// UnsafeRecall is the fraction of unsafe-labelled responses with cost > 0.
	UnsafeRecall float64 `json:"unsafe_recall"`
	// BySource, ByCategory and BySeverity break the accuracies down by source file, by harm
	// category (PKU-SafeRLHF's 19, BeaverTails' 14; a pair counts under every category of either
	// response, a response under each of its own) and by PKU-SafeRLHF severity level (a pair under
	// the higher level of its two responses).
	BySource   []Group `json:"by_source,omitempty"`
	ByCategory []Group `json:"by_category,omitempty"`
	BySeverity []Group `json:"by_severity,omitempty"`
	// ByLabels breaks the accuracies down by the safety labels of the pair's two responses
	// (pairLabels; single responses are not counted): which of two safe, or of two unsafe, answers
	// is "safer" is a finer judgement than safe vs unsafe, and most PKU-SafeRLHF pairs are of those
	// two kinds.
	ByLabels []Group `json:"by_pair_labels,omitempty"`
	Plot     string  `json:"plot,omitempty"`
}

// respMeta is what the breakdowns need of one scored response.
type respMeta struct {
	source, category string
	severity         int
	// hasCategory: the source labels harm categories (PKU-SafeRLHF's current schema, BeaverTails),
	// so an empty category means "none"; hh-rlhf and the original PKU schema have no such labels.
	hasCategory, hasSeverity bool
}

// pairMeta returns the metadata of a pair's unsafer (hi) and safer (lo) responses, as BuildPair
// orders them for a cost model (hi = Answer unless Answer is the safer one).
func pairMeta(s datasets.RawSample) (hi, lo respMeta) {
	labelled := s.HasSeverity || s.Category != "" || s.OtherCategory != ""
	a := respMeta{sourceName(s.File), s.Category, s.Severity, labelled, s.HasSeverity}
	b := respMeta{sourceName(s.File), s.OtherCategory, s.OtherSeverity, labelled, s.HasSeverity}
	if s.Safer {
		return b, a
	}
	return a, b
}

// pairLabels names the kind of a pair from the cost signs of its unsafer (hi) and safer (lo)
// responses (+1 unsafe, −1 safe, 0 unlabelled).
func pairLabels(hi, lo float32) string {
	switch {
	case hi == 0 || lo == 0:
		return "unlabelled"
	case hi != lo:
		return "unsafe vs safe"
	case hi > 0:
		return "both unsafe"
	default:
		return "both safe"
	}
}

func severityName(m respMeta) string {
	if !m.hasSeverity {
		return ""
	}
	return fmt.Sprintf("severity %d", m.severity)
}

// EvalCM scores safety-preference pairs (and single labelled responses) with a cost
// model: accuracy, sign accuracy, cost statistics and the PNG of the cost
// distributions of safe vs unsafe responses.
func EvalCM(be backends.Backend, o Options) (*CMReport, error) {
	sc, err := NewScorer(be, o.Model, o.Tokenizer, o.Batch, o.MaxLength)
	if err != nil {
		return nil, err
	}
	r := &CMReport{Model: o.Model, Data: o.Data}
	var pairs []prefs.Pair
	var pairMetas [][2]respMeta
	var singles [][]int32
	var singleSign []float32
	var singleMetas []respMeta
	var raw []datasets.RawSample
	if ps, sk, ok, err := prefs.FromShards(o.Data, sc.Tok.Info(), o.MaxLength, true); err != nil {
		return nil, err
	} else if ok {
		if o.Limit > 0 && len(ps) > o.Limit {
			ps = ps[:o.Limit]
		}
		pairs, r.Skipped = ps, sk
		pairMetas = make([][2]respMeta, len(ps))
		for i := range pairMetas {
			pairMetas[i] = [2]respMeta{{source: sourceName("")}, {source: sourceName("")}}
		}
	} else if raw, err = loadSamples(o); err != nil {
		return nil, err
	}
	for _, s := range raw {
		if !s.HasOther {
			if s.IsSafe == datasets.SafetyUnknown {
				r.Skipped++
				continue
			}
			ids, err := prefs.Single(s, sc.Tok, o.MaxLength, o.Truncate)
			if err != nil {
				return nil, err
			}
			singles = append(singles, ids)
			singleSign = append(singleSign, -float32(s.IsSafe))
			singleMetas = append(singleMetas, respMeta{source: sourceName(s.File), category: s.Category, hasCategory: s.Category != ""})
			continue
		}
		p, ok, err := prefs.Build(s, sc.Tok, o.MaxLength, o.Truncate, true)
		if err != nil {
			return nil, err
		}
		if !ok {
			r.Skipped++
			continue
		}
		pairs = append(pairs, p)
		hi, lo := pairMeta(s)
		pairMetas = append(pairMetas, [2]respMeta{hi, lo})
	}
	if len(pairs) == 0 && len(singles) == 0 {
		return nil, fmt.Errorf("no usable samples in %v", o.Data)
	}
	unsafer, safer, err := scorePairs(sc, pairs)
	if err != nil {
		return nil, err
	}
	single, err := sc.Score(singles)
	if err != nil {
		return nil, err
	}
	r.Pairs = len(pairs)
	bySrc, byCat, bySev, byLab := groups{}, groups{}, groups{}, groups{}
	k := 0
	for i, p := range pairs {
		right := safer[i] < unsafer[i]
		if right {
			k++
		}
		hi, lo := pairMetas[i][0], pairMetas[i][1]
		bySrc.pair(hi.source, right)
		byLab.pair(pairLabels(p.HiSign, p.LoSign), right)
		if hi.hasCategory {
			byCat.pairCategories(hi.category, lo.category, right)
		}
		if hi.hasSeverity {
			bySev.pair(severityName(respMeta{severity: max(hi.severity, lo.severity), hasSeverity: true}), right)
		}
	}
	if len(pairs) > 0 {
		r.Accuracy, r.AccuracyCI = float64(k)/float64(len(pairs)), Wilson(k, len(pairs))
	}
	var all, safe, unsafe []float64
	right := 0
	add := func(cost float64, costSign float32, m respMeta, kind string) {
		all = append(all, cost)
		labelled, ok := costSign != 0, cost*float64(costSign) > 0 // cost·safety_sign < 0
		bySrc.response(m.source, cost, labelled, ok)
		if kind != "" {
			byLab.response(kind, cost, labelled, ok)
		}
		if m.hasCategory {
			for _, c := range harmNames(m.category) {
				byCat.response(c, cost, labelled, ok)
			}
		}
		if m.hasSeverity {
			bySev.response(severityName(m), cost, labelled, ok)
		}
		switch {
		case costSign < 0: // labelled safe
			safe = append(safe, cost)
		case costSign > 0:
			unsafe = append(unsafe, cost)
		default:
			return
		}
		if ok {
			right++
		}
	}
	for i, p := range pairs {
		kind := pairLabels(p.HiSign, p.LoSign)
		add(unsafer[i], p.HiSign, pairMetas[i][0], kind)
		add(safer[i], p.LoSign, pairMetas[i][1], kind)
	}
	for i, c := range single {
		add(c, singleSign[i], singleMetas[i], "")
	}
	r.BySource, r.ByCategory, r.BySeverity, r.ByLabels = bySrc.list(), byCat.list(), bySev.list(), byLab.list()
	r.Labelled, r.SafeN, r.UnsafeN = len(safe)+len(unsafe), len(safe), len(unsafe)
	if r.Labelled > 0 {
		r.SignAccuracy, r.SignCI = float64(right)/float64(r.Labelled), Wilson(right, r.Labelled)
	}
	r.Mean, r.Std = meanStd(all)
	if len(safe) > 0 {
		r.SafeMean, _ = meanStd(safe)
	}
	if len(unsafe) > 0 {
		r.UnsafeMean, _ = meanStd(unsafe)
		pos := 0
		for _, c := range unsafe {
			if c > 0 {
				pos++
			}
		}
		r.UnsafeRecall = float64(pos) / float64(len(unsafe))
	}
	if o.Out != "" {
		if err := os.MkdirAll(o.Out, 0o755); err != nil {
			return r, err
		}
		var samples []metrics.Sample
		if len(safe) > 0 {
			samples = append(samples, metrics.Sample{Name: fmt.Sprintf("safe (n=%d)", len(safe)), Values: safe})
		}
		if len(unsafe) > 0 {
			samples = append(samples, metrics.Sample{Name: fmt.Sprintf("unsafe (n=%d)", len(unsafe)), Values: unsafe})
		}
		if len(samples) == 0 {
			samples = append(samples, metrics.Sample{Name: fmt.Sprintf("all (n=%d, unlabelled)", len(all)), Values: all})
		}
		r.Plot = filepath.Join(o.Out, "cost-distributions.png")
		if err := metrics.PlotDensities(r.Plot, "cost model: costs of safe vs unsafe responses", "cost (> 0: unsafe)", samples, 30, 0); err != nil {
			return r, err
		}
		if err := writeJSON(filepath.Join(o.Out, "eval-cm.json"), r); err != nil {
			return r, err
		}
		if err := writeJSON(filepath.Join(o.Out, "cm-scores.json"), map[string][]float64{"safe": safe, "unsafe": unsafe, "safer": safer, "unsafer": unsafer}); err != nil {
			return r, err
		}
	}
	return r, nil
}

// Format writes the human-readable report.
func (r *CMReport) Format(w io.Writer) error {
	_, err := fmt.Fprintf(w, "cost model %s on %d pairs (%d skipped), %d labelled responses\n"+
		"  accuracy       %.4f  (95%% CI %.4f–%.4f)  c_safer < c_unsafer\n"+
		"  sign accuracy  %.4f  (95%% CI %.4f–%.4f)  cost·safety_sign < 0\n"+
		"  cost           mean %.4f  std %.4f\n"+
		"  safe  (n=%d)   mean cost %.4f\n  unsafe (n=%d)  mean cost %.4f, %.1f%% with cost > 0\n",
		r.Model, r.Pairs, r.Skipped, r.Labelled, r.Accuracy, r.AccuracyCI[0], r.AccuracyCI[1],
		r.SignAccuracy, r.SignCI[0], r.SignCI[1], r.Mean, r.Std, r.SafeN, r.SafeMean, r.UnsafeN, r.UnsafeMean, 100*r.UnsafeRecall)
	for _, b := range []struct {
		title string
		gs    []Group
	}{{"source", r.BySource}, {"harm category", r.ByCategory}, {"severity level", r.BySeverity}, {"pair labels", r.ByLabels}} {
		if err == nil && len(b.gs) > 0 {
			err = formatGroups(w, b.title, b.gs, true)
		}
	}
	if err == nil && r.Plot != "" {
		_, err = fmt.Fprintf(w, "  distributions: %s\n", r.Plot)
	}
	return err
}
