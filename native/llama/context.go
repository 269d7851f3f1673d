package llama

import (
	"fmt"
	"maps"
	"slices"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
)

// The way between a GoMLX context (where checkpoints, the graph path and the
// rest of the trainer keep a model) and a native Model: a model trained
// natively writes its weights and AdamW state into the same variables, under
// the same names, that the graph path uses, so a checkpoint is the same
// whichever engine trained.

// Vars maps each parameter name of a Model read by FromContext to the context
// variable holding it.
type Vars map[string]*context.Variable

// FromContext builds a native model from the model at ctx's scope as its
// variables hold it (model.Variables: LoRA adapters unmerged with their scale,
// shared-base weights read from the base scope). A parameter is trainable when
// its variable is. It also returns the variables, for WriteContext and ReadContext.
func FromContext(ctx *context.Context, cfg *model.Config) (*Model, Vars, error) {
	w, vars, scale, err := model.Variables(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("llama: %w", err)
	}
	m, err := New(cfg, w, scale)
	if err != nil {
		return nil, nil, err
	}
	m.SetTrainable(func(name string) bool { return vars[name].Trainable })
	return m, Vars(vars), nil
}

// WriteContext stores the named parameters (every one when names is nil) into
// their variables, in each variable's dtype.
func (m *Model) WriteContext(vars Vars, names []string) error {
	if names == nil {
		names = m.Names()
	}
	for _, n := range names {
		v, p := vars[n], m.Params[n]
		if v == nil || p == nil {
			return fmt.Errorf("llama: no variable or parameter %q", n)
		}
		if err := model.SetVariable(v, p); err != nil {
			return fmt.Errorf("llama: %w", err)
		}
	}
	return nil
}

// ReadContext copies every variable's value into its parameter (after the
// context was restored from a checkpoint).
func (m *Model) ReadContext(vars Vars) error {
	for _, n := range m.Names() {
		v := vars[n]
		if v == nil {
			return fmt.Errorf("llama: no variable for parameter %q", n)
		}
		data, err := floats(v)
		if err != nil {
			return err
		}
		if len(data) != len(m.Params[n]) {
			return fmt.Errorf("llama: variable %s has %d values, parameter %q %d", v.ScopeAndName(), len(data), n, len(m.Params[n]))
		}
		copy(m.Params[n], data)
	}
	return nil
}

func floats(v *context.Variable) ([]float32, error) {
	data, err := model.VariableData(v)
	if err != nil {
		return nil, fmt.Errorf("llama: %w", err)
	}
	return data, nil
}

// graphOptimizer is train/optim's AdamW with o's configuration: it names the state variables.
func (o *AdamW) graphOptimizer() (*optim.AdamW, error) { return optim.NewAdamW(o.cfg) }

// SaveState writes the update count and the moments of the parameters in vars
// into ctx as train/optim's AdamW keeps them: StateScope/step (float32) and,
// for a parameter held by variable v, StateScope+v.Scope()/v.Name()+"_m1" and
// "_m2" (float32, created when missing). Parameters without moments (never
// updated) are left out, as the graph path leaves out variables it does not train.
func (o *AdamW) SaveState(ctx *context.Context, vars Vars) error {
	g, err := o.graphOptimizer()
	if err != nil {
		return err
	}
	if err := g.StepVariable(ctx).SetValue(tensors.FromScalar(float32(o.Step))); err != nil {
		return fmt.Errorf("llama: adamw step: %w", err)
	}
	for _, n := range slices.Sorted(maps.Keys(o.M)) {
		v := vars[n]
		if v == nil {
			return fmt.Errorf("llama: adamw: no variable for parameter %q", n)
		}
		for i, data := range [][]float32{o.M[n], o.U[n]} {
			scope, name := g.StatePath(v, []string{"_m1", "_m2"}[i])
			t := tensors.FromFlatDataAndDimensions(append([]float32(nil), data...), v.Shape().Dimensions...)
			sv := ctx.GetVariableByScopeAndName(scope, name)
			if sv == nil {
				ctx.Checked(false).InAbsPath(scope).VariableWithValue(name, t).SetTrainable(false)
				continue
			}
			if err := sv.SetValue(t); err != nil {
				return fmt.Errorf("llama: adamw state %s/%s: %w", scope, name, err)
			}
		}
	}
	return nil
}

// LoadState reads what SaveState writes (or the graph path's AdamW left): the
// update count and the moments of the parameters in vars that have them in ctx.
// Parameters without moments in ctx start from zero moments; with Owns, only
// the owned parameters' moments are read.
func (o *AdamW) LoadState(ctx *context.Context, vars Vars) error {
	g, err := o.graphOptimizer()
	if err != nil {
		return err
	}
	o.Step = int64(g.Step(ctx))
	o.M, o.U = map[string][]float32{}, map[string][]float32{}
	for _, n := range slices.Sorted(maps.Keys(vars)) {
		if o.Owns != nil && !o.Owns(n) {
			continue
		}
		v := vars[n]
		var mu [2][]float32
		for i, suffix := range []string{"_m1", "_m2"} {
			scope, name := g.StatePath(v, suffix)
			sv := ctx.GetVariableByScopeAndName(scope, name)
			if sv == nil {
				break
			}
			if !sv.Shape().Equal(shapes.Make(dtypes.Float32, v.Shape().Dimensions...)) {
				return fmt.Errorf("llama: adamw state %s/%s has shape %s, parameter %q %s", scope, name, sv.Shape(), n, v.Shape())
			}
			if mu[i], err = floats(sv); err != nil {
				return err
			}
		}
		if mu[0] != nil && mu[1] != nil {
			o.M[n], o.U[n] = mu[0], mu[1]
		}
	}
	return nil
}
