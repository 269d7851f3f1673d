package checkpoint

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/safetensors"
)

var toST = map[dtypes.DType]safetensors.DType{
	dtypes.Float64: safetensors.F64, dtypes.Float32: safetensors.F32, dtypes.Float16: safetensors.F16,
	dtypes.BFloat16: safetensors.BF16, dtypes.Int64: safetensors.I64, dtypes.Int32: safetensors.I32,
	dtypes.Int16: safetensors.I16, dtypes.Int8: safetensors.I8, dtypes.Uint64: safetensors.U64,
	dtypes.Uint32: safetensors.U32, dtypes.Uint16: safetensors.U16, dtypes.Uint8: safetensors.U8,
	dtypes.Bool: safetensors.Bool,
}

// trainableKey is the safetensors metadata key listing the trainable variables.
const trainableKey = "saferlhf.trainable"

// ContextTensors returns the variables of ctx for which keep returns true (all
// if keep is nil) as tensors named by their full path ("/optim/policy/..../weight_m1"),
// in their own dtype with their bytes unchanged, sorted by name: the TrainState
// of a Checkpoint. The bytes are streamed from the variables when the
// checkpoint is written (no copy), so save before the variables change.
// Typical keep: skip the model weights, which go to Checkpoint.Weights.
func ContextTensors(ctx *context.Context, keep func(v *context.Variable) bool) ([]safetensors.Tensor, error) {
	var ts []safetensors.Tensor
	for v := range ctx.IterVariables() {
		if keep != nil && !keep(v) {
			continue
		}
		t, err := v.Value()
		if err != nil {
			return nil, fmt.Errorf("checkpoint: variable %s: %w", v.ScopeAndName(), err)
		}
		dt, ok := toST[t.DType()]
		if !ok {
			return nil, fmt.Errorf("checkpoint: variable %s: dtype %s has no safetensors equivalent", v.ScopeAndName(), t.DType())
		}
		name := v.ScopeAndName()
		stream := func(w io.Writer) error {
			if t.Shape().Size() == 0 {
				return nil
			}
			var werr error
			if err := t.ConstBytes(func(b []byte) { _, werr = w.Write(b) }); err != nil {
				return fmt.Errorf("checkpoint: variable %s: %w", name, err)
			}
			return werr
		}
		ts = append(ts, safetensors.Tensor{Name: name, DType: dt, Shape: append([]int{}, t.Shape().Dimensions...), Stream: stream})
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
	return ts, nil
}

// TrainableMetadata returns safetensors metadata recording which of ts are trainable
// variables of ctx, so that RestoreContext recreates missing variables correctly.
func TrainableMetadata(ctx *context.Context, ts []safetensors.Tensor) map[string]string {
	var names []string
	for _, t := range ts {
		scope, name := splitPath(t.Name)
		if v := ctx.GetVariableByScopeAndName(scope, name); v != nil && v.Trainable {
			names = append(names, t.Name)
		}
	}
	b, _ := json.Marshal(names)
	return map[string]string{trainableKey: string(b)}
}

// RestoreContext sets every variable of ctx named in f (as written from
// ContextTensors) to the stored bytes, creating the variables that do not
// exist yet (optimizer state before the first step) as non-trainable. Shapes
// and dtypes of existing variables must match.
func RestoreContext(ctx *context.Context, f *safetensors.File) error {
	fromST := map[safetensors.DType]dtypes.DType{}
	for k, v := range toST {
		fromST[v] = k
	}
	for _, n := range f.Names() {
		ti, err := f.TensorInfo(n)
		if err != nil {
			return err
		}
		dt, ok := fromST[ti.DType]
		if !ok {
			return fmt.Errorf("checkpoint %s: tensor %q: dtype %s not supported", f.Path(), n, ti.DType)
		}
		raw, err := f.Bytes(n)
		if err != nil {
			return err
		}
		t := tensors.FromShape(shapes.Make(dt, ti.Shape...))
		if len(raw) > 0 {
			if err := t.MutableBytes(func(b []byte) { copy(b, raw) }); err != nil {
				return fmt.Errorf("checkpoint %s: tensor %q: %w", f.Path(), n, err)
			}
		}
		scope, name := splitPath(n)
		if v := ctx.GetVariableByScopeAndName(scope, name); v != nil {
			if !v.Shape().Equal(t.Shape()) {
				return fmt.Errorf("checkpoint %s: variable %s has shape %s, checkpoint has %s", f.Path(), n, v.Shape(), t.Shape())
			}
			if err := v.SetValue(t); err != nil {
				return fmt.Errorf("checkpoint %s: variable %s: %w", f.Path(), n, err)
			}
			continue
		}
		v := ctx.Checked(false).InAbsPath(scope).VariableWithValue(name, t)
		v.SetTrainable(isTrainable(f.Metadata(), n))
	}
	return nil
}

func isTrainable(meta map[string]string, name string) bool {
	var names []string
	if err := json.Unmarshal([]byte(meta[trainableKey]), &names); err != nil {
		return false
	}
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// splitPath splits "/a/b/name" into scope "/a/b" and name (scope "/" at the root).
func splitPath(p string) (scope, name string) {
	i := strings.LastIndex(p, context.ScopeSeparator)
	if i < 0 {
		return context.ScopeSeparator, p
	}
	scope, name = p[:i], p[i+1:]
	if scope == "" {
		scope = context.ScopeSeparator
	}
	return scope, name
}
