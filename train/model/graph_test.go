package model

import (
	"math"
	"testing"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// padded builds a left- or right-padded batch from rows.
func padded(rows [][]int32, width int, left bool) (ids []int32, mask []float32) {
	for _, r := range rows {
		pad := width - len(r)
		for i := 0; i < width; i++ {
			j := i
			if left {
				j = i - pad
			}
			if j >= 0 && j < len(r) {
				ids = append(ids, r[j])
				mask = append(mask, 1)
			} else {
				ids = append(ids, 0)
				mask = append(mask, 0)
			}
		}
	}
	return
}

// TestTokenLogProbsPadding checks TokenLogProbs against a host log-softmax
// of Logits, and that left and right padding give each real token the same
// log-prob as the unpadded sequence (positions = cumsum(mask)-1).
func TestTokenLogProbsPadding(t *testing.T) {
	cfg, w := loadStories(t)
	InitScoreHead(cfg, w, 1, 7)
	be := getBackend(t)
	ctx := context.New()
	if err := SetWeights(ctx.In("m"), cfg, w); err != nil {
		t.Fatal(err)
	}
	exec, err := context.NewExec(be, ctx.In("m").Reuse(), func(ctx *context.Context, ids, mask *G.Node) []*G.Node {
		end, scores := EndScores(ctx, cfg, ids, mask)
		return []*G.Node{Logits(ctx, cfg, ids, mask), TokenLogProbs(ctx, cfg, ids, mask), scores, end}
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := loadGolden(t)
	a := cases[1].AllIDs[:12]
	b := cases[2].AllIDs[:7]
	const width = 16
	run := func(left bool) (logits, lp, scores, end []float32) {
		ids, mask := padded([][]int32{a, b}, width, left)
		out, err := exec.Exec(tensors.FromFlatDataAndDimensions(ids, 2, width), tensors.FromFlatDataAndDimensions(mask, 2, width))
		if err != nil {
			t.Fatal(err)
		}
		logits, _ = tensors.CopyFlatData[float32](out[0])
		lp, _ = tensors.CopyFlatData[float32](out[1])
		scores, _ = tensors.CopyFlatData[float32](out[2])
		end, _ = tensors.CopyFlatData[float32](out[3])
		for _, x := range [][]float32{logits, lp, scores, end} {
			for _, v := range x {
				if math.IsNaN(float64(v)) {
					t.Fatal("NaN in output")
				}
			}
		}
		return
	}
	v := cfg.VocabSize
	tol := matmulTol(t)
	lL, lpL, sL, eL := run(true)
	_, lpR, sR, eR := run(false)
	// Host log-softmax check on the left-padded batch.
	ids, mask := padded([][]int32{a, b}, width, true)
	for r := 0; r < 2; r++ {
		for p := 0; p < width-1; p++ {
			row := lL[(r*width+p)*v : (r*width+p+1)*v]
			m := math.Inf(-1)
			for _, x := range row {
				m = math.Max(m, float64(x))
			}
			s := 0.0
			for _, x := range row {
				s += math.Exp(float64(x) - m)
			}
			want := float64(row[ids[r*width+p+1]]) - m - math.Log(s)
			if got := float64(lpL[r*(width-1)+p]); math.Abs(got-want) > tol {
				t.Fatalf("row %d pos %d: TokenLogProbs %g, host %g", r, p, got, want)
			}
		}
	}
	// Left vs right padding: real-token log-probs and scores agree.
	for r, row := range [][]int32{a, b} {
		n := len(row)
		off := width - n
		for p := 0; p < n-1; p++ {
			if d := math.Abs(float64(lpL[r*(width-1)+off+p] - lpR[r*(width-1)+p])); d > tol {
				t.Fatalf("row %d pos %d: left %g right %g", r, p, lpL[r*(width-1)+off+p], lpR[r*(width-1)+p])
			}
		}
		for p := 0; p < n; p++ {
			if d := math.Abs(float64(sL[r*width+off+p] - sR[r*width+p])); d > tol {
				t.Fatalf("row %d pos %d: scores left %g right %g", r, p, sL[r*width+off+p], sR[r*width+p])
			}
		}
		if eL[r] != sL[r*width+width-1] || math.Abs(float64(eR[r]-sR[r*width+n-1])) > 0 {
			t.Fatalf("row %d: end score left %g (want %g) right %g (want %g)", r, eL[r], sL[r*width+width-1], eR[r], sR[r*width+n-1])
		}
		if math.Abs(float64(eL[r]-eR[r])) > tol {
			t.Fatalf("row %d: end score left %g right %g", r, eL[r], eR[r])
		}
	}
	_ = mask
}
