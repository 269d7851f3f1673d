package eval

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/model"
)

// TestNativeScorer: on the native engine the Scorer of eval-rm, eval-cm, judge,
// compare and eval-arena runs native/llama (no GoMLX program) and gives the
// graph's end scores within 1e-4, on rows of several lengths, truncated rows and
// a padded final batch.
func TestNativeScorer(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg, w, err := model.LoadLlama2C(filepath.Join(assets, "models/stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	delete(w, model.NameLMHead)
	model.InitScoreHead(cfg, w, 1, 5)
	dir := filepath.Join(t.TempDir(), "score")
	if err := model.SaveWithTokenizer(dir, cfg, w, filepath.Join(assets, "models/tok512.bin")); err != nil {
		t.Fatal(err)
	}
	long := []int32{1}
	for i := range 40 {
		long = append(long, int32(260+i))
	}
	seqs := [][]int32{{1, 300, 301, 302, 2}, {1, 400, 2}, long, {1, 260, 261, 262, 263, 264, 2}, {1, 7}}
	var want []float64
	for _, spec := range []string{"go", backend.Native} {
		be, err := backend.New(spec)
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewScorer(be, dir, "", 3, 24)
		if err != nil {
			t.Fatal(err)
		}
		if native := spec == backend.Native; (s.nat != nil) != native || (s.exec != nil) == native {
			t.Fatalf("%s: scorer runs the wrong engine (native model %v, GoMLX exec %v)", spec, s.nat != nil, s.exec != nil)
		}
		got, err := s.Score(seqs)
		if err != nil {
			t.Fatal(err)
		}
		if want == nil {
			want = got
			continue
		}
		for i := range want {
			if math.Abs(got[i]-want[i]) > 1e-4*math.Max(1, math.Abs(want[i])) {
				t.Errorf("row %d: native %g, graph %g", i, got[i], want[i])
			}
		}
	}
}
