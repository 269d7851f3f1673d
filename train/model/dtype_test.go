package model

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/optim"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// relErr is the relative L2 error ‖got−want‖ / ‖want‖.
func relErr(got, want []float32) float64 {
	d, m := 0.0, 1e-30
	for i := range want {
		e := float64(got[i] - want[i])
		d += e * e
		m += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(d / m)
}

// TestBF16MatchesF32 runs the same LoRA setup (frozen base, actor adapters on
// every projection with non-zero B, a critic with a detached float32 score
// head) in float32 and in bf16 (frozen base stored in bf16, bf16 matmuls,
// float32 masters and AdamW moments) on the pure-Go backend, and compares the
// loss, every gradient and the weights after one AdamW step.
//
// Both runs use the same bf16-rounded frozen weights, so this measures bf16
// compute (and the bf16 cast of the float32 adapters). Tolerances (relative
// L2 over all trainable tensors; measured at commit time: loss 1e-4,
// gradients 1.9e-2, update 0.14): loss 1e-3, gradients 5e-2, AdamW update
// 0.2 (the first Adam step is ≈ lr·sign(g), so entries with near-zero
// gradients flip by 2·lr). In a saturated regime (weights ×3, loss above
// ln V) the same comparison gives ~10% gradient error, as rounding the
// adapters alone does: bf16 training is only as good as the problem's
// conditioning. A graph that ignored the dtype fails the last check.
func TestBF16MatchesF32(t *testing.T) {
	if err := EnableFastGradients(); err != nil {
		t.Fatal(err)
	}
	be := getBackend(t)
	cfg := tinyConfig()
	cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize = 64, 96, 64
	w := RandomWeights(cfg, 5)
	ids, mask := padded([][]int32{{1, 5, 9, 3, 7, 2, 11, 40}, {1, 4, 4, 8, 60}}, 9, true)
	idsT, maskT := tensors.FromFlatDataAndDimensions(ids, 2, 9), tensors.FromFlatDataAndDimensions(mask, 2, 9)
	type result struct {
		loss            float32
		grads           map[string][]float32
		before, updated map[string][]float32
	}
	// wr is w rounded to bf16: the f32 reference runs on the same frozen
	// weights as the bf16 run, so the comparison measures bf16 compute.
	wr := Weights{}
	for n, tt := range w {
		r := NewTensor(tt.Shape...)
		for i, x := range tt.Data {
			r.Data[i] = safetensors.BF16ToFloat32(safetensors.Float32ToBF16(x))
		}
		wr[n] = r
	}
	run := func(dt dtypes.DType) result {
		root := context.New()
		SetComputeDType(root, dt)
		base, actor, critic := root.In("sft"), root.In("actor"), root.In("critic")
		if err := SetWeightsWith(base, cfg, wr, Storage{DType: dt, Backend: be}); err != nil {
			t.Fatal(err)
		}
		SetTrainable(base, false)
		ShareBase(actor, base)
		ShareBase(critic, base)
		if err := AddLoRA(actor, cfg, LoRAConfig{Rank: 4, Alpha: 8, Targets: LoRATargets}, 1); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(3, 3))
		actor.EnumerateVariablesInScope(func(v *context.Variable) {
			if v.Shape().DType != dtypes.Float32 {
				t.Fatalf("trainable %s is %s, want a float32 master", v.ScopeAndName(), v.Shape().DType)
			}
			if strings.HasSuffix(v.Name(), "lora_B.weight") {
				b := make([]float32, v.Shape().Size())
				for i := range b {
					b[i] = float32(rng.NormFloat64() * 0.05)
				}
				if err := v.SetValue(tensors.FromFlatDataAndDimensions(b, v.Shape().Dimensions...)); err != nil {
					t.Fatal(err)
				}
			}
		})
		if err := Detach(critic, NameScoreW, NameScoreB); err != nil {
			t.Fatal(err)
		}
		SetTrainable(actor, true)
		SetTrainable(critic, true)
		base.EnumerateVariablesInScope(func(v *context.Variable) {
			if v.Shape().DType != dt {
				t.Fatalf("frozen %s stored as %s, want %s", v.ScopeAndName(), v.Shape().DType, dt)
			}
		})
		opt, err := optim.NewAdamW(optim.AdamWConfig{StateScope: "/optim", WeightDecay: 0.01})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		res := result{grads: map[string][]float32{}, before: map[string][]float32{}, updated: map[string][]float32{}}
		exec, err := context.NewExec(be, root.Reuse(), func(ctx *context.Context, ids, mask *G.Node) []*G.Node {
			loss := G.Neg(G.ReduceAllMean(TokenLogProbs(ctx.In("actor"), cfg, ids, mask)))
			loss = G.Add(loss, G.ReduceAllMean(G.Square(Scores(ctx.In("critic"), cfg, ids, mask))))
			vars := optim.TrainableVariables(ctx, ids.Graph(), "/")
			grads := optim.Gradients(loss, vars)
			names = names[:0]
			for _, v := range vars {
				names = append(names, v.ScopeAndName())
			}
			opt.Apply(ctx, G.Const(ids.Graph(), float32(1e-3)), vars, grads)
			return append([]*G.Node{loss}, grads...)
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, sc := range []*context.Context{actor, critic} {
			sc.EnumerateVariablesInScope(func(v *context.Variable) {
				val, err := v.Value()
				if err != nil {
					t.Fatal(err)
				}
				res.before[v.ScopeAndName()] = tensors.MustCopyFlatData[float32](val)
			})
		}
		out, err := exec.Exec(idsT, maskT)
		if err != nil {
			t.Fatal(err)
		}
		res.loss = tensors.MustCopyFlatData[float32](out[0])[0]
		for i, n := range names {
			res.grads[n] = tensors.MustCopyFlatData[float32](out[1+i])
		}
		for v := range root.IterVariables() {
			if _, ok := res.grads[v.ScopeAndName()]; ok {
				val, err := v.Value()
				if err != nil {
					t.Fatal(err)
				}
				res.updated[v.ScopeAndName()] = tensors.MustCopyFlatData[float32](val)
			}
		}
		return res
	}
	f32, bf16 := run(dtypes.Float32), run(dtypes.BFloat16)
	if len(f32.grads) != 2*7*cfg.NumLayers+2 || len(bf16.grads) != len(f32.grads) {
		t.Fatalf("trained %d (f32) and %d (bf16) variables", len(f32.grads), len(bf16.grads))
	}
	if e := math.Abs(float64(bf16.loss-f32.loss)) / math.Abs(float64(f32.loss)); e > 1e-3 {
		t.Errorf("loss: bf16 %g vs f32 %g (rel %.2g > 1e-3)", bf16.loss, f32.loss, e)
	}
	// Global errors: every trainable tensor's gradient (and AdamW update)
	// concatenated; per tensor, the worst is logged (a tensor whose gradient
	// is a small difference, such as k_proj's through a near-uniform softmax,
	// can be far off in bf16, as in PyTorch).
	var gAll, gAllB, uAll, uAllB []float32
	worstG, worstName := 0.0, ""
	for n, g := range f32.grads {
		gAll, gAllB = append(gAll, g...), append(gAllB, bf16.grads[n]...)
		if e := relErr(bf16.grads[n], g); e > worstG {
			worstG, worstName = e, n
		}
		for i := range g {
			uAll = append(uAll, f32.updated[n][i]-f32.before[n][i])
			uAllB = append(uAllB, bf16.updated[n][i]-bf16.before[n][i])
		}
	}
	eG, eU := relErr(gAllB, gAll), relErr(uAllB, uAll)
	t.Logf("bf16 vs f32: loss %g vs %g; gradients rel. L2 error %.3g (worst tensor %s: %.3g); AdamW update rel. L2 error %.3g",
		bf16.loss, f32.loss, eG, worstName, worstG, eU)
	if eG > 5e-2 {
		t.Errorf("gradients: relative L2 error %.3g > 5e-2", eG)
	}
	if eU > 0.2 {
		t.Errorf("AdamW update: relative L2 error %.3g > 0.2", eU)
	}
	anyDiff := eG > 0
	if !anyDiff || bf16.loss == f32.loss {
		t.Error("bf16 and f32 runs are identical: the dtype had no effect")
	}
}

// TestLoadIntoBF16 writes a bf16 safetensors model and loads it with
// LoadInto: stored as bf16 without widening (bit-exact), or as float32.
func TestLoadIntoBF16(t *testing.T) {
	be := getBackend(t)
	cfg := tinyConfig()
	cfg.ScoreDim = 0
	w := RandomWeights(cfg, 9)
	dir := t.TempDir()
	if err := SaveAs(dir, cfg, w, safetensors.BF16); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil {
		t.Fatal(err)
	}
	for _, dt := range []dtypes.DType{dtypes.BFloat16, dtypes.Float32} {
		ctx := context.New().In("m")
		got, err := LoadInto(dir, ctx, Storage{DType: dt, Backend: be})
		if err != nil {
			t.Fatal(err)
		}
		if got.HiddenSize != cfg.HiddenSize {
			t.Fatalf("config: hidden %d", got.HiddenSize)
		}
		back, err := GetWeights(ctx, got)
		if err != nil {
			t.Fatal(err)
		}
		for n, tt := range w {
			v := ctx.GetVariableByScopeAndName(ctx.Scope(), n)
			if v == nil || v.Shape().DType != dt {
				t.Fatalf("%s: variable %v, want dtype %s", n, v, dt)
			}
			for i, x := range tt.Data {
				want := safetensors.BF16ToFloat32(safetensors.Float32ToBF16(x))
				if back[n].Data[i] != want {
					t.Fatalf("%s[%d] = %g, want %g (bf16 of %g)", n, i, back[n].Data[i], want, x)
				}
			}
		}
	}
}

// TestRandomLogitsDTypes: a random model's logits in bf16 agree with f32
// within bf16 error (relative L2 < 2e-2 here) and differ from them (the
// check that scale.sh runs at 1B shape on the GPU).
func TestRandomLogitsDTypes(t *testing.T) {
	be := getBackend(t)
	cfg, _ := Preset("stories260K")
	f32, err := RandomLogits(be, cfg, 3, dtypes.Float32, 2, 16)
	if err != nil {
		t.Fatal(err)
	}
	bf16, err := RandomLogits(be, cfg, 3, dtypes.BFloat16, 2, 16)
	if err != nil {
		t.Fatal(err)
	}
	d := CompareLogits(bf16, f32, cfg.VocabSize)
	t.Logf("bf16 vs f32 logits: %+v", d)
	if d.RelL2 > 2e-2 || d.RelL2 == 0 || d.Top1 < 0.9 {
		t.Fatalf("bf16 vs f32 logits: %+v", d)
	}
}

// TestXLAFormsMatch: the forms used on XLA (Slice/Concatenate RoPE and
// log-prob trimming, norm weights on the activations) compute the same
// log-probs and scores as the pure-Go forms (0/1 matrices, folded norms).
func TestXLAFormsMatch(t *testing.T) {
	be := getBackend(t)
	cfg := tinyConfig()
	w := RandomWeights(cfg, 4)
	ctx := context.New().In("m")
	if err := SetWeights(ctx, cfg, w); err != nil {
		t.Fatal(err)
	}
	ids, mask := padded([][]int32{{1, 5, 9, 3, 7, 2, 11}, {1, 4, 4, 8}}, 40, true) // 80 rows > widths: folding on
	run := func() ([]float32, []float32) {
		out, err := context.ExecOnceN(be, ctx.Reuse(), func(ctx *context.Context, ids, mask *G.Node) []*G.Node {
			return []*G.Node{TokenLogProbs(ctx, cfg, ids, mask), Scores(ctx, cfg, ids, mask)}
		}, tensors.FromFlatDataAndDimensions(ids, 2, 40), tensors.FromFlatDataAndDimensions(mask, 2, 40))
		if err != nil {
			t.Fatal(err)
		}
		return tensors.MustCopyFlatData[float32](out[0]), tensors.MustCopyFlatData[float32](out[1])
	}
	lp, sc := run()
	forceXLAForms = true
	defer func() { forceXLAForms = false }()
	lp2, sc2 := run()
	if e := relErr(lp2, lp); e > 1e-5 {
		t.Errorf("log-probs: XLA forms differ by %.3g", e)
	}
	if e := relErr(sc2, sc); e > 1e-5 {
		t.Errorf("scores: XLA forms differ by %.3g", e)
	}
}

// TestSaveDTypeFollowsCheckpoint: a model loaded from a bf16 checkpoint is saved in bf16 (HF's
// default), an explicit f16 wins, and an unknown dtype is an error naming it.
func TestSaveDTypeFollowsCheckpoint(t *testing.T) {
	cfg := tinyConfig()
	cfg.ScoreDim = 0
	w := RandomWeights(cfg, 2)
	for _, c := range []struct{ torch, want string }{{"", "F32"}, {"bfloat16", "BF16"}, {"f16", "F16"}} {
		dir := t.TempDir()
		sc := *cfg
		sc.TorchDType = c.torch
		if err := SaveWithTokenizer(dir, &sc, w, ""); err != nil {
			t.Fatal(err)
		}
		set, err := safetensors.OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		dt, _, err := set.Info(NameEmbed)
		set.Close()
		if err != nil || string(dt) != c.want {
			t.Fatalf("torch_dtype %q: saved as %s (%v), want %s", c.torch, dt, err, c.want)
		}
	}
	if _, err := SaveDType("int8"); err == nil || !strings.Contains(err.Error(), "int8") {
		t.Fatalf("SaveDType(int8) = %v", err)
	}
}
