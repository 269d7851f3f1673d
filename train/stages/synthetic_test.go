package stages

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// TestScoreModelLearnsSyntheticRule checks the whole score-model path (batching,
// end one-hot, score head, loss, gradients, AdamW) on a rule a model must learn in
// a few steps: the better response contains token 300, the worse one token 301.
func TestScoreModelLearnsSyntheticRule(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	if err := model.EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	mcfg, w, err := model.LoadAny(filepath.Join(assets, "models/stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	delete(w, model.NameLMHead)
	model.InitScoreHead(mcfg, w, 1, 1)
	r := rand.New(rand.NewPCG(1, 2))
	mk := func(n int) []PairExample {
		var out []PairExample
		for i := 0; i < n; i++ {
			prompt := []int32{1}
			for j := 0; j < 4+r.IntN(4); j++ {
				prompt = append(prompt, int32(260+r.IntN(200)))
			}
			resp := func(marker int32) []int32 {
				s := append([]int32(nil), prompt...)
				k := r.IntN(6)
				for j := 0; j < 6; j++ {
					if j == k {
						s = append(s, marker)
					} else {
						s = append(s, int32(260+r.IntN(200)))
					}
				}
				return append(s, 2)
			}
			out = append(out, PairExample{Hi: resp(300), Lo: resp(301)})
		}
		return out
	}
	train := &pairSource{ex: mk(160), b: 8, t: 16, seed: 1, shuffle: true}
	held := &pairSource{ex: mk(64), b: 8, t: 16}
	ctx := context.New()
	if err := model.SetWeights(ctx.InAbsPath(modelScope), mcfg, w); err != nil {
		t.Fatal(err)
	}
	initNormalizer(ctx)
	cfg := Defaults(RM)
	s, err := trainer.NewStepper(be, ctx, trainer.Config{Scope: modelScope, Loss: lossFn(RM, mcfg, cfg, true), WeightDecay: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	before, err := trainer.Evaluate(s, held)
	if err != nil {
		t.Fatal(err)
	}
	for step := 0; step < 20; step++ {
		b, _ := train.Batch(0, step%train.Len())
		if _, err := s.Step(1e-3, b.Inputs...); err != nil {
			t.Fatal(err)
		}
	}
	after, err := trainer.Evaluate(s, held)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("synthetic rule: held-out accuracy %.3f -> %.3f, loss %.3f -> %.3f", before["accuracy"], after["accuracy"], before["loss"], after["loss"])
	if after["accuracy"] < 0.9 {
		t.Fatalf("held-out accuracy %.3f after 20 steps on a trivial rule", after["accuracy"])
	}
}

// TestScoreNormalizerEMA: every training step updates the score normaliser with the batch's 2B
// end scores as the reference's ExponentialMovingAverage (momentum 0.9, unbiased batch
// variance); evaluation leaves it alone; scoreConfig reports it for config.json.
func TestScoreNormalizerEMA(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	if err := model.EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	mcfg, w, err := model.LoadAny(filepath.Join(assets, "models/stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	delete(w, model.NameLMHead)
	model.InitScoreHead(mcfg, w, 1, 1)
	r := rand.New(rand.NewPCG(3, 4))
	var ex []PairExample
	for i := 0; i < 16; i++ {
		seq := func() []int32 {
			s := []int32{1}
			for j := 0; j < 4+r.IntN(6); j++ {
				s = append(s, int32(260+r.IntN(200)))
			}
			return append(s, 2)
		}
		ex = append(ex, PairExample{Hi: seq(), Lo: seq()})
	}
	src := &pairSource{ex: ex, b: 4, t: 12}
	ctx := context.New()
	if err := model.SetWeights(ctx.InAbsPath(modelScope), mcfg, w); err != nil {
		t.Fatal(err)
	}
	initNormalizer(ctx)
	s, err := trainer.NewStepper(be, ctx, trainer.Config{Scope: modelScope, Loss: lossFn(CM, mcfg, Defaults(CM), true)})
	if err != nil {
		t.Fatal(err)
	}
	mean, vr, n := 0.0, 1.0, 8.0 // 2B end scores per step
	for step := 0; step < 4; step++ {
		b, _ := src.Batch(0, step)
		res, err := s.Step(1e-2, b.Inputs...)
		if err != nil {
			t.Fatal(err)
		}
		bm, sq := res.Metrics["score_mean"], res.Metrics["score_sq"]
		mean = 0.9*mean + 0.1*bm
		vr = 0.9*vr + 0.1*(sq-bm*bm)*n/(n-1)
	}
	sc, err := scoreConfig(ctx, CM)
	if err != nil {
		t.Fatal(err)
	}
	if sc.Type != "cost" || math.Abs(sc.Mean[0]-mean) > 1e-5 || math.Abs(sc.Var[0]-vr) > 1e-4*vr {
		t.Fatalf("normaliser %+v, want EMA mean %g var %g", sc, mean, vr)
	}
	b, _ := src.Batch(0, 0)
	if _, err := s.Eval(b.Inputs...); err != nil {
		t.Fatal(err)
	}
	if sc2, _ := scoreConfig(ctx, CM); sc2.Mean[0] != sc.Mean[0] || sc2.Var[0] != sc.Var[0] {
		t.Errorf("evaluation moved the normaliser: %+v -> %+v", sc, sc2)
	}
}
