package ppo

import (
	"testing"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/saferlhf/saferlhf/internal/backend"
)

// TestLossGraphsGolden runs the in-graph actor and critic losses on the reference's vectors
// (float32 graphs against float64 references), the PPO-Lag advantage combined on the host as rlStep does.
func TestLossGraphsGolden(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	run := func(fn func(g *G.Graph, in []*G.Node) *G.Node, B, N int, xs ...[][]float64) float64 {
		args := make([]any, len(xs))
		for i, x := range xs {
			args[i] = tensors.FromFlatDataAndDimensions(flat32(x), B, N)
		}
		e := G.MustNewExec(be, func(in []*G.Node) *G.Node { return fn(in[0].Graph(), in) })
		out := e.MustExec(args...)
		return float64(out[0].Value().(float32))
	}
	type actorCase struct {
		B, N             int
		ClipRangeRatio   float64     `json:"clip_range_ratio"`
		LogProbs         [][]float64 `json:"log_probs"`
		OldLogProbs      [][]float64 `json:"old_log_probs"`
		Mask             [][]float64
		Lambda           float64
		RewardAdvantages [][]float64 `json:"reward_advantages"`
		CostAdvantages   [][]float64 `json:"cost_advantages"`
		Advantages       [][]float64
		Loss             float64
	}
	for _, file := range []string{"actor_loss_ppo_lag.json", "actor_loss_ppo.json"} {
		var g struct{ Cases []actorCase }
		readGolden(t, file, &g)
		for ci, c := range g.Cases {
			adv := c.Advantages
			if adv == nil {
				adv = make([][]float64, c.B)
				for i := range adv {
					adv[i] = make([]float64, c.N)
					for j := range adv[i] {
						adv[i][j] = (c.RewardAdvantages[i][j] - c.Lambda*c.CostAdvantages[i][j]) / (1 + c.Lambda)
					}
				}
			}
			got := run(func(_ *G.Graph, in []*G.Node) *G.Node {
				l, _, _ := graphActorLoss(in[0], in[1], in[2], in[3], c.ClipRangeRatio)
				return l
			}, c.B, c.N, c.LogProbs, c.OldLogProbs, adv, c.Mask)
			if !close64(got, c.Loss, 1e-4) {
				t.Errorf("%s case %d: loss %g, golden %g", file, ci, got, c.Loss)
			}
		}
	}
	var g struct {
		Cases []struct {
			B, N           int
			ClipRangeValue float64     `json:"clip_range_value"`
			Values         [][]float64 `json:"values"`
			OldValues      [][]float64 `json:"old_values"`
			Returns        [][]float64 `json:"returns"`
			Mask           [][]float64
			Loss           float64
		}
	}
	readGolden(t, "critic_loss.json", &g)
	for ci, c := range g.Cases {
		got := run(func(_ *G.Graph, in []*G.Node) *G.Node {
			return graphCriticLoss(in[0], in[1], in[2], in[3], c.ClipRangeValue)
		}, c.B, c.N, c.Values, c.OldValues, c.Returns, c.Mask)
		if !close64(got, c.Loss, 1e-4) {
			t.Errorf("critic case %d: loss %g, golden %g", ci, got, c.Loss)
		}
	}
}
