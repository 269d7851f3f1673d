package stages

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/internal/backend"
)

const goldenDir = "../../assets/golden"

type goldenPair struct {
	B, L            int
	LossType        string      `json:"loss_type"`
	Reg             float64     `json:"regularization"`
	BetterIDs       [][]int32   `json:"better_input_ids"`
	BetterMask      [][]float32 `json:"better_attention_mask"`
	WorseIDs        [][]int32   `json:"worse_input_ids"`
	WorseMask       [][]float32 `json:"worse_attention_mask"`
	ScoresBetter    [][]float64 `json:"scores_better"`
	ScoresWorse     [][]float64 `json:"scores_worse"`
	SaferIDs        [][]int32   `json:"safer_input_ids"`
	SaferMask       [][]float32 `json:"safer_attention_mask"`
	SaferSign       []float64   `json:"safer_safety_sign"`
	UnsaferIDs      [][]int32   `json:"unsafer_input_ids"`
	UnsaferMask     [][]float32 `json:"unsafer_attention_mask"`
	UnsaferSign     []float64   `json:"unsafer_safety_sign"`
	ScoresSafer     [][]float64 `json:"scores_safer"`
	ScoresUnsafer   [][]float64 `json:"scores_unsafer"`
	Loss, Accuracy  float64
	AccuracySign    float64   `json:"accuracy_sign"`
	HigherEndReward []float64 `json:"higher_end_reward"`
	LowerEndReward  []float64 `json:"lower_end_reward"`
	HigherEndCost   []float64 `json:"higher_end_cost"`
	LowerEndCost    []float64 `json:"lower_end_cost"`
}

func loadGolden(t *testing.T, name string) []goldenPair {
	raw, err := os.ReadFile(filepath.Join(goldenDir, name))
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Cases []goldenPair }
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Cases) == 0 {
		t.Fatalf("%s: no cases", name)
	}
	return f.Cases
}

func flat32(rows ...[][]float64) []float32 {
	var out []float32
	for _, r := range rows {
		for _, x := range r {
			for _, v := range x {
				out = append(out, float32(v))
			}
		}
	}
	return out
}

func TestPairwiseScoreLossGolden(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"reward_model_loss.json", "cost_model_loss.json"} {
		for ci, c := range loadGolden(t, kind) {
			cost := kind == "cost_model_loss.json"
			hiIDs, loIDs, hiM, loM := c.BetterIDs, c.WorseIDs, c.BetterMask, c.WorseMask
			hiS, loS := c.ScoresBetter, c.ScoresWorse
			wantHi, wantLo := c.HigherEndReward, c.LowerEndReward
			var signs []float32
			if cost { // hi = unsafer (higher cost), lo = safer
				hiIDs, loIDs, hiM, loM = c.UnsaferIDs, c.SaferIDs, c.UnsaferMask, c.SaferMask
				hiS, loS = c.ScoresUnsafer, c.ScoresSafer
				wantHi, wantLo = c.HigherEndCost, c.LowerEndCost
				for _, s := range c.UnsaferSign {
					signs = append(signs, float32(-s))
				}
				for _, s := range c.SaferSign {
					signs = append(signs, float32(-s))
				}
			}
			end, span := pairMasks(hiIDs, loIDs, hiM, loM, c.L)
			tokenWise := c.LossType == "token-wise"
			exec, err := graph.NewExec(be, func(sc, e, sp, sg *graph.Node) []*graph.Node {
				var spn, sgn *graph.Node
				if tokenWise {
					spn = sp
				}
				if cost {
					sgn = sg
				}
				out := PairwiseScoreLoss(sc, e, spn, sgn, c.Reg)
				acc2 := out.Accuracy
				if out.SignAccuracy != nil {
					acc2 = out.SignAccuracy
				}
				return []*graph.Node{out.Loss, out.Accuracy, acc2, out.Hi, out.Lo}
			})
			if err != nil {
				t.Fatal(err)
			}
			if signs == nil {
				signs = make([]float32, 2*c.B)
			}
			outs, err := exec.Exec(
				tensors.FromFlatDataAndDimensions(flat32(hiS, loS), 2*c.B, c.L),
				tensors.FromFlatDataAndDimensions(end, 2*c.B, c.L),
				tensors.FromFlatDataAndDimensions(span, c.B, c.L),
				tensors.FromFlatDataAndDimensions(signs, 2*c.B))
			if err != nil {
				t.Fatal(err)
			}
			loss := float64(outs[0].Value().(float32))
			if math.Abs(loss-c.Loss) > 2e-5*math.Max(1, math.Abs(c.Loss)) {
				t.Errorf("%s case %d (%s, reg %g): loss %g, want %g", kind, ci, c.LossType, c.Reg, loss, c.Loss)
			}
			if acc := float64(outs[1].Value().(float32)); math.Abs(acc-c.Accuracy) > 1e-6 {
				t.Errorf("%s case %d: accuracy %g, want %g", kind, ci, acc, c.Accuracy)
			}
			if cost {
				if acc := float64(outs[2].Value().(float32)); math.Abs(acc-c.AccuracySign) > 1e-6 {
					t.Errorf("%s case %d: sign accuracy %g, want %g", kind, ci, acc, c.AccuracySign)
				}
			}
			hi, lo := tensors.MustCopyFlatData[float32](outs[3]), tensors.MustCopyFlatData[float32](outs[4])
			for i := range hi {
				if math.Abs(float64(hi[i])-wantHi[i]) > 1e-5 || math.Abs(float64(lo[i])-wantLo[i]) > 1e-5 {
					t.Errorf("%s case %d row %d: end scores %g %g, want %g %g", kind, ci, i, hi[i], lo[i], wantHi[i], wantLo[i])
				}
			}
		}
	}
}
