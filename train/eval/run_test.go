package eval

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

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
		filepath.Join(assets, "beavertails/artkit-beavertails-30k_train-unsafe-sample.csv")}
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
}

func TestRunArena(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(assets, "models/stories260K.bin")
	o := ArenaOptions{Red: base, Blue: base, RedName: "base-a", BlueName: "base-b", Reward: scoreModel(t, 1), Cost: scoreModel(t, 2),
		Prompts: []string{filepath.Join(assets, "eval/safe-rlhf-gpt4-problems.json")}, Limit: 6, MaxNewTokens: 8,
		Temperature: 1, Seed: 3, Batch: 4, MaxLength: 96, Bootstrap: 50, Out: t.TempDir()}
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
