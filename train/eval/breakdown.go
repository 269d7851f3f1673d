package eval

import (
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
)

// Group is one row of an accuracy breakdown (by source file, harm category or severity level):
// pair accuracy over the pairs in the group and sign accuracy over its labelled responses, each
// with a Wilson 95% interval.
type Group struct {
	Name         string     `json:"name"`
	Pairs        int        `json:"pairs"`
	Accuracy     float64    `json:"accuracy"`
	AccuracyCI   [2]float64 `json:"accuracy_ci95"`
	Labelled     int        `json:"labelled_responses,omitempty"`
	SignAccuracy float64    `json:"sign_accuracy,omitempty"`
	SignCI       [2]float64 `json:"sign_accuracy_ci95,omitempty"`
	MeanScore    float64    `json:"mean_score"` // mean cost (eval-cm) or reward (eval-rm) of the group's responses

	right, signRight, scores int
	sum                      float64
}

// groups accumulates Groups by name.
type groups map[string]*Group

func (gs groups) get(name string) *Group {
	g, ok := gs[name]
	if !ok {
		g = &Group{Name: name}
		gs[name] = g
	}
	return g
}

// pair counts a pair of group name as right or not.
func (gs groups) pair(name string, right bool) {
	g := gs.get(name)
	g.Pairs++
	if right {
		g.right++
	}
}

// pairCategories counts a pair under every harm category of either response ("(none)" when
// neither has one).
func (gs groups) pairCategories(hi, lo string, right bool) {
	cats := map[string]bool{}
	for _, c := range append(harmNames(hi), harmNames(lo)...) {
		cats[c] = true
	}
	if len(cats) > 1 {
		delete(cats, "(none)")
	}
	for c := range cats {
		gs.pair(c, right)
	}
}

// response counts one scored response; labelled responses also count for sign accuracy.
func (gs groups) response(name string, score float64, labelled, right bool) {
	g := gs.get(name)
	g.scores++
	g.sum += score
	if labelled {
		g.Labelled++
		if right {
			g.signRight++
		}
	}
}

// list returns the groups sorted by name with their rates and intervals filled in.
func (gs groups) list() []Group {
	out := make([]Group, 0, len(gs))
	for _, g := range gs {
		if g.Pairs > 0 {
			g.Accuracy, g.AccuracyCI = float64(g.right)/float64(g.Pairs), Wilson(g.right, g.Pairs)
		}
		if g.Labelled > 0 {
			g.SignAccuracy, g.SignCI = float64(g.signRight)/float64(g.Labelled), Wilson(g.signRight, g.Labelled)
		}
		if g.scores > 0 {
			g.MeanScore = g.sum / float64(g.scores)
		}
		out = append(out, *g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// sourceName names a sample's source in breakdowns: its file's base name.
func sourceName(file string) string {
	if file == "" {
		return "(shards)"
	}
	return filepath.Base(file)
}

// harmNames splits a ";"-joined category list ("" : none).
func harmNames(c string) []string {
	if c == "" {
		return []string{"(none)"}
	}
	return strings.Split(c, ";")
}

// formatGroups writes a breakdown as an aligned table (sign columns when withSign).
func formatGroups(w io.Writer, title string, gs []Group, withSign bool) error {
	if len(gs) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  by %s\tpairs\taccuracy (95%% CI)", title)
	if withSign {
		fmt.Fprint(tw, "\tresponses\tsign accuracy (95% CI)")
	}
	fmt.Fprint(tw, "\tmean score\n")
	for _, g := range gs {
		acc := "—"
		if g.Pairs > 0 {
			acc = fmt.Sprintf("%.3f (%.3f–%.3f)", g.Accuracy, g.AccuracyCI[0], g.AccuracyCI[1])
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s", g.Name, g.Pairs, acc)
		if withSign {
			sign := "—"
			if g.Labelled > 0 {
				sign = fmt.Sprintf("%.3f (%.3f–%.3f)", g.SignAccuracy, g.SignCI[0], g.SignCI[1])
			}
			fmt.Fprintf(tw, "\t%d\t%s", g.Labelled, sign)
		}
		fmt.Fprintf(tw, "\t%+.3f\n", g.MeanScore)
	}
	return tw.Flush()
}
