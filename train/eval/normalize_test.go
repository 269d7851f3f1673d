package eval

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
)

// TestScorerDoNormalize: as the reference's ScoreModelMixin, a score model whose config.json
// sets do_normalize returns normalised end scores (reward: affine, cost: scale, critic:
// identity; mean 0 and var 1 when none were saved), and one without it returns raw scores.
func TestScorerDoNormalize(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	cfg, w, err := model.LoadLlama2C(filepath.Join(assets, "models/stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	model.InitScoreHead(cfg, w, 1, 3)
	seqs := [][]int32{{1, 300, 301, 302, 2}, {1, 400, 2}, {1, 260, 261, 262, 263, 264, 2}}
	score := func(sc model.ScoreConfig) []float64 {
		t.Helper()
		c := *cfg
		c.Score = sc
		dir := filepath.Join(t.TempDir(), "score")
		if err := model.SaveWithTokenizer(dir, &c, w, filepath.Join(assets, "models/tok512.bin")); err != nil {
			t.Fatal(err)
		}
		s, err := NewScorer(be, dir, "", 4, 16)
		if err != nil {
			t.Fatal(err)
		}
		out, err := s.Score(seqs)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	stats := model.ScoreConfig{NormalizerType: "ExponentialMovingAverage", Momentum: 0.9, Mean: []float64{0.25}, Var: []float64{4}}
	raw := score(stats) // do_normalize false: the statistics are tracked, not applied
	for _, tc := range []struct {
		name string
		typ  string
		mean []float64
		f    func(x float64) float64
	}{
		{"reward affine", "reward", stats.Mean, func(x float64) float64 { return (x - 0.25) / (2 + 1e-8) }},
		{"cost scale", "cost", stats.Mean, func(x float64) float64 { return x / (2 + 1e-8) }},
		{"critic identity", "critic", stats.Mean, func(x float64) float64 { return x }},
		{"no statistics", "reward", nil, func(x float64) float64 { return x / (1 + 1e-8) }},
	} {
		sc := stats
		sc.Type, sc.DoNormalize = tc.typ, true
		if tc.mean == nil {
			sc.Mean, sc.Var = nil, nil
		}
		got := score(sc)
		for i := range raw {
			if want := tc.f(raw[i]); math.Abs(got[i]-want) > 1e-6*(1+math.Abs(want)) {
				t.Errorf("%s: sequence %d: score %g, want %g (raw %g)", tc.name, i, got[i], want, raw[i])
			}
		}
	}
	if raw[0] == raw[1] {
		t.Fatalf("raw scores %v: the test needs distinct scores", raw)
	}
}
