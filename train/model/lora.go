package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// Context parameters (scoped hyperparameters) that make a model scope read
// frozen weights from another scope and add LoRA adapters.
const (
	paramBaseScope = "saferlhf_model_base_scope"
	paramLoRAScale = "saferlhf_model_lora_scale"
)

// ShareBase makes the model at ctx's scope read every weight it does not
// hold itself from base's scope: e.g. the actor (LoRA adapters only) over the
// frozen SFT weights that the reference model also reads, or a critic (its
// own score head and adapters) over the reward model's trunk. Weights in
// ctx's own scope take precedence.
func ShareBase(ctx, base *context.Context) {
	ctx.SetParam(paramBaseScope, base.Scope())
}

// LoRAConfig configures low-rank adapters (Hu et al. 2021, as PEFT): each
// target linear W [out, in] gets A [r, in] (uniform ±1/sqrt(in), PEFT's
// kaiming-uniform default) and B [out, r] (zeros), and the model computes
// x·Wᵀ + (Alpha/Rank)·(x·Aᵀ)·Bᵀ (never forming W + (Alpha/Rank)·B·A), so a
// fresh adapter leaves the model unchanged.
type LoRAConfig struct {
	Rank  int
	Alpha float64
	// Targets are projection names: q_proj k_proj v_proj o_proj gate_proj
	// up_proj down_proj (default: the four attention projections).
	Targets []string
}

// LoRATargets lists the projections LoRA can adapt.
var LoRATargets = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

func loraTargetPath(target string) (string, error) {
	switch target {
	case "q_proj", "k_proj", "v_proj", "o_proj":
		return "self_attn." + target, nil
	case "gate_proj", "up_proj", "down_proj":
		return "mlp." + target, nil
	}
	return "", fmt.Errorf("lora: unknown target %q (want one of %v)", target, LoRATargets)
}

// targets returns lc.Targets, or the default four attention projections.
func (lc LoRAConfig) targets() []string {
	if len(lc.Targets) == 0 {
		return []string{"q_proj", "k_proj", "v_proj", "o_proj"}
	}
	return lc.Targets
}

// Params returns the number of adapter parameters AddLoRA creates for a model of cfg (all
// layers); unknown targets, which AddLoRA refuses, add none.
func (lc LoRAConfig) Params(cfg *Config) int64 {
	exp := ExpectedShapes(cfg, false)
	var n int64
	for _, tg := range lc.targets() {
		p, err := loraTargetPath(tg)
		if err != nil {
			continue
		}
		if s, ok := exp[LayerName(0, p+".weight")]; ok {
			n += int64(lc.Rank * (s[0] + s[1]))
		}
	}
	return n * int64(cfg.NumLayers)
}

// AddLoRA creates trainable adapter variables in ctx's scope for every layer's
// target projections (names "<linear>.lora_A.weight" / ".lora_B.weight", as
// PEFT) and records the scale Alpha/Rank. The base weights come from ctx's
// scope or, with ShareBase, from the base scope; freeze them with
// SetTrainable(base, false).
func AddLoRA(ctx *context.Context, cfg *Config, lc LoRAConfig, seed uint64) error {
	if lc.Rank <= 0 || lc.Alpha <= 0 {
		return fmt.Errorf("lora: rank %d and alpha %g must be > 0", lc.Rank, lc.Alpha)
	}
	targets := lc.targets()
	exp := ExpectedShapes(cfg, false)
	rng := rand.New(rand.NewPCG(seed, 0x10a4))
	for l := 0; l < cfg.NumLayers; l++ {
		for _, tg := range targets {
			p, err := loraTargetPath(tg)
			if err != nil {
				return err
			}
			shape := exp[LayerName(l, p+".weight")]
			out, in := shape[0], shape[1]
			a := make([]float32, lc.Rank*in)
			bound := 1 / math.Sqrt(float64(in))
			for i := range a {
				a[i] = float32((2*rng.Float64() - 1) * bound)
			}
			for _, v := range []struct {
				name string
				t    *tensors.Tensor
			}{
				{LayerName(l, p+".lora_A.weight"), tensors.FromFlatDataAndDimensions(a, lc.Rank, in)},
				{LayerName(l, p+".lora_B.weight"), tensors.FromFlatDataAndDimensions(make([]float32, out*lc.Rank), out, lc.Rank)},
			} {
				if err := catch(func() { ctx.Checked(false).VariableWithValue(v.name, v.t).Trainable = true }); err != nil {
					return fmt.Errorf("lora: %s: %w", v.name, err)
				}
			}
		}
	}
	ctx.SetParam(paramLoRAScale, lc.Alpha/float64(lc.Rank))
	return nil
}

// lookupVar finds a model variable in ctx's scope, else in its shared base.
func lookupVar(ctx *context.Context, name string) *context.Variable {
	if v := ctx.GetVariableByScopeAndName(ctx.Scope(), name); v != nil {
		return v
	}
	if base, ok := ctx.GetParam(paramBaseScope); ok {
		if s, ok := base.(string); ok && s != ctx.Scope() {
			return ctx.GetVariableByScopeAndName(s, name)
		}
	}
	return nil
}

// loraNames returns the adapter names of a linear weight name.
func loraNames(name string) (a, b string, ok bool) {
	if !strings.HasSuffix(name, "_proj.weight") {
		return "", "", false
	}
	stem := strings.TrimSuffix(name, ".weight")
	return stem + ".lora_A.weight", stem + ".lora_B.weight", true
}

// mergeLoRA adds scale·B·A to host weights w for adapters in ctx's scope.
func mergeLoRA(ctx *context.Context, w Weights) error {
	scale := context.GetParamOr(ctx, paramLoRAScale, 1.0)
	for _, name := range w.Names() {
		an, bn, ok := loraNames(name)
		if !ok {
			continue
		}
		av := ctx.GetVariableByScopeAndName(ctx.Scope(), an)
		bv := ctx.GetVariableByScopeAndName(ctx.Scope(), bn)
		if av == nil || bv == nil {
			continue
		}
		at, err := av.Value()
		if err != nil {
			return err
		}
		bt, err := bv.Value()
		if err != nil {
			return err
		}
		a, err := float32Of(at)
		if err != nil {
			return err
		}
		b, err := float32Of(bt)
		if err != nil {
			return err
		}
		r := at.Shape().Dimensions[0]
		out, in := w[name].Shape[0], w[name].Shape[1]
		merged := slices.Clone(w[name].Data)
		for o := 0; o < out; o++ {
			for k := 0; k < r; k++ {
				c := float32(scale) * b[o*r+k]
				if c == 0 {
					continue
				}
				row := a[k*in : (k+1)*in]
				dst := merged[o*in : (o+1)*in]
				for i := range dst {
					dst[i] += c * row[i]
				}
			}
		}
		w[name] = &Tensor{Shape: slices.Clone(w[name].Shape), Data: merged}
	}
	return nil
}

// Detach gives ctx's scope its own trainable copy of the named weights now
// read from the shared base (ShareBase), e.g. a critic's score head over the
// frozen reward model: Detach(critic, NameScoreW, NameScoreB).
func Detach(ctx *context.Context, names ...string) error {
	for _, name := range names {
		if ctx.GetVariableByScopeAndName(ctx.Scope(), name) != nil {
			continue
		}
		v := lookupVar(ctx, name)
		if v == nil {
			return fmt.Errorf("detach: variable %q not found in scope %q or its base", name, ctx.Scope())
		}
		val, err := v.Value()
		if err != nil {
			return fmt.Errorf("detach: %q: %w", name, err)
		}
		data, err := float32Of(val) // trainable: a float32 master copy
		if err != nil {
			return fmt.Errorf("detach: %q: %w", name, err)
		}
		t := tensors.FromFlatDataAndDimensions(data, val.Shape().Dimensions...)
		if err := catch(func() { ctx.Checked(false).VariableWithValue(name, t).Trainable = true }); err != nil {
			return fmt.Errorf("detach: %q: %w", name, err)
		}
	}
	return nil
}
