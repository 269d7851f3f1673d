package llama

import (
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/train/model"
)

// TestInferMatchesForward: the tape-less forward gives bit-identical logits,
// token log-probs and scores to Forward on every parity shape (GQA, MQA, tied
// and untied heads, biases, LoRA, score heads), its tape is refused by
// Backward, and it allocates well under half of Forward's bytes on a deeper
// model (Forward saves every layer's activations, Infer reuses one layer's).
func TestInferMatchesForward(t *testing.T) {
	skipNoEngine(t)
	for _, pc := range parityCases() {
		t.Run(pc.name, func(t *testing.T) {
			cfg := pc.cfg
			w := model.RandomWeights(&cfg, 5)
			scale := 1.0
			if pc.scores {
				model.InitScoreHead(&cfg, w, cfg.ScoreDim, 3)
				delete(w, model.NameLMHead)
			}
			if pc.lora != nil {
				addRandomLoRA(t, &cfg, w, *pc.lora)
				scale = pc.lora.Alpha / float64(pc.lora.Rank)
			}
			m, err := New(&cfg, w, scale)
			if err != nil {
				t.Fatal(err)
			}
			const bsz, tt = 3, 9
			ids, mask := batch([][]int32{{1, 5, 9, 3, 7, 2}, {1, 4, 4, 8, 30, 11, 6, 2, 9}, {1, 12, 36, 2}}, tt, []bool{true, false, false})
			outputs := func(tp *Tape) [][]float32 {
				if pc.scores {
					s, err := m.Scores(tp)
					if err != nil {
						t.Fatal(err)
					}
					return [][]float32{tp.Hidden, s}
				}
				l, err := m.Logits(tp)
				if err != nil {
					t.Fatal(err)
				}
				lp, err := m.TokenLogProbs(tp)
				if err != nil {
					t.Fatal(err)
				}
				return [][]float32{tp.Hidden, l, lp}
			}
			full, err := m.Forward(bsz, tt, ids, mask)
			if err != nil {
				t.Fatal(err)
			}
			lean, err := m.Infer(bsz, tt, ids, mask)
			if err != nil {
				t.Fatal(err)
			}
			want, got := outputs(full), outputs(lean)
			for i := range want {
				if !slices.Equal(got[i], want[i]) {
					t.Errorf("output %d differs between Infer and Forward", i)
				}
			}
			if err := m.Backward(lean, make([]float32, bsz*tt*cfg.HiddenSize), m.NewGrads()); err == nil {
				t.Error("Backward accepted a tape from Infer")
			}
		})
	}
	t.Run("allocation", func(t *testing.T) {
		cfg := model.Config{HiddenSize: 64, IntermediateSize: 172, NumLayers: 6, NumHeads: 8, NumKVHeads: 4, VocabSize: 64,
			MaxPositions: 128, RMSNormEps: 1e-5, RopeTheta: 10000, BOS: 1, EOS: 2, TieWordEmbeddings: true}
		m, err := New(&cfg, model.RandomWeights(&cfg, 1), 1)
		if err != nil {
			t.Fatal(err)
		}
		const bsz, tt = 4, 64
		ids, mask := make([]int32, bsz*tt), make([]float32, bsz*tt)
		for i := range ids {
			ids[i], mask[i] = int32(3+i%60), 1
		}
		bytes := func(f func(b, t int, ids []int32, mask []float32) (*Tape, error)) uint64 {
			var a, b runtime.MemStats
			runtime.ReadMemStats(&a)
			if _, err := f(bsz, tt, ids, mask); err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&b)
			return b.TotalAlloc - a.TotalAlloc
		}
		m.Forward(bsz, tt, ids, mask) // RoPE tables built once
		fwd, inf := bytes(m.Forward), bytes(m.Infer)
		t.Logf("allocated: Forward %d bytes, Infer %d bytes", fwd, inf)
		if float64(inf) > 0.5*float64(fwd) || math.IsNaN(float64(inf)) {
			t.Errorf("Infer allocated %d bytes, Forward %d: want under half", inf, fwd)
		}
	})
}

// addRandomLoRA adds adapters with random A and B (B nonzero, so they matter)
// to every linear of w named by lc.Targets.
func addRandomLoRA(t *testing.T, cfg *model.Config, w model.Weights, lc model.LoRAConfig) {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	random := func(shape ...int) *model.Tensor {
		d := make([]float32, shape[0]*shape[1])
		for i := range d {
			d[i] = float32(rng.NormFloat64() * 0.2)
		}
		return &model.Tensor{Shape: shape, Data: d}
	}
	n := 0
	for _, name := range w.Names() {
		stem, ok := strings.CutSuffix(name, ".weight")
		if !ok || !strings.Contains(stem, "layers.") || len(w[name].Shape) != 2 {
			continue
		}
		for _, tg := range lc.Targets {
			if strings.HasSuffix(stem, "."+tg) {
				out, in := w[name].Shape[0], w[name].Shape[1]
				w[stem+".lora_A.weight"], w[stem+".lora_B.weight"] = random(lc.Rank, in), random(out, lc.Rank)
				n++
			}
		}
	}
	if n == 0 {
		t.Fatalf("no LoRA target among %v", lc.Targets)
	}
}

// TestEndScores: a row's score is read at its last unmasked position, position 0 for an all-pad row.
func TestEndScores(t *testing.T) {
	mask := []float32{1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0}
	scores := []float32{10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32, 33, 40, 41, 42, 43}
	got := EndScores(4, 4, mask, scores)
	if want := []float32{11, 23, 30, 42}; !slices.Equal(got, want) {
		t.Errorf("EndScores = %v, want %v", got, want)
	}
}
