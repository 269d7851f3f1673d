package model

import (
	"testing"

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
