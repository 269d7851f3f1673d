package stages

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/trainer"
)

func TestSpeedTmp(t *testing.T) {
	be, _ := backend.New("")
	if err := model.EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	cfg, w, err := model.LoadLlama2C("../../assets/data/models/stories260K.bin")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.New()
	if err := model.SetWeights(ctx.In("policy"), cfg, w); err != nil {
		t.Fatal(err)
	}
	s, err := trainer.NewStepper(be, ctx, trainer.Config{Scope: "/policy", Loss: func(c *context.Context, in []*graph.Node) (*graph.Node, map[string]*graph.Node) {
		lp := model.TokenLogProbs(c, cfg, in[0], in[1])
		return SFTLoss(lp, in[2]), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, T := range []int{64, 96} {
		B := 16
		ids := make([]int32, B*T)
		mask := make([]float32, B*T)
		lm := make([]float32, B*(T-1))
		for i := range ids {
			ids[i] = int32(rand.IntN(500) + 3)
			mask[i] = 1
		}
		for i := range lm {
			lm[i] = 1
		}
		for it := 0; it < 4; it++ {
			st := time.Now()
			r, err := s.Step(1e-3, tensorsOf(ids, B, T), tensorsOfF(mask, B, T), tensorsOfF(lm, B, T-1))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("T=%d step %d: %v loss %.4f", T, it, time.Since(st), r.Loss)
		}
	}
}
