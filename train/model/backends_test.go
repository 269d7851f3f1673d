package model_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// The model tests that have a native path run here on both backends, table
// driven: "go" (the GoMLX graphs of this package on the pure-Go backend) and
// "native" (native/llama, built from the same GoMLX context with
// llama.FromContext, as the trainers do). Native cases skip without cgo; `make
// test-native` runs them.

// modelBackend computes a model's outputs from the model held at a context scope.
type modelBackend struct {
	name string
	be   backends.Backend
}

func modelBackends(t *testing.T) []modelBackend {
	t.Helper()
	goBe, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	out := []modelBackend{{name: "go", be: goBe}}
	if engine.Available {
		nb, err := backend.New(backend.Native)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, modelBackend{name: "native", be: nb})
	} else {
		out = append(out, modelBackend{name: "native"})
	}
	return out
}

// run calls f per backend as a subtest, skipping native without the engine.
func forBackends(t *testing.T, f func(t *testing.T, mb modelBackend)) {
	for _, mb := range modelBackends(t) {
		t.Run(mb.name, func(t *testing.T) {
			if mb.be == nil {
				t.Skip("native engine not compiled in (CGO_ENABLED=0); make test-native runs it")
			}
			f(t, mb)
		})
	}
}

// outputs are one forward pass's logits [N, V] and token log-probs [B, T−1]
// (LM models), or scores [N, ScoreDim] (score models).
type outputs struct{ logits, logp, scores []float32 }

func (mb modelBackend) forward(t *testing.T, scope *context.Context, cfg *model.Config, b, tt int, ids []int32, mask []float32) outputs {
	t.Helper()
	score := cfg.ScoreDim > 0
	if mb.name == "native" {
		m, _, err := llama.FromContext(scope, cfg)
		if err != nil {
			t.Fatal(err)
		}
		tp, err := m.Forward(b, tt, ids, mask)
		if err != nil {
			t.Fatal(err)
		}
		var o outputs
		if score {
			o.scores, err = m.Scores(tp)
		} else if o.logits, err = m.Logits(tp); err == nil {
			o.logp, err = m.TokenLogProbs(tp)
		}
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	res, err := context.ExecOnceN(mb.be, scope.Reuse(), func(ctx *context.Context, ids, mask *G.Node) []*G.Node {
		if score {
			return []*G.Node{model.Scores(ctx, cfg, ids, mask)}
		}
		return []*G.Node{model.Logits(ctx, cfg, ids, mask), model.TokenLogProbs(ctx, cfg, ids, mask)}
	}, tensors.FromFlatDataAndDimensions(ids, b, tt), tensors.FromFlatDataAndDimensions(mask, b, tt))
	if err != nil {
		t.Fatal(err)
	}
	flat := func(x *tensors.Tensor) []float32 {
		v, err := tensors.CopyFlatData[float32](x)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if score {
		return outputs{scores: flat(res[0])}
	}
	return outputs{logits: flat(res[0]), logp: flat(res[1])}
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

// TestBackendsGoldenForward: one forward pass over golden cases' whole
// sequences: argmax at every generated position is llama2.c's greedy token and
// the recorded logits match to 1e-4, on both backends.
func TestBackendsGoldenForward(t *testing.T) {
	cfg, w := model.LoadStories(t)
	forBackends(t, func(t *testing.T, mb modelBackend) {
		ctx := context.New()
		if err := model.SetWeights(ctx.In("m"), cfg, w); err != nil {
			t.Fatal(err)
		}
		for _, c := range model.LoadGolden(t) {
			if c.Name != "empty_prompt" && c.Name != "prompt_00" {
				continue
			}
			seq := c.AllIDs[:len(c.AllIDs)-1]
			n := len(seq)
			mask := make([]float32, n)
			for i := range mask {
				mask[i] = 1
			}
			logits := mb.forward(t, ctx.In("m"), cfg, 1, n, seq, mask).logits
			v := cfg.VocabSize
			for p := len(c.PromptIDs) - 1; p < n; p++ {
				if got := model.Argmax(logits[p*v : (p+1)*v]); got != c.AllIDs[p+1] {
					t.Fatalf("%s: position %d: argmax %d, llama2.c %d", c.Name, p, got, c.AllIDs[p+1])
				}
			}
			for _, lg := range c.Logits {
				row := logits[lg.Pos*v : (lg.Pos+1)*v]
				d := 0.0
				for i, want := range lg.Values {
					d = math.Max(d, math.Abs(float64(row[i])-want))
				}
				if d > 1e-4 {
					t.Errorf("%s: pos %d: max |logit diff| %g > 1e-4", c.Name, lg.Pos, d)
				}
			}
		}
	})
}

// TestBackendsGoldenGenerate: greedy KV-cache generation of every golden
// prompt in one left-padded batch equals llama2.c token for token, through
// llama.NewGenerator (the seam the commands use) on both backends.
func TestBackendsGoldenGenerate(t *testing.T) {
	cfg, w := model.LoadStories(t)
	cases := model.LoadGolden(t)
	var prompts [][]int32
	maxNew := 0
	for _, c := range cases {
		prompts = append(prompts, c.PromptIDs)
		maxNew = max(maxNew, len(c.GeneratedIDs))
	}
	forBackends(t, func(t *testing.T, mb modelBackend) {
		gen, err := llama.NewGenerator(mb.be, cfg, w)
		if err != nil {
			t.Fatal(err)
		}
		ro, err := gen.Generate(prompts, model.GenerateOptions{MaxNewTokens: maxNew, EOS: -1, Pad: 0, Unk: -1})
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range cases {
			if got := ro.Seq[i][ro.PromptWidth : ro.PromptWidth+len(c.GeneratedIDs)]; !slices.Equal(got, c.GeneratedIDs) {
				t.Fatalf("%s: got %v, llama2.c %v", c.Name, got, c.GeneratedIDs)
			}
		}
	})
}

// shapeCase is a random model: GQA or MQA, tied or untied head, biases, LoRA,
// score heads.
type shapeCase struct {
	name  string
	cfg   model.Config
	lora  *model.LoRAConfig
	score int
}

func shapeCases() []shapeCase {
	base := model.Config{HiddenSize: 32, IntermediateSize: 44, NumLayers: 2, NumHeads: 4, NumKVHeads: 2, VocabSize: 37,
		MaxPositions: 64, RMSNormEps: 1e-5, RopeTheta: 10000, BOS: 1, EOS: 2}
	tied := base
	tied.TieWordEmbeddings, tied.NumKVHeads, tied.AttentionBias, tied.OBias = true, 4, true, true
	mqa := base
	mqa.NumKVHeads, mqa.HeadDim, mqa.NumLayers = 1, 12, 3
	return []shapeCase{
		{name: "gqa_untied", cfg: base},
		{name: "mha_tied_bias", cfg: tied},
		{name: "mqa_headdim", cfg: mqa},
		{name: "lora", cfg: base, lora: &model.LoRAConfig{Rank: 3, Alpha: 6, Targets: []string{"q_proj", "v_proj", "o_proj", "down_proj"}}},
		{name: "score1", cfg: base, score: 1},
		{name: "score2_tied_lora", cfg: tied, score: 2, lora: &model.LoRAConfig{Rank: 2, Alpha: 2, Targets: []string{"k_proj", "up_proj"}}},
	}
}

// build puts a random model of sc into a fresh context at scope "m" (LoRA B
// random, so the adapters matter) and returns it with its merged weights.
func (sc shapeCase) build(t *testing.T) (*context.Context, *model.Config, model.Weights) {
	t.Helper()
	cfg := sc.cfg
	w := model.RandomWeights(&cfg, 5)
	if sc.score > 0 {
		model.InitScoreHead(&cfg, w, sc.score, 3)
		delete(w, model.NameLMHead)
	}
	ctx := context.New()
	m := ctx.In("m")
	if err := model.SetWeights(m, &cfg, w); err != nil {
		t.Fatal(err)
	}
	if sc.lora != nil {
		model.SetTrainable(m, false)
		if err := model.AddLoRA(m, &cfg, *sc.lora, 9); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
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
		}
	}
	merged, err := model.GetWeights(m, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, &cfg, merged
}

// shapeBatch is a left-padded row, a right-padded row and a full row.
func shapeBatch() (b, tt int, ids []int32, mask []float32) {
	rows := [][]int32{{1, 5, 9, 3, 7, 2}, {1, 4, 4, 8, 30, 11, 6, 2, 9}, {1, 12, 36, 2}}
	left := []bool{true, false, false}
	tt = 9
	for r, row := range rows {
		pad := tt - len(row)
		for i := range tt {
			j := i
			if left[r] {
				j = i - pad
			}
			if j >= 0 && j < len(row) {
				ids, mask = append(ids, row[j]), append(mask, 1)
			} else {
				ids, mask = append(ids, 0), append(mask, 0)
			}
		}
	}
	return len(rows), tt, ids, mask
}

// TestBackendsShapes, on both backends and every shape case:
//   - the outputs equal the other backend's within 1e-4 of their largest magnitude;
//   - padding: each real row's outputs equal those of the row run alone unpadded;
//   - LoRA: the adapters equal their merge into the weights (model.GetWeights);
//   - tied heads: an untied copy with lm_head = embed_tokens gives the same logits.
func TestBackendsShapes(t *testing.T) {
	for _, sc := range shapeCases() {
		t.Run(sc.name, func(t *testing.T) {
			ctx, cfg, merged := sc.build(t)
			b, tt, ids, mask := shapeBatch()
			var ref outputs
			forBackends(t, func(t *testing.T, mb modelBackend) {
				o := mb.forward(t, ctx.In("m"), cfg, b, tt, ids, mask)
				out := o.logp
				if sc.score > 0 {
					out = o.scores
				}
				if ref.logp == nil && ref.scores == nil {
					ref = o
				} else {
					want := ref.logp
					if sc.score > 0 {
						want = ref.scores
					}
					scale := 0.0
					for _, v := range want {
						scale = math.Max(scale, math.Abs(float64(v)))
					}
					if d := maxAbsDiff(out, want); d > 1e-4*scale {
						t.Errorf("outputs differ from the go backend's by %g (largest %g)", d, scale)
					}
				}
				// Padding: every real position's output equals the row's alone.
				width := tt - 1
				if sc.score > 0 {
					width = tt * sc.score
				}
				for r := range b {
					var row []int32
					var at []int
					for i := range tt {
						if mask[r*tt+i] != 0 {
							row, at = append(row, ids[r*tt+i]), append(at, i)
						}
					}
					ones := make([]float32, len(row))
					for i := range ones {
						ones[i] = 1
					}
					alone := mb.forward(t, ctx.In("m"), cfg, 1, len(row), row, ones)
					for k, i := range at {
						var got, want []float32
						if sc.score > 0 {
							got, want = out[r*width+i*sc.score:r*width+(i+1)*sc.score], alone.scores[k*sc.score:(k+1)*sc.score]
						} else if k+1 < len(at) {
							got, want = out[r*width+i:r*width+i+1], alone.logp[k:k+1]
						}
						if d := maxAbsDiff(got, want); d > 1e-4 {
							t.Fatalf("row %d position %d: padded output differs from the row alone by %g", r, i, d)
						}
					}
				}
				// LoRA adapters equal their merge; a tied head equals an untied copy.
				if sc.lora != nil || (cfg.TieWordEmbeddings && sc.score == 0) {
					c2 := *cfg
					w2 := model.Weights{}
					for n, v := range merged {
						w2[n] = v
					}
					if c2.TieWordEmbeddings && sc.score == 0 {
						c2.TieWordEmbeddings = false
						e := merged[model.NameEmbed]
						w2[model.NameLMHead] = &model.Tensor{Shape: slices.Clone(e.Shape), Data: slices.Clone(e.Data)}
					}
					other := context.New()
					if err := model.SetWeights(other.In("m"), &c2, w2); err != nil {
						t.Fatal(err)
					}
					o2 := mb.forward(t, other.In("m"), &c2, b, tt, ids, mask)
					if d := maxAbsDiff(o2.logp, o.logp) + maxAbsDiff(o2.scores, o.scores); d > 1e-4 {
						t.Errorf("merged / untied model differs by %g", d)
					}
				}
			})
		})
	}
}

// TestBackendsBF16Checkpoint: a checkpoint saved in bf16 (--save-dtype bf16,
// or an HF bf16 safetensors) loads on both backends, widened to float32
// (model.Load) or kept as bf16 variables (model.LoadInto with bf16 storage,
// read widened by llama.FromContext), and gives exactly the outputs of the
// float32 model whose weights were rounded to bf16.
func TestBackendsBF16Checkpoint(t *testing.T) {
	for _, sc := range []shapeCase{shapeCases()[0], shapeCases()[4]} {
		t.Run(sc.name, func(t *testing.T) {
			_, cfg, w := sc.build(t)
			dir := t.TempDir()
			if err := model.SaveAs(dir, cfg, w, safetensors.BF16); err != nil {
				t.Fatal(err)
			}
			rounded := model.Weights{}
			for n, v := range w {
				r := make([]float32, len(v.Data))
				for i, x := range model.ToBF16(v.Data) {
					r[i] = x.Float32()
				}
				rounded[n] = &model.Tensor{Shape: v.Shape, Data: r}
			}
			b, tt, ids, mask := shapeBatch()
			forBackends(t, func(t *testing.T, mb modelBackend) {
				want := context.New()
				if err := model.SetWeights(want.In("m"), cfg, rounded); err != nil {
					t.Fatal(err)
				}
				ref := mb.forward(t, want.In("m"), cfg, b, tt, ids, mask)
				lcfg, lw, err := model.Load(dir)
				if err != nil {
					t.Fatal(err)
				}
				widened := context.New()
				if err := model.SetWeights(widened.In("m"), lcfg, lw); err != nil {
					t.Fatal(err)
				}
				kept := context.New()
				kcfg, err := model.LoadInto(dir, kept.In("m"), model.Storage{DType: dtypes.BFloat16})
				if err != nil {
					t.Fatal(err)
				}
				for name, c := range map[string]*context.Context{"widened": widened, "bf16 variables": kept} {
					ccfg := lcfg
					if c == kept {
						ccfg = kcfg
					}
					o := mb.forward(t, c.In("m"), ccfg, b, tt, ids, mask)
					if !slices.Equal(o.logp, ref.logp) || !slices.Equal(o.scores, ref.scores) {
						t.Errorf("%s: outputs differ from the f32 model with bf16-rounded weights", name)
					}
				}
			})
		})
	}
}

// TestBackendsSamplingAndEOS, through llama.NewGenerator on both backends:
// seeded sampling (temperature, top-p, repetition penalty) is reproducible,
// another seed changes it, and both backends draw the same rollout; a row
// stops at EOS with right pads and the spec §1.2 mask after it, the other rows
// continuing as before.
func TestBackendsSamplingAndEOS(t *testing.T) {
	cfg, w := model.LoadStories(t)
	prompts := [][]int32{{1, 403, 407}, {1}, {1, 261, 378, 432, 383}}
	opts := model.GenerateOptions{MaxNewTokens: 40, Temperature: 1, TopP: 0.9, RepetitionPenalty: 1.2, Seed: 42, EOS: 2, Pad: 0, Unk: 0}
	var first *model.Rollout
	forBackends(t, func(t *testing.T, mb modelBackend) {
		gen, err := llama.NewGenerator(mb.be, cfg, w)
		if err != nil {
			t.Fatal(err)
		}
		generate := func(o model.GenerateOptions) *model.Rollout {
			t.Helper()
			ro, err := gen.Generate(prompts, o)
			if err != nil {
				t.Fatal(err)
			}
			return ro
		}
		a, b := generate(opts), generate(opts)
		o43 := opts
		o43.Seed = 43
		c := generate(o43)
		for r := range prompts {
			if !slices.Equal(a.Seq[r], b.Seq[r]) {
				t.Fatalf("row %d: same seed, different samples", r)
			}
		}
		if slices.Equal(a.Seq[0], c.Seq[0]) && slices.Equal(a.Seq[1], c.Seq[1]) {
			t.Error("different seeds gave identical rollouts")
		}
		if first == nil {
			first = a
		} else {
			for r := range prompts {
				if !slices.Equal(a.Seq[r], first.Seq[r]) {
					t.Errorf("row %d: %s sampled %v, go %v", r, mb.name, a.Seq[r], first.Seq[r])
				}
			}
		}
		greedy := model.GenerateOptions{MaxNewTokens: 30, EOS: 2, Pad: 0, Unk: 0}
		ref := generate(greedy)
		stop := ref.Seq[0][ref.PromptWidth]
		greedy.EOS = stop // row 0's first token becomes EOS
		ro := generate(greedy)
		model.CheckEOSStop(t, ro, ref, stop)
	})
}
