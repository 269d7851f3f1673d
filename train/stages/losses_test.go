package stages

import (
	"encoding/json"
	"math"
	"math/rand/v2"
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

// refTokenWise is the reference token-wise loss (RewardTrainer/CostTrainer.loss,
// spec §4–5) in float64, row by row, with cost signs when signs != nil.
func refTokenWise(hi, lo [][]float64, hiIDs, loIDs [][]int32, hiM, loM [][]float32, signs []float64, reg float64) float64 {
	B := len(hi)
	var total float64
	nls := func(x float64) float64 { return math.Log1p(math.Exp(-math.Abs(x))) + math.Max(-x, 0) }
	for i := 0; i < B; i++ {
		e := max(EndIndex(hiM[i]), EndIndex(loM[i]))
		d := DivergeIndex(hiIDs[i], loIDs[i])
		var l, sq, sh, sl float64
		n := float64(e - d + 1)
		for t := d; t <= e; t++ {
			l += nls(hi[i][t]-lo[i][t]) / n
			sq += (hi[i][t]*hi[i][t] + lo[i][t]*lo[i][t]) / (2 * n)
			if signs != nil {
				sh += nls(signs[i]*hi[i][t]) / n
				sl += nls(signs[B+i]*lo[i][t]) / n
			}
		}
		total += l + sh + sl + reg*sq
	}
	return total / float64(B)
}

func TestPairwiseScoreLossTokenWise(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	const B, T = 3, 12
	for _, cost := range []bool{false, true} {
		hiIDs, loIDs := make([][]int32, B), make([][]int32, B)
		hiM, loM := make([][]float32, B), make([][]float32, B)
		hi, lo := make([][]float64, B), make([][]float64, B)
		var signs []float64
		for i := 0; i < B; i++ {
			hiIDs[i], loIDs[i] = make([]int32, T), make([]int32, T)
			hiM[i], loM[i] = make([]float32, T), make([]float32, T)
			hi[i], lo[i] = make([]float64, T), make([]float64, T)
			lh, ll := 4+r.IntN(T-4), 4+r.IntN(T-4)
			shared := 1 + r.IntN(3)
			for t := 0; t < T; t++ {
				if t < lh {
					hiIDs[i][t], hiM[i][t] = int32(1+r.IntN(9)), 1
				}
				if t < ll {
					loIDs[i][t], loM[i][t] = int32(1+r.IntN(9)), 1
				}
				if t < shared && t < min(lh, ll) {
					loIDs[i][t] = hiIDs[i][t]
				}
				hi[i][t], lo[i][t] = r.NormFloat64(), r.NormFloat64()
			}
			if cost {
				signs = append(signs, float64(1-2*r.IntN(2)))
			}
		}
		if cost {
			for i := 0; i < B; i++ {
				signs = append(signs, float64(1-2*r.IntN(2)))
			}
		}
		want := refTokenWise(hi, lo, hiIDs, loIDs, hiM, loM, signs, 0.01)
		end, span := pairMasks(hiIDs, loIDs, hiM, loM, T)
		s32 := make([]float32, 2*B)
		for i, s := range signs {
			s32[i] = float32(s)
		}
		exec, err := graph.NewExec(be, func(sc, e, sp, sg *graph.Node) *graph.Node {
			if !cost {
				sg = nil
			}
			return PairwiseScoreLoss(sc, e, sp, sg, 0.01).Loss
		})
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Exec(tensors.FromFlatDataAndDimensions(flat32(hi, lo), 2*B, T),
			tensors.FromFlatDataAndDimensions(end, 2*B, T), tensors.FromFlatDataAndDimensions(span, B, T),
			tensors.FromFlatDataAndDimensions(s32, 2*B))
		if err != nil {
			t.Fatal(err)
		}
		if got := float64(out[0].Value().(float32)); math.Abs(got-want) > 1e-5*math.Max(1, want) {
			t.Errorf("cost=%v: token-wise loss %g, want %g", cost, got, want)
		}
	}
}
