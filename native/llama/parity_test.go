package llama

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
)

func skipNoEngine(t testing.TB) {
	t.Helper()
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
}

// batch builds a [len(rows), width] batch; left pads rows on the left.
func batch(rows [][]int32, width int, left []bool) (ids []int32, mask []float32) {
	for r, row := range rows {
		pad := width - len(row)
		for i := 0; i < width; i++ {
			j := i
			if left[r] {
				j = i - pad
			}
			if j >= 0 && j < len(row) {
				ids = append(ids, row[j])
				mask = append(mask, 1)
			} else {
				ids = append(ids, 0)
				mask = append(mask, 0)
			}
		}
	}
	return
}

type parityCase struct {
	name   string
	cfg    model.Config
	lora   *model.LoRAConfig
	scores bool
}

func parityCases() []parityCase {
	base := model.Config{HiddenSize: 32, IntermediateSize: 44, NumLayers: 2, NumHeads: 4, NumKVHeads: 2, VocabSize: 37,
		MaxPositions: 64, RMSNormEps: 1e-5, RopeTheta: 10000, BOS: 1, EOS: 2}
	tied := base
	tied.TieWordEmbeddings, tied.NumKVHeads, tied.AttentionBias, tied.OBias = true, 4, true, true
	mqa := base
	mqa.NumKVHeads, mqa.HeadDim, mqa.NumLayers = 1, 12, 3
	score := base
	score.ScoreDim = 1
	score2 := tied
	score2.ScoreDim = 2
	return []parityCase{
		{name: "gqa_untied", cfg: base},
		{name: "mha_tied_bias", cfg: tied},
		{name: "mqa_headdim", cfg: mqa},
		{name: "lora_frozen_base", cfg: base, lora: &model.LoRAConfig{Rank: 3, Alpha: 6, Targets: []string{"q_proj", "v_proj", "o_proj", "down_proj", "gate_proj"}}},
		{name: "score1", cfg: score, scores: true},
		{name: "score2_tied_lora", cfg: score2, scores: true, lora: &model.LoRAConfig{Rank: 2, Alpha: 2, Targets: []string{"k_proj", "up_proj"}}},
	}
}

// TestParityWithGraph: logits (or scores) and the gradient of every trainable
// tensor of Σ c·logp (or Σ c·scores) equal the GoMLX graph's (train/model on
// the pure-Go backend) within 1e-4 of each tensor's largest magnitude, on a
// batch with left padding, right padding and a full row.
func TestParityWithGraph(t *testing.T) {
	skipNoEngine(t)
	if err := model.EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	for _, pc := range parityCases() {
		t.Run(pc.name, func(t *testing.T) {
			cfg := pc.cfg
			w := model.RandomWeights(&cfg, 5)
			rng := rand.New(rand.NewPCG(7, 8))
			for _, tt := range w { // larger than HF's init: sharper gradients
				for i := range tt.Data {
					if len(tt.Shape) == 2 {
						tt.Data[i] *= 4
					} else {
						tt.Data[i] += float32(rng.NormFloat64() * 0.1)
					}
				}
			}
			if pc.scores {
				model.InitScoreHead(&cfg, w, cfg.ScoreDim, 3)
				delete(w, model.NameLMHead)
			}
			ctx := context.New()
			scope := ctx.In("m")
			if err := model.SetWeights(scope, &cfg, w); err != nil {
				t.Fatal(err)
			}
			loraScale := 1.0
			if pc.lora != nil {
				model.SetTrainable(scope, false)
				if err := model.AddLoRA(scope, &cfg, *pc.lora, 9); err != nil {
					t.Fatal(err)
				}
				loraScale = pc.lora.Alpha / float64(pc.lora.Rank)
				// B starts at zero; give it values so the adapters matter.
				for v := range ctx.IterVariables() {
					if strings.HasSuffix(v.Name(), "lora_B.weight") {
						data := make([]float32, v.Shape().Size())
						for i := range data {
							data[i] = float32(rng.NormFloat64() * 0.2)
						}
						if err := v.SetValue(tensors.FromFlatDataAndDimensions(data, v.Shape().Dimensions...)); err != nil {
							t.Fatal(err)
						}
					}
					if strings.Contains(v.Name(), "lora_") {
						val, _ := v.Value()
						data, _ := tensors.CopyFlatData[float32](val)
						w[v.Name()] = &model.Tensor{Shape: val.Shape().Dimensions, Data: data}
					}
				}
			}
			const bsz, tt = 3, 9
			ids, mask := batch([][]int32{{1, 5, 9, 3, 7, 2}, {1, 4, 4, 8, 30, 11, 6, 2, 9}, {1, 12, 36, 2}}, tt, []bool{true, false, false})
			width := tt - 1
			if pc.scores {
				width = tt * cfg.ScoreDim
			}
			coef := make([]float32, bsz*width)
			for i := range coef {
				coef[i] = float32(rng.NormFloat64())
			}
			// GoMLX.
			var names []string
			exec, err := context.NewExec(be, scope.Reuse(), func(ctx *context.Context, ids, mask, c *G.Node) []*G.Node {
				var out, loss *G.Node
				if pc.scores {
					out = model.Scores(ctx, &cfg, ids, mask)
					loss = G.ReduceAllSum(G.Mul(G.Reshape(out, bsz, width), c))
				} else {
					out = model.Logits(ctx, &cfg, ids, mask)
					loss = G.ReduceAllSum(G.Mul(model.TokenLogProbs(ctx, &cfg, ids, mask), c))
				}
				vars := optim.TrainableVariables(ctx, ids.Graph(), "/m")
				names = names[:0]
				for _, v := range vars {
					names = append(names, v.Name())
				}
				return append([]*G.Node{out}, optim.Gradients(loss, vars)...)
			})
			if err != nil {
				t.Fatal(err)
			}
			outs, err := exec.Exec(tensors.FromFlatDataAndDimensions(ids, bsz, tt), tensors.FromFlatDataAndDimensions(mask, bsz, tt),
				tensors.FromFlatDataAndDimensions(coef, bsz, width))
			if err != nil {
				t.Fatal(err)
			}
			// Native.
			m, err := New(&cfg, w, loraScale)
			if err != nil {
				t.Fatal(err)
			}
			if pc.lora != nil {
				m.SetTrainable(isLoRA)
			}
			g := m.NewGrads()
			tp, err := m.Forward(bsz, tt, ids, mask)
			if err != nil {
				t.Fatal(err)
			}
			var got, dh []float32
			if pc.scores {
				if got, err = m.Scores(tp); err != nil {
					t.Fatal(err)
				}
				dh, err = m.ScoresBackward(tp, coef, g)
			} else {
				if got, err = m.Logits(tp); err != nil {
					t.Fatal(err)
				}
				if _, err = m.TokenLogProbs(tp); err != nil {
					t.Fatal(err)
				}
				dh, err = m.TokenLogProbsBackward(tp, coef, g)
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Backward(tp, dh, g); err != nil {
				t.Fatal(err)
			}
			check := func(what string, got []float32, want *tensors.Tensor) {
				t.Helper()
				ref, err := tensors.CopyFlatData[float32](want)
				if err != nil {
					t.Fatal(err)
				}
				if len(ref) != len(got) {
					t.Fatalf("%s: %d values, want %d", what, len(got), len(ref))
				}
				scale, diff := 0.0, 0.0
				for i := range ref {
					scale = math.Max(scale, math.Abs(float64(ref[i])))
					diff = math.Max(diff, math.Abs(float64(got[i]-ref[i])))
				}
				if diff > 1e-4*scale || scale == 0 && diff != 0 {
					t.Errorf("%s: max diff %g, largest value %g (relative %g)", what, diff, scale, diff/scale)
				}
			}
			check("output", got, outs[0])
			if len(names) != len(g) {
				t.Fatalf("graph trains %d tensors %v, native %d", len(names), names, len(g))
			}
			for i, n := range names {
				if g[n] == nil {
					t.Fatalf("no native gradient for %s", n)
				}
				check(fmt.Sprintf("grad %s", n), g[n], outs[1+i])
			}
		})
	}
}
