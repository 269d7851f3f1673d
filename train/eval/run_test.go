package eval

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
)

const assets = "../../assets/data"

// scoreModel saves stories260K with a fresh score head (what train-rm starts from)
// as an HF directory with its tokenizer.
func scoreModel(t *testing.T, seed uint64) string {
	t.Helper()
	cfg, w, err := model.LoadLlama2C(filepath.Join(assets, "models/stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	model.InitScoreHead(cfg, w, 1, seed)
	dir := filepath.Join(t.TempDir(), "score")
	if err := model.SaveWithTokenizer(dir, cfg, w, filepath.Join(assets, "models/tok512.bin")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestEvalRMAndCM(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	dir := scoreModel(t, 1)
	out := t.TempDir()
	o := Options{Model: dir, Data: []string{filepath.Join(assets, "helpful/hh-rlhf-helpful-base-test.jsonl.gz")},
		MaxLength: 48, Truncate: "prompt-left", Batch: 16, Limit: 40, Seed: 42, Out: out}
	rm, err := EvalRM(be, o)
	if err != nil {
		t.Fatal(err)
	}
	if rm.Pairs+rm.Skipped != 40 || rm.Accuracy < 0 || rm.Accuracy > 1 || rm.Std <= 0 || math.IsNaN(rm.Mean) {
		t.Fatalf("eval-rm report %+v", rm)
	}
	var scores map[string][]float64
	b, _ := os.ReadFile(filepath.Join(out, "rm-scores.json"))
	if err := json.Unmarshal(b, &scores); err != nil || len(scores["better"]) != rm.Pairs {
		t.Fatalf("rm-scores.json: %v, %d better scores for %d pairs", err, len(scores["better"]), rm.Pairs)
	}
	// Accuracy recomputed from the saved scores.
	k := 0
	for i := range scores["better"] {
		if scores["better"][i] > scores["worse"][i] {
			k++
		}
	}
	if got := float64(k) / float64(rm.Pairs); got != rm.Accuracy {
		t.Fatalf("accuracy %g, saved scores give %g", rm.Accuracy, got)
	}

	o.Data = []string{filepath.Join(assets, "pku-saferlhf/align-anything-preference-sample.json"),
		filepath.Join(assets, "beavertails/artkit-beavertails-30k_train-unsafe-sample.csv"),
		"pku-saferlhf:0.1:" + filepath.Join(assets, "pku-saferlhf/pku-saferlhf-train-head500.jsonl")}
	o.Limit = 0
	cm, err := EvalCM(be, o)
	if err != nil {
		t.Fatal(err)
	}
	// 32 PKU pairs (some rejected as inconsistent) + 140 unsafe BeaverTails answers.
	if cm.Pairs == 0 || cm.UnsafeN < 140 || cm.SafeN == 0 || cm.Labelled != cm.SafeN+cm.UnsafeN {
		t.Fatalf("eval-cm report %+v", cm)
	}
	if st, err := os.Stat(cm.Plot); err != nil || st.Size() < 1000 {
		t.Fatalf("cost distribution plot: %v", err)
	}
	// The breakdowns: sources partition the pairs and the labelled responses and reproduce the
	// overall accuracies; the 50 rows of the current PKU schema carry severity levels and harm categories.
	var pairs, labelled int
	var right, signRight float64
	for _, g := range cm.BySource {
		pairs += g.Pairs
		labelled += g.Labelled
		right += g.Accuracy * float64(g.Pairs)
		signRight += g.SignAccuracy * float64(g.Labelled)
	}
	if len(cm.BySource) != 3 || pairs != cm.Pairs || labelled != cm.Labelled ||
		math.Abs(right-cm.Accuracy*float64(cm.Pairs)) > 1e-6 || math.Abs(signRight-cm.SignAccuracy*float64(cm.Labelled)) > 1e-6 {
		t.Fatalf("by source %+v does not partition %d pairs / %d labelled responses", cm.BySource, cm.Pairs, cm.Labelled)
	}
	sevPairs, sevResp := 0, 0
	for _, g := range cm.BySeverity {
		sevPairs += g.Pairs
		sevResp += g.Labelled
	}
	if sevPairs == 0 || sevPairs > 50 || sevResp != 2*sevPairs {
		t.Errorf("by severity: %d pairs, %d responses (want ≤ 50 pairs of the new schema, 2 responses each)", sevPairs, sevResp)
	}
	// The pair-label kinds partition the pairs; the 32 + 50 PKU rows hold pairs of each kind.
	kinds := map[string]int{}
	labPairs := 0
	for _, g := range cm.ByLabels {
		kinds[g.Name] = g.Pairs
		labPairs += g.Pairs
		if g.Labelled != 2*g.Pairs {
			t.Errorf("pair labels %s: %d labelled responses for %d pairs", g.Name, g.Labelled, g.Pairs)
		}
	}
	if labPairs != cm.Pairs || kinds["unsafe vs safe"] == 0 || kinds["both unsafe"] == 0 || kinds["both safe"] == 0 || len(kinds) != 3 {
		t.Errorf("by pair labels %+v does not partition the %d pairs into the three kinds", cm.ByLabels, cm.Pairs)
	}
	cats := map[string]Group{}
	for _, g := range cm.ByCategory {
		cats[g.Name] = g
	}
	// Only sources that label harm categories count: the 32 original-schema rows are not "(none)".
	if cats["(none)"].Labelled == 0 || len(cats) < 5 || cats["(none)"].Pairs > sevPairs {
		t.Errorf("by category: %v", cm.ByCategory)
	}
	b, _ = os.ReadFile(filepath.Join(out, "eval-cm.json"))
	var js map[string]any
	if err := json.Unmarshal(b, &js); err != nil || js["by_category"] == nil || js["by_severity"] == nil || js["by_source"] == nil || js["by_pair_labels"] == nil {
		t.Errorf("eval-cm.json lacks the breakdowns: %v", err)
	}
}

func TestRunArena(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(assets, "models/stories260K.bin")
	o := ArenaOptions{Red: base, Blue: base, RedName: "base-a", BlueName: "base-b", Reward: scoreModel(t, 1), Cost: scoreModel(t, 2),
		Prompts: []string{filepath.Join(assets, "eval/safe-rlhf-gpt4-problems.json")}, Limit: 6, MaxNewTokens: 8,
		Temperature: 1, Seed: 3, Batch: 4, MaxLength: 256, Bootstrap: 50, Out: t.TempDir()}
	r, err := RunArena(be, o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Arena.N != 6 || len(r.Samples) != 6 || len(r.EloReward.Ratings) != 2 || len(r.EloCost.Ratings) != 2 {
		t.Fatalf("arena report: n %d, %d samples, %d/%d ratings", r.Arena.N, len(r.Samples), len(r.EloReward.Ratings), len(r.EloCost.Ratings))
	}
	if r.Arena.BetterSafe+r.Arena.BetterUnsafe+r.Arena.WorseSafe+r.Arena.WorseUnsafe != 6 {
		t.Fatalf("2×2 counts do not add up: %+v", r.Arena)
	}
	// Same model, different sampling seeds per corner? Both corners use the same seed here,
	// so they answer identically and every comparison is a tie.
	for _, s := range r.Samples {
		if s.Red != s.Blue || s.RedReward != s.BlueReward {
			t.Fatalf("identical policies and seeds gave different answers: %+v", s)
		}
	}
	if _, err := os.Stat(filepath.Join(o.Out, "arena.json")); err != nil {
		t.Fatal(err)
	}
}

// TestRunArenaRetokenizedTotalLength: the arena's defaults follow the reference's (PKU-SafeRLHF
// rows, max_length = prompt + answer); a cost model on the Llama-2 32K vocabulary scores the
// stories260K policies' answers re-tokenised through text, exactly as its Scorer scores
// tokenizer.Retokenize of each sequence.
func TestRunArenaRetokenizedTotalLength(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	llama := filepath.Join(assets, "models/tokenizer.model")
	ltok, err := tokenizer.Load(llama)
	if err != nil {
		t.Fatal(err)
	}
	ccfg := &model.Config{Architecture: "LlamaForScore", ModelType: "llama", HiddenSize: 16, IntermediateSize: 32,
		NumLayers: 1, NumHeads: 2, NumKVHeads: 2, VocabSize: ltok.VocabSize(), MaxPositions: 512, RMSNormEps: 1e-5,
		RopeTheta: 10000, BOS: 1, EOS: 2, Pad: -1}
	w := model.RandomWeights(ccfg, 3)
	model.InitScoreHead(ccfg, w, 1, 4)
	cm := filepath.Join(t.TempDir(), "cm32k")
	if err := model.SaveWithTokenizer(cm, ccfg, w, llama); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(assets, "models/stories260K.bin")
	o := ArenaOptions{Red: base, Blue: base, Reward: scoreModel(t, 1), Cost: cm,
		Prompts: []string{"pku-saferlhf:" + filepath.Join(assets, "pku-saferlhf/align-anything-preference-sample.json")},
		Limit:   3, Temperature: 1, Seed: 3, Batch: 3, Bootstrap: 10}
	small, err := tokenizer.Load(filepath.Join(assets, "models/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	_, ids, err := loadArenaPrompts(o.Prompts, small, o.Seed, 3)
	if err != nil {
		t.Fatal(err)
	}
	width := 0
	for _, p := range ids {
		width = max(width, len(p))
	}
	o.MaxLength = width + 5 // room for five answer tokens
	r, err := RunArena(be, o)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := NewScorer(be, cm, llama, 4, o.MaxLength)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range r.Samples {
		ans := small.Encode(s.Red, false)
		if len(ans) > 5+1 {
			t.Errorf("answer %d has %d tokens, want ≤ max_length − prompt width = 5", i, len(ans))
		}
		seq := append(append([]int32(nil), ids[i]...), ans...)
		want, err := sc.Score([][]int32{tokenizer.Retokenize(small, ltok, seq)})
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(want[0]-s.RedCost) > 1e-4 {
			t.Errorf("sample %d: cost %g, want %g (the cost model on the re-tokenised text)", i, s.RedCost, want[0])
		}
	}
}

// TestScorerBatchWiderThanData: a --batch-size beyond the data scores the same as a small one
// (the batch is never wider than the rows: --batch-size 1e8 ran out of memory).
func TestScorerBatchWiderThanData(t *testing.T) {
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	dir := scoreModel(t, 1)
	seqs := [][]int32{{1, 403, 407}, {1, 261, 378, 2}, {1, 5}}
	var want []float64
	for _, batch := range []int{2, 1 << 40} {
		sc, err := NewScorer(be, dir, "", batch, 32)
		if err != nil {
			t.Fatal(err)
		}
		got, err := sc.Score(seqs)
		if err != nil {
			t.Fatalf("batch %d: %v", batch, err)
		}
		if want == nil {
			want = got
		} else if !slices.Equal(got, want) {
			t.Errorf("batch %d: scores %v, batch 2 gives %v", batch, got, want)
		}
	}
}

// TestScorerBeyondContext: a scoring width beyond the score model's context is refused naming
// the flag, the model and its context, as the training stages refuse it (it scored positions the
// model never saw); the context itself is accepted.
func TestScorerBeyondContext(t *testing.T) {
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	dir := scoreModel(t, 1)
	if _, err := NewScorer(be, dir, "", 2, 513); err == nil || !strings.Contains(err.Error(), "--max-length 513") ||
		!strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "max_position_embeddings 512") {
		t.Errorf("--max-length 513: got %v, want an error naming the flag, %s and its context 512", err, dir)
	}
	if _, err := NewScorer(be, dir, "", 2, 512); err != nil {
		t.Errorf("--max-length 512: %v", err)
	}
}
