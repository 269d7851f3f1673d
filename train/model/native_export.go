package model

import (
	"fmt"
	"slices"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// Hooks for engines outside GoMLX (native/llama) that must compute exactly
// what the graph and the generator do.

// RopeInvFreq returns RoPE's inverse frequencies θ^(-2i/dh), i < dh/2, with
// HF rope_scaling applied for sequences of length seqLen: the same table the
// graph builds.
func RopeInvFreq(cfg *Config, seqLen int) []float64 { return invFreq(cfg, seqLen) }

// PromptBucket is the multiple Generator rounds the prompt width up to.
const PromptBucket = 16

// Variables returns the model at ctx's scope as its variables hold it, for an
// engine outside GoMLX that runs, trains and writes back the model (native/llama):
// the weights by HF name, LoRA adapters unmerged ("<linear>.lora_A.weight",
// ".lora_B.weight"), weights shared with a base scope (ShareBase) read from
// there; the variable holding each weight; and the adapters' scale α/r (1
// without adapters). The LM head is absent when the model has none (tied or a
// score model).
func Variables(ctx *context.Context, cfg *Config) (Weights, map[string]*context.Variable, float64, error) {
	w, vars := Weights{}, map[string]*context.Variable{}
	add := func(name string, v *context.Variable) error {
		data, err := VariableData(v)
		if err != nil {
			return err
		}
		w[name] = &Tensor{Shape: slices.Clone(v.Shape().Dimensions), Data: data}
		vars[name] = v
		return nil
	}
	for _, name := range sortedKeys(ExpectedShapes(cfg, true)) {
		v := lookupVar(ctx, name)
		if v == nil {
			if name == NameLMHead {
				continue
			}
			return nil, nil, 0, fmt.Errorf("weights: variable %q missing in scope %q", name, ctx.Scope())
		}
		if err := add(name, v); err != nil {
			return nil, nil, 0, err
		}
		an, bn, ok := loraNames(name)
		if !ok {
			continue
		}
		av, bv := ctx.GetVariableByScopeAndName(ctx.Scope(), an), ctx.GetVariableByScopeAndName(ctx.Scope(), bn)
		if av == nil || bv == nil {
			continue
		}
		if err := add(an, av); err != nil {
			return nil, nil, 0, err
		}
		if err := add(bn, bv); err != nil {
			return nil, nil, 0, err
		}
	}
	return w, vars, context.GetParamOr(ctx, paramLoRAScale, 1.0), nil
}

// SetVariable stores host values into a model variable in the variable's own
// dtype (float32, or bfloat16 rounded to nearest even): the way back of Variables.
func SetVariable(v *context.Variable, data []float32) error {
	if v.Shape().Size() != len(data) {
		return fmt.Errorf("weights: %d values for variable %s of shape %s", len(data), v.ScopeAndName(), v.Shape())
	}
	var t *tensors.Tensor
	switch v.Shape().DType {
	case dtypes.Float32:
		t = tensors.FromFlatDataAndDimensions(slices.Clone(data), v.Shape().Dimensions...)
	case dtypes.BFloat16:
		t = tensors.FromFlatDataAndDimensions(ToBF16(data), v.Shape().Dimensions...)
	default:
		return fmt.Errorf("weights: variable %s: dtype %s not supported", v.ScopeAndName(), v.Shape().DType)
	}
	if err := v.SetValue(t); err != nil {
		return fmt.Errorf("weights: variable %s: %w", v.ScopeAndName(), err)
	}
	return nil
}

// VariableData returns a float32 or bfloat16 variable's values as float32.
func VariableData(v *context.Variable) ([]float32, error) {
	t, err := v.Value()
	if err != nil {
		return nil, fmt.Errorf("weights: variable %s: %w", v.ScopeAndName(), err)
	}
	data, err := float32Of(t)
	if err != nil {
		return nil, fmt.Errorf("weights: variable %s: %w", v.ScopeAndName(), err)
	}
	return data, nil
}
