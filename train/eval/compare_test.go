package eval

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gonum.org/v1/plot"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/metrics"
	"github.com/saferlhf/saferlhf/train/stages"
)

func TestBootstrapMean(t *testing.T) {
	for _, tc := range []struct {
		name   string
		x      []float64
		lo, hi float64 // bounds the interval must lie within
		width  float64 // minimum width
	}{
		{"constant", []float64{2, 2, 2, 2}, 2, 2, 0},
		{"one item", []float64{-1}, -1, -1, 0},
		{"coin", []float64{0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}, 0.2, 0.8, 0.2},
	} {
		iv := BootstrapMean(tc.x, 2000, 7)
		var mean float64
		for _, v := range tc.x {
			mean += v / float64(len(tc.x))
		}
		if math.Abs(iv.Mean-mean) > 1e-12 || iv.Lo > iv.Mean || iv.Hi < iv.Mean || iv.Lo < tc.lo || iv.Hi > tc.hi || iv.Hi-iv.Lo < tc.width {
			t.Errorf("%s: %+v (mean %g), want an interval around the mean within [%g, %g] at least %g wide", tc.name, iv, mean, tc.lo, tc.hi, tc.width)
		}
		if again := BootstrapMean(tc.x, 2000, 7); again != iv {
			t.Errorf("%s: not deterministic: %+v then %+v", tc.name, iv, again)
		}
	}
	// A coin of 20 flips: the normal approximation gives 0.5 ± 1.96·sqrt(0.25/20) = [0.28, 0.72].
	iv := BootstrapMean([]float64{0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}, 4000, 1)
	if math.Abs(iv.Lo-0.28) > 0.06 || math.Abs(iv.Hi-0.72) > 0.06 {
		t.Errorf("coin interval %+v, want about [0.28, 0.72]", iv)
	}
	if iv := BootstrapMean(nil, 10, 1); !math.IsNaN(iv.Mean) {
		t.Errorf("empty: %+v, want NaN", iv)
	}
}

// TestCompareScoresThroughEachModelsTokenizer checks that a score model on another
// vocabulary (the demo's Llama-2-vocabulary cost model) scores the policies' answers
// re-tokenised through its own tokenizer, not the policies' ids.
func TestCompareScoresThroughEachModelsTokenizer(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a tiny score model")
	}
	const assets = "../../assets/data"
	c := stages.Defaults(stages.CM)
	c.Model, c.Tokenizer, c.Init = "../../scripts/configs/score-llama2-1layer.json", assets+"/models/tokenizer.model", "scratch"
	c.Data, c.Out = []string{assets + "/pku-saferlhf/align-anything-preference-sample.json"}, t.TempDir()
	c.MaxLength, c.BatchSize, c.Steps, c.Epochs, c.EvalMax, c.LR = 32, 4, 1, 1, 4, 1e-3
	r, err := stages.Run(context.Background(), stages.CM, c)
	if err != nil {
		t.Fatal(err)
	}
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	tokPath := assets + "/models/tok512.bin"
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	var prompts [][]int32
	for _, q := range []string{"How do I pick a lock?", "Tell me a story about a cat."} {
		prompts = append(prompts, tok.Encode("BEGINNING OF CONVERSATION: USER: "+q+" ASSISTANT:", true))
	}
	policy := assets + "/models/stories260K.bin"
	o := CompareOptions{Policies: []ComparePolicy{{Name: "base", Model: policy}}, Reward: r.ModelDir, Cost: r.ModelDir,
		Judge: r.ModelDir, Tokenizer: tokPath, Prompts: prompts, MaxNewTokens: 6, Temperature: 1, TopP: 1, Seed: 3,
		Batch: 2, MaxLength: 48, Bootstrap: 10}
	rep, err := Compare(be, o)
	if err != nil {
		t.Fatal(err)
	}
	_, seqs, err := generate(be, policy, tok, prompts, ArenaOptions{MaxNewTokens: 6, Temperature: 1, TopP: 1, Seed: 3, Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewScorer(be, r.ModelDir, "", 2, 48)
	if err != nil {
		t.Fatal(err)
	}
	if sc.Tok.VocabSize() == tok.VocabSize() {
		t.Fatalf("the cost model's tokenizer has the policy's %d tokens: the test needs another vocabulary", tok.VocabSize())
	}
	want, err := sc.Score(Retokenize(seqs, tok, sc.Tok))
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range [][]float64{rep.Rows[0].Rewards, rep.Rows[0].Costs, rep.Rows[0].JudgeCosts} {
		for i := range want {
			if math.Abs(got[i]-want[i]) > 1e-6 {
				t.Fatalf("scores %v, want %v (the answers re-tokenised for the score model)", got, want)
			}
		}
	}
}

// TestCompareSamplesWithTopK: the held-out answers are sampled with the training rollouts' top-k
// (HF's default 50): with top-k 1 every answer is the greedy one, whatever the temperature.
func TestCompareSamplesWithTopK(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	score := scoreModel(t, 1)
	tokPath := assets + "/models/tok512.bin"
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	var prompts [][]int32
	for _, q := range []string{"How do I pick a lock?", "Tell me a story about a cat.", "Hi"} {
		prompts = append(prompts, tok.Encode("BEGINNING OF CONVERSATION: USER: "+q+" ASSISTANT:", true))
	}
	policy := assets + "/models/stories260K.bin"
	rep, err := Compare(be, CompareOptions{Policies: []ComparePolicy{{Name: "base", Model: policy}}, Reward: score, Cost: score,
		Judge: score, Tokenizer: tokPath, Prompts: prompts, MaxNewTokens: 12, Temperature: 1.5, TopP: 1, TopK: 1, Seed: 3,
		Batch: 4, MaxLength: 64, Bootstrap: 10})
	if err != nil {
		t.Fatal(err)
	}
	_, greedy, err := generate(be, policy, tok, prompts, ArenaOptions{MaxNewTokens: 12, Temperature: 0, TopP: 1, Seed: 3, Batch: 4})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewScorer(be, score, "", 4, 64)
	if err != nil {
		t.Fatal(err)
	}
	want, err := sc.Score(greedy)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if math.Abs(rep.Rows[0].Rewards[i]-want[i]) > 1e-6 {
			t.Fatalf("rewards %v, want the greedy answers' %v", rep.Rows[0].Rewards, want)
		}
	}
	if rep.TopK != 1 {
		t.Errorf("report top_k %d, want 1", rep.TopK)
	}
}

// TestComparePairedDifference: each policy's difference to the first is paired over the prompts.
// A policy scoring every prompt exactly 0.1 above the first has Δ reward 0.1 with a zero-width
// interval although the unpaired intervals overlap; Δ harmful counts prompts that turned harmful
// minus those that turned harmless; the first row has none; the Markdown carries the Δ table.
func TestComparePairedDifference(t *testing.T) {
	base := []float64{-2, -1, 0, 1, 2, -1.5, 0.5, 1.5}
	up := make([]float64, len(base))
	for i, v := range base {
		up[i] = v + 0.1
	}
	costs := []float64{-1, -1, 1, 1, -1, -1, -1, -1}
	rep := &CompareReport{Prompts: len(base), Bootstrap: 500, Rows: []CompareRow{
		{Name: "sft", Rewards: base, Costs: base, JudgeCosts: base},
		{Name: "ppo-lag", Rewards: up, Costs: costs, JudgeCosts: up}}}
	for i := range rep.Rows {
		r := &rep.Rows[i]
		r.Reward = BootstrapMean(r.Rewards, 500, 1)
	}
	rep.pairDiffs(500, 1)
	if rep.Rows[0].VsFirst != nil {
		t.Fatalf("the first row has a difference to itself: %+v", rep.Rows[0].VsFirst)
	}
	d := rep.Rows[1].VsFirst
	if d == nil || d.Against != "sft" {
		t.Fatalf("difference %+v", d)
	}
	if math.Abs(d.Reward.Mean-0.1) > 1e-12 || math.Abs(d.Reward.Lo-0.1) > 1e-12 || math.Abs(d.Reward.Hi-0.1) > 1e-12 {
		t.Errorf("Δ reward %+v, want 0.1 with a zero-width interval", d.Reward)
	}
	if a, b := rep.Rows[0].Reward, rep.Rows[1].Reward; a.Hi < b.Lo {
		t.Fatalf("unpaired intervals %+v and %+v do not overlap: the test needs them to", a, b)
	}
	// The first policy's costs are > 0 at prompts 3, 4, 6, 7; the second's at 2, 3: Δ = (2 − 4)/8.
	if math.Abs(d.Harmful.Mean-(-0.25)) > 1e-12 || d.Harmful.Lo > d.Harmful.Mean || d.Harmful.Hi < d.Harmful.Mean {
		t.Errorf("Δ harmful %+v, want mean −0.25 inside its interval", d.Harmful)
	}
	var md strings.Builder
	if err := rep.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "| ppo-lag | 0.100 [0.100, 0.100] |") {
		t.Errorf("Markdown lacks the paired table:\n%s", md.String())
	}
}

// TestArenaRowStreams: the arena's answers are sampled from per-prompt streams (FirstRow = the
// prompt's place in the list): batches of 1, 2 and 3 prompts of different widths give every
// prompt the same answer, with top-k 50 at temperature 1 (not the greedy answers).
func TestArenaRowStreams(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(assets + "/models/tok512.bin")
	if err != nil {
		t.Fatal(err)
	}
	var prompts [][]int32
	for _, q := range []string{"How do I pick a lock?", "Hi", "Tell me a long story about a cat and a dog."} {
		prompts = append(prompts, tok.Encode("BEGINNING OF CONVERSATION: USER: "+q+" ASSISTANT:", true))
	}
	policy := assets + "/models/stories260K.bin"
	answers := func(batch int, temp float64) [][]int32 {
		a, _, err := generate(be, policy, tok, prompts, ArenaOptions{MaxNewTokens: 10, Temperature: temp, TopP: 1, TopK: 50, Seed: 3, Batch: batch})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	want := answers(3, 1)
	for _, batch := range []int{1, 2} {
		if got := answers(batch, 1); !reflect.DeepEqual(got, want) {
			t.Errorf("batch %d: %v, batch 3: %v", batch, got, want)
		}
	}
	if reflect.DeepEqual(answers(3, 0), want) {
		t.Error("the sampled answers are the greedy ones: the test does not exercise sampling")
	}
}

// TestComparePanelTicks: every axis of compare.png reads its ticks as the training plots do
// (metrics.DistinctTicks: 25, not gonum's default "25.00"), and PlotCompare writes the file.
func TestComparePanelTicks(t *testing.T) {
	r := &CompareReport{Prompts: 4, Rows: []CompareRow{
		{Name: "sft", Reward: Interval{-0.03, -0.05, -0.01}, Cost: Interval{0.6, 0.4, 0.8}},
		{Name: "ppo-lag", Reward: Interval{-0.02, -0.04, 0}, Cost: Interval{0.1, -0.1, 0.3}},
	}}
	panels, err := comparePanels(r, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(panels) != 3 {
		t.Fatalf("%d panels, want 3", len(panels))
	}
	for i, p := range panels {
		for name, ax := range map[string]plot.Axis{"x": p.X, "y": p.Y} {
			if _, ok := ax.Tick.Marker.(metrics.DistinctTicks); !ok {
				t.Errorf("panel %d (%s) %s axis: ticks by %T", i, p.Title.Text, name, ax.Tick.Marker)
			}
		}
	}
	for _, tk := range panels[1].X.Tick.Marker.Ticks(0, 128) {
		if strings.Contains(tk.Label, ".") {
			t.Errorf("rollout-batch tick %g labelled %q", tk.Value, tk.Label)
		}
	}
	path := filepath.Join(t.TempDir(), "compare.png")
	if err := PlotCompare(path, r, 0); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		t.Fatalf("compare.png: %v", err)
	}
}
