package refcheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMalformedFilesNameFileAndCase(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string // substrings of the error
	}{
		{"bad_json.json", `{"function": `, []string{"bad_json.json", "malformed JSON"}},
		{"missing.json", `{"function": "safe_rlhf/utils.py:masked_mean", "cases": [
			{"B": 1, "N": 1, "x": [[1.0]], "mask": [[1]], "out": 1.0, "out_no_mask": 1.0},
			{"B": 1, "N": 1, "x": [[1.0]], "out": 1.0, "out_no_mask": 1.0}]}`, []string{"missing.json", "case 1", `"mask"`}},
		{"ragged.json", `{"function": "safe_rlhf/trainers/rl_trainer.py:RLTrainer.critic_loss_fn", "cases": [
			{"B": 2, "N": 2, "clip_range_value": 5, "values": [[1,2],[3]], "old_values": [[1,2],[3,4]], "returns": [[1,2],[3,4]], "mask": [[1,1],[1,1]], "loss": 0}]}`,
			[]string{"ragged.json", "case 0", `"values"`, "row 1"}},
		{"badmask.json", `{"function": "safe_rlhf/utils.py:masked_mean", "cases": [
			{"B": 1, "N": 1, "x": [[1.0]], "mask": [[2]], "out": 1.0, "out_no_mask": 1.0}]}`, []string{"badmask.json", "case 0", "want 0 or 1"}},
		{"cases.json", `{"function": "safe_rlhf/utils.py:masked_mean", "cases": 3}`, []string{"cases.json", `"cases"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CheckFile(tc.name, []byte(tc.body), CPU(false))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestSkipsNonKernelFilesAndSubdirs(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "llama2c"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"llama2c/oracle.json": `not json at all`,
		"other.json":          `{"tokens": [1, 2, 3]}`,
		"unknown.json":        `{"function": "somewhere.py:f", "cases": []}`,
		"mm.json": `{"function": "safe_rlhf/utils.py:masked_mean", "cases": [
			{"B": 1, "N": 2, "x": [[1.0, 3.0]], "mask": [[1, 1]], "out": 2.0, "out_no_mask": 2.0}]}`,
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, err := Run(dir, CPU(false))
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 {
		t.Fatalf("%d results, want 3 (subdirectory skipped): %+v", len(res), res)
	}
	for _, r := range res {
		if (r.File == "mm.json") != (r.Skipped == "") || r.Failed() {
			t.Errorf("%s: skipped %q failed %v", r.File, r.Skipped, r.Failed())
		}
	}
}

// TestWrongAnswerFails makes sure the checker can fail: a perturbed expected value must exceed the tolerance.
func TestWrongAnswerFails(t *testing.T) {
	body := `{"function": "safe_rlhf/utils.py:masked_mean", "cases": [
		{"B": 1, "N": 2, "x": [[1.0, 3.0]], "mask": [[1, 1]], "out": 2.000001, "out_no_mask": 2.0}]}`
	r, err := CheckFile("w.json", []byte(body), CPU(false), CPU(true))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Failed() || r.MaxErr["f64"] < 1e-7 {
		t.Errorf("perturbed vector accepted: %+v", r)
	}
}

// FuzzCheckFile feeds arbitrary bytes to the golden-file parser: it must return
// an error or a result, never panic.
func FuzzCheckFile(f *testing.F) {
	paths, _ := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil && len(b) < 30000 {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"function": "safe_rlhf/utils.py:masked_mean", "cases": [{"B": 2, "N": 1, "x": [[1],[2]], "mask": [[0],[0]], "out": 0, "out_no_mask": 1.5}]}`))
	cpu := CPU(false)
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = CheckFile("fuzz.json", data, cpu)
	})
}
