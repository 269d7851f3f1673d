package model

import (
	"math"
	"reflect"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// TestLayerwiseMatchesWholeGraph: the per-layer programs give the whole-model
// graph's log-probs and scores bit for bit on the pure-Go backend (LoRA
// actor over a shared base, the reference through the actor's programs with
// zero adapters, a critic with a detached head), with row chunking too; and
// the actor, reference and critic share the embedding and layer programs.
func TestLayerwiseMatchesWholeGraph(t *testing.T) {
	be := getBackend(t)
	cfg := tinyConfig()
	root := context.New()
	base, actor, ref, critic := root.In("sft"), root.In("actor"), root.In("reference"), root.In("critic")
	if err := SetWeights(base, cfg, RandomWeights(cfg, 5)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*context.Context{actor, ref, critic} {
		ShareBase(c, base)
	}
	for _, c := range []*context.Context{actor, critic} {
		if err := AddLoRA(c, cfg, LoRAConfig{Rank: 2, Alpha: 4, Targets: []string{"q_proj", "v_proj", "down_proj"}}, 3); err != nil {
			t.Fatal(err)
		}
		// Non-zero B so the adapters matter.
		c.EnumerateVariablesInScope(func(v *context.Variable) {
			if v.Name() != "" && len(v.Shape().Dimensions) == 2 && v.Shape().Dimensions[1] == 2 {
				d := make([]float32, v.Shape().Size())
				for i := range d {
					d[i] = 0.05 * float32(i%7-3)
				}
				v.MustSetValue(tensors.FromFlatDataAndDimensions(d, v.Shape().Dimensions...))
			}
		})
	}
	if err := Detach(critic, NameScoreW, NameScoreB); err != nil {
		t.Fatal(err)
	}
	ids, mask := padded([][]int32{{1, 5, 9, 3, 7, 2}, {1, 4, 4, 8}, {1, 3}}, 7, true)
	B, T := 3, 7
	idsT, maskT := tensors.FromFlatDataAndDimensions(ids, B, T), tensors.FromFlatDataAndDimensions(mask, B, T)
	whole := func(scope *context.Context, lm bool) []float32 {
		out, err := context.ExecOnce(be, scope.Reuse(), func(ctx *context.Context, ids, mask *G.Node) *G.Node {
			if lm {
				return TokenLogProbs(ctx, cfg, ids, mask)
			}
			return Scores(ctx, cfg, ids, mask)
		}, idsT, maskT)
		if err != nil {
			t.Fatal(err)
		}
		return tensors.MustCopyFlatData[float32](out)
	}
	same := func(what string, got, want []float32) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s[%d] = %v, whole graph %v", what, i, got[i], want[i])
			}
		}
	}
	for _, chunk := range []int{0, 2} {
		lw := NewLayerwise(be)
		lw.RowChunk = chunk
		am := ScopeModel(actor, cfg)
		got, err := lw.TokenLogProbs(am, ids, mask, B, T)
		if err != nil {
			t.Fatal(err)
		}
		if chunk == 0 {
			same("actor log-probs", got, whole(actor, true))
		}
		refLP, err := lw.TokenLogProbs(lw.ZeroAdapters(ScopeModel(ref, cfg), am), ids, mask, B, T)
		if err != nil {
			t.Fatal(err)
		}
		if chunk == 0 {
			same("reference log-probs", refLP, whole(ref, true))
		}
		cm := ScopeModel(critic, cfg)
		sc, end, err := lw.Scores(cm, ids, mask, B, T)
		if err != nil {
			t.Fatal(err)
		}
		if chunk == 0 {
			same("critic scores", sc, whole(critic, false))
			for i := 0; i < B; i++ {
				same("end score", end[i:i+1], sc[i*T+T-1:i*T+T]) // left padded: the end is the last column
			}
		}
		if chunk != 0 {
			continue
		}
		// Actor and reference share embed, layer and LM head; the critic adds only its head
		// (its adapters have the same targets and scale).
		progs := lw.Programs()
		kinds := map[string]int{}
		for _, p := range progs {
			kinds[p.Program[:len(p.Program)-9]]++
		}
		if len(progs) != 4 || kinds["embed"] != 1 || kinds["layer"] != 1 || kinds["lm_head"] != 1 || kinds["score_head"] != 1 {
			t.Fatalf("programs %+v, want one embed, layer, lm_head and score_head", progs)
		}
		for _, p := range progs {
			if p.Program[:5] == "layer" && p.Calls != 3*cfg.NumLayers {
				t.Fatalf("layer program ran %d times, want %d", p.Calls, 3*cfg.NumLayers)
			}
		}
	}
}

// TestLayerProgramSizeIndependentOfDepth: the compiled layer program has the
// same node count at 2 and 6 layers, while the whole-model graph grows with
// the depth (the reason for Layerwise: XLA's compile time follows the node
// count).
func TestLayerProgramSizeIndependentOfDepth(t *testing.T) {
	be := getBackend(t)
	nodes := func(layers int) (layer, whole int) {
		cfg := tinyConfig()
		cfg.NumLayers = layers
		ctx := context.New()
		if err := SetWeights(ctx, cfg, RandomWeights(cfg, 1)); err != nil {
			t.Fatal(err)
		}
		ids, mask := padded([][]int32{{1, 5, 9}}, 4, true)
		lw := NewLayerwise(be)
		if _, err := lw.TokenLogProbs(ScopeModel(ctx, cfg), ids, mask, 1, 4); err != nil {
			t.Fatal(err)
		}
		total := 0
		for _, p := range lw.Programs() {
			if p.Program[:5] == "layer" {
				layer = p.Nodes
			}
			total += p.Nodes
		}
		ex, err := context.NewExec(be, ctx.Reuse(), func(ctx *context.Context, ids, mask *G.Node) *G.Node {
			return TokenLogProbs(ctx, cfg, ids, mask)
		})
		if err != nil {
			t.Fatal(err)
		}
		_, g, err := ex.ExecWithGraph(tensors.FromFlatDataAndDimensions(ids, 1, 4), tensors.FromFlatDataAndDimensions(mask, 1, 4))
		if err != nil {
			t.Fatal(err)
		}
		if total >= len(g.Nodes()) && layers > 2 {
			t.Errorf("%d layers: layerwise programs have %d nodes in all, the whole graph %d", layers, total, len(g.Nodes()))
		}
		return layer, len(g.Nodes())
	}
	l2, w2 := nodes(2)
	l6, w6 := nodes(6)
	if l2 == 0 || l2 != l6 {
		t.Fatalf("layer program nodes: %d at 2 layers, %d at 6", l2, l6)
	}
	if w6 <= w2 {
		t.Fatalf("whole graph nodes: %d at 2 layers, %d at 6: want growth", w2, w6)
	}
	t.Logf("layer program %d nodes; whole graph %d (2 layers), %d (6 layers)", l2, w2, w6)
}

// TestLayerwiseBackward: the layer-by-layer backward (forward keeping layer inputs, loss program,
// per-layer backward programs recomputing the forward, embedding backward) accumulates the
// gradients the whole-model graph computes, for LoRA adapters over a frozen base (LM loss) and
// for full fine-tuning of a score model (trained embedding, layers and head).
func TestLayerwiseBackward(t *testing.T) {
	be := getBackend(t)
	ids, mask := padded([][]int32{{1, 5, 9, 3, 7, 2}, {1, 4, 4, 8}}, 7, true)
	B, T := 2, 7
	idsT, maskT := tensors.FromFlatDataAndDimensions(ids, B, T), tensors.FromFlatDataAndDimensions(mask, B, T)
	weight := make([]float32, B*(T-1))
	for i := range weight {
		weight[i] = float32(i%5) - 1.5
	}
	wT := tensors.FromFlatDataAndDimensions(weight, B, T-1)
	lmLoss := func(ctx *context.Context, cfg *Config, h *G.Node, in []*G.Node) (*G.Node, []*G.Node) {
		lp := HeadTokenLogProbs(ctx, cfg, h, in[0])
		return G.ReduceAllSum(G.Mul(lp, in[1])), []*G.Node{G.ReduceAllMax(lp)}
	}
	scoreLoss := func(ctx *context.Context, cfg *Config, h *G.Node, in []*G.Node) (*G.Node, []*G.Node) {
		s := HeadScores(ctx, cfg, h)
		return G.ReduceAllSum(G.Mul(G.Mul(s, s), in[0])), nil
	}
	for _, tc := range []struct {
		name  string
		score bool
		lora  bool
	}{{"lora-lm", false, true}, {"full-score", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tinyConfig()
			if !tc.score {
				cfg.ScoreDim = 0
			}
			w := RandomWeights(cfg, 11)
			root := context.New()
			base, m := root.In("base"), root.In("m")
			if tc.lora {
				if err := SetWeights(base, cfg, w); err != nil {
					t.Fatal(err)
				}
				SetTrainable(base, false)
				ShareBase(m, base)
				if err := AddLoRA(m, cfg, LoRAConfig{Rank: 2, Alpha: 4, Targets: []string{"q_proj", "o_proj", "up_proj"}}, 3); err != nil {
					t.Fatal(err)
				}
				m.EnumerateVariablesInScope(func(v *context.Variable) {
					if len(v.Shape().Dimensions) == 2 && v.Shape().Dimensions[1] == 2 {
						d := make([]float32, v.Shape().Size())
						for i := range d {
							d[i] = 0.1 * float32(i%5-2)
						}
						v.MustSetValue(tensors.FromFlatDataAndDimensions(d, v.Shape().Dimensions...))
					}
				})
			} else {
				if err := SetWeights(m, cfg, w); err != nil {
					t.Fatal(err)
				}
				SetTrainable(m, true)
			}
			var vars []*context.Variable
			m.EnumerateVariablesInScope(func(v *context.Variable) {
				if v.Trainable {
					vars = append(vars, v)
				}
			})
			// Whole-graph gradients.
			var wantLoss float32
			var want [][]float32
			{
				args := []any{idsT, maskT, wT}
				out, err := context.ExecOnceN(be, m.Reuse(), func(ctx *context.Context, in []*G.Node) []*G.Node {
					var loss *G.Node
					if tc.score {
						s := Scores(ctx, cfg, in[0], in[1])
						loss = G.ReduceAllSum(G.Mul(G.Mul(s, s), in[1]))
					} else {
						loss = G.ReduceAllSum(G.Mul(TokenLogProbs(ctx, cfg, in[0], in[1]), in[2]))
					}
					nodes := make([]*G.Node, len(vars))
					for i, v := range vars {
						nodes[i] = v.ValueGraph(loss.Graph())
					}
					return append([]*G.Node{loss}, G.Gradient(loss, nodes...)...)
				}, args...)
				if err != nil {
					t.Fatal(err)
				}
				wantLoss = tensors.ToScalar[float32](out[0])
				for _, o := range out[1:] {
					want = append(want, tensors.MustCopyFlatData[float32](o))
				}
			}
			lw := NewLayerwise(be)
			tr := Train{Accum: map[string]*context.Variable{}, Scale: 0.5}
			accRoot := context.New()
			for i, v := range vars {
				a := accRoot.Checked(false).VariableWithValue(v.Name(), tensors.FromShape(v.Shape()))
				_ = i
				tr.Accum[v.Name()] = a
			}
			mm := ScopeModel(m, cfg)
			for rep := 0; rep < 2; rep++ { // accumulates: 2 × 0.5 × gradient
				var loss float64
				var metrics []float64
				var err error
				if tc.score {
					loss, metrics, err = lw.Backward(mm, tr, "sq", scoreLoss, idsT, maskT, maskT)
				} else {
					loss, metrics, err = lw.Backward(mm, tr, "lm", lmLoss, idsT, maskT, idsT, wT)
				}
				if err != nil {
					t.Fatal(err)
				}
				if math.Abs(loss-float64(wantLoss)) > 1e-5*math.Max(1, math.Abs(float64(wantLoss))) {
					t.Fatalf("loss %g, whole graph %g", loss, wantLoss)
				}
				if !tc.score && len(metrics) != 1 {
					t.Fatalf("metrics %v", metrics)
				}
			}
			for i, v := range vars {
				got := tensors.MustCopyFlatData[float32](tr.Accum[v.Name()].MustValue())
				scale := 0.0
				for _, x := range want[i] {
					scale = math.Max(scale, math.Abs(float64(x)))
				}
				if scale == 0 && v.Name() != NameLMHead { // a score model reads no LM head
					t.Fatalf("%s: zero whole-graph gradient", v.Name())
				}
				for j := range got {
					if d := math.Abs(float64(got[j] - want[i][j])); d > 1e-5*scale {
						t.Fatalf("%s[%d]: layerwise %g, whole graph %g (scale %g)", v.Name(), j, got[j], want[i][j], scale)
					}
				}
			}
			if len(vars) < 3 {
				t.Fatalf("only %d trained variables", len(vars))
			}
		})
	}
}

// TestSliceRows: SliceRows returns exactly rows [lo, hi) of int32 and float32 tensors of rank 1
// to 3 (first, middle and last rows, and all of them), and an empty range, one outside the
// tensor or rows of a scalar are errors naming the range and shape, not panics or empty tensors.
func TestSliceRows(t *testing.T) {
	lw := NewLayerwise(getBackend(t))
	ids := make([]int32, 5*3)
	for i := range ids {
		ids[i] = int32(i)
	}
	vals := make([]float32, 5*2*2)
	for i := range vals {
		vals[i] = float32(i) / 4
	}
	for _, c := range []struct {
		x   *tensors.Tensor
		row int // elements per row
	}{
		{tensors.FromFlatDataAndDimensions(ids, 5, 3), 3},
		{tensors.FromFlatDataAndDimensions(vals, 5, 2, 2), 4},
		{tensors.FromFlatDataAndDimensions(ids[:5], 5), 1},
	} {
		for _, r := range [][2]int{{0, 1}, {1, 3}, {4, 5}, {0, 5}} {
			got, err := lw.SliceRows(c.x, r[0], r[1])
			if err != nil {
				t.Fatalf("%s rows %v: %v", c.x.Shape(), r, err)
			}
			want := c.x.Shape().Clone()
			want.Dimensions[0] = r[1] - r[0]
			if !got.Shape().Equal(want) {
				t.Errorf("%s rows %v: shape %s, want %s", c.x.Shape(), r, got.Shape(), want)
			}
			var g, w any
			switch c.x.DType() {
			case dtypes.Int32:
				g, w = tensors.MustCopyFlatData[int32](got), tensors.MustCopyFlatData[int32](c.x)[r[0]*c.row:r[1]*c.row]
			default:
				g, w = tensors.MustCopyFlatData[float32](got), tensors.MustCopyFlatData[float32](c.x)[r[0]*c.row:r[1]*c.row]
			}
			if !reflect.DeepEqual(g, w) {
				t.Errorf("%s rows %v: %v, want %v", c.x.Shape(), r, g, w)
			}
			got.FinalizeAll()
		}
		for _, r := range [][2]int{{4, 6}, {3, 3}, {-1, 2}} {
			if got, err := lw.SliceRows(c.x, r[0], r[1]); err == nil {
				t.Errorf("%s rows %v: %s, want an error", c.x.Shape(), r, got.Shape())
			}
		}
	}
	if _, err := lw.SliceRows(tensors.FromScalar(int32(1)), 0, 1); err == nil {
		t.Error("rows of a scalar: no error")
	}
}
