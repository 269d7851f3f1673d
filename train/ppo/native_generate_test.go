package ppo

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	mlctx "github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/model"
)

// TestNativeGenerate: with the native backend, GraphNets.Generate samples the
// same rollout (tokens and mask) as the GoMLX generator on the go backend.
func TestNativeGenerate(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg := tinyConfig()
	cfg.MaxNewTokens = 24
	withBackend := func(spec string) func(*GraphNetsConfig) {
		return func(gc *GraphNetsConfig) {
			be, err := backend.New(spec)
			if err != nil {
				t.Fatal(err)
			}
			gc.Backend = be
		}
	}
	goNets := tinyNets(t, cfg, withBackend("go"))
	natNets := tinyNets(t, cfg, withBackend(backend.Native))
	if _, ok := natNets.gen.(*nativeGenerator); !ok {
		t.Fatalf("native backend: generator is %T", natNets.gen)
	}
	prompts := [][]int32{{1, 403, 407}, {1, 30, 100, 200, 250, 260, 270, 280, 290, 300, 310}, {1}}
	want, err := goNets.Generate(prompts, 5, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := natNets.Generate(prompts, 5, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got.B != want.B || got.T != want.T || got.S != want.S || !slices.Equal(got.Seq, want.Seq) || !slices.Equal(got.Mask, want.Mask) {
		t.Fatalf("native rollout %+v\ndiffers from the graph's %+v", got, want)
	}
}

// TestNativeScore: with the native backend, Score's log-probs, reference
// log-probs, end scores and critic values equal the scoring graph's within
// 1e-4 of each output's largest magnitude, for full-weight and LoRA nets
// (adapters given non-zero B so they matter).
func TestNativeScore(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg := tinyConfig()
	cfg.MaxNewTokens = 12
	lora := func(gc *GraphNetsConfig) {
		gc.LoRA = model.LoRAConfig{Rank: 2, Alpha: 4, Targets: []string{"q_proj", "v_proj", "down_proj"}}
		gc.LoRASeed = 3
	}
	for _, withLoRA := range []bool{false, true} {
		build := func(spec string) *GraphNets {
			opts := []func(*GraphNetsConfig){func(gc *GraphNetsConfig) {
				be, err := backend.New(spec)
				if err != nil {
					t.Fatal(err)
				}
				gc.Backend = be
			}}
			if withLoRA {
				opts = append(opts, lora)
			}
			n := tinyNets(t, cfg, opts...)
			rng := rand.New(rand.NewPCG(9, 9))
			var vars []*mlctx.Variable
			n.Context().EnumerateVariables(func(v *mlctx.Variable) {
				if strings.HasSuffix(v.Name(), "lora_B.weight") {
					vars = append(vars, v)
				}
			})
			sort.Slice(vars, func(i, j int) bool { return vars[i].ScopeAndName() < vars[j].ScopeAndName() })
			for _, v := range vars {
				data := make([]float32, v.Shape().Size())
				for i := range data {
					data[i] = float32(rng.NormFloat64() * 0.1)
				}
				if err := v.SetValue(tensors.FromFlatDataAndDimensions(data, v.Shape().Dimensions...)); err != nil {
					t.Fatal(err)
				}
			}
			return n
		}
		goNets, natNets := build("go"), build(backend.Native)
		ro, err := goNets.Generate([][]int32{{1, 403, 407}, {1, 30, 100, 200, 250, 260, 270}, {1}}, 3, 0)
		if err != nil {
			t.Fatal(err)
		}
		want, got := *ro, *ro
		if err := goNets.Score(&want); err != nil {
			t.Fatal(err)
		}
		if err := natNets.Score(&got); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name      string
			got, want []float32
		}{{"log-probs", got.LogProbs, want.LogProbs}, {"reference log-probs", got.RefLogProbs, want.RefLogProbs},
			{"reward", got.Reward, want.Reward}, {"reward values", got.RewardValues, want.RewardValues},
			{"cost", got.Cost, want.Cost}, {"cost values", got.CostValues, want.CostValues}} {
			if len(c.got) != len(c.want) || len(c.want) == 0 {
				t.Fatalf("lora=%v %s: %d values, graph %d", withLoRA, c.name, len(c.got), len(c.want))
			}
			scale, diff := 0.0, 0.0
			for i := range c.want {
				scale = math.Max(scale, math.Abs(float64(c.want[i])))
				diff = math.Max(diff, math.Abs(float64(c.got[i]-c.want[i])))
			}
			if diff > 1e-4*scale {
				t.Errorf("lora=%v %s: max diff %g, largest value %g", withLoRA, c.name, diff, scale)
			}
		}
	}
}

// TestNativeScoreRetokenizedNormalized: on the native engine too, a cost model on another
// vocabulary scores re-tokenised text and --normalize-reward applies: its scores equal the
// graph path's.
func TestNativeScoreRetokenizedNormalized(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg := DefaultConfig(Fixed)
	cfg.MaxNewTokens, cfg.MaxPromptTokens = 6, 64
	actorTok, err := tokenizer.Load(filepath.Join("..", "..", "assets", "data", "models", "tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	cm, cmTok := llamaCostModel(t)
	norm, err := ScoreNormalizer(&model.Config{ScoreDim: 1, Score: model.ScoreConfig{Mean: []float64{0.5}, Var: []float64{4}}}, kernels.Affine)
	if err != nil {
		t.Fatal(err)
	}
	build := func(spec string) *GraphNets {
		return tinyNets(t, cfg, func(gc *GraphNetsConfig) {
			be, err := backend.New(spec)
			if err != nil {
				t.Fatal(err)
			}
			gc.Backend, gc.Cost, gc.Tokenizer, gc.CostTokenizer, gc.RewardNorm = be, cm, actorTok, cmTok, norm
		})
	}
	goNets, natNets := build("go"), build(backend.Native)
	ro, err := goNets.Generate([][]int32{actorTok.Encode("BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:", true)}, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	want, got := *ro, *ro
	if err := goNets.Score(&want); err != nil {
		t.Fatal(err)
	}
	if err := natNets.Score(&got); err != nil {
		t.Fatal(err)
	}
	for i := range want.Cost {
		if math.Abs(float64(got.Cost[i]-want.Cost[i])) > 1e-5 || math.Abs(float64(got.Reward[i]-want.Reward[i])) > 1e-4 {
			t.Errorf("row %d: native reward %g cost %g, graph %g %g", i, got.Reward[i], got.Cost[i], want.Reward[i], want.Cost[i])
		}
	}
}
