package checkpoint

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
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

// inWeightsKey is the training-state metadata key listing the variables stored in the weights
// (Checkpoint.WeightsScope), as {"variable": "weight name"}.
const inWeightsKey = "saferlhf.in_weights"

// digests maps tensor names to the sha256 of their bytes.
type digests map[string][sha256.Size]byte

// recordDigests returns ws with each streamed tensor's Stream also hashing what it writes into d
// (under the tensor's name), so that dropStoredWeights compares against the weights as written
// instead of streaming them a second time.
func recordDigests(ws []safetensors.Tensor, d digests) []safetensors.Tensor {
	out := slices.Clone(ws)
	for i := range out {
		t := &out[i]
		if t.Stream == nil {
			continue
		}
		name, stream := t.Name, t.Stream
		t.Stream = func(w io.Writer) error {
			h := sha256.New()
			if err := stream(io.MultiWriter(w, h)); err != nil {
				return err
			}
			d[name] = [sha256.Size]byte(h.Sum(nil))
			return nil
		}
	}
	return out
}

// dropStoredWeights returns ts without the tensors scope/N equal (dtype, shape, bytes) to weight N
// of ws, and the dropped variable → weight names. The bytes are compared by sha256: a weight's is
// taken from written (recordDigests) when there, and a streamed tensor streams into the hash,
// never into a host copy.
func dropStoredWeights(scope string, ws, ts []safetensors.Tensor, written digests) ([]safetensors.Tensor, map[string]string, error) {
	if scope == "" || len(ws) == 0 {
		return ts, nil, nil
	}
	byName := make(map[string]*safetensors.Tensor, len(ws))
	for i := range ws {
		byName[ws[i].Name] = &ws[i]
	}
	var keep []safetensors.Tensor
	dropped := map[string]string{}
	for _, t := range ts {
		n, ok := strings.CutPrefix(t.Name, scope+context.ScopeSeparator)
		w := byName[n]
		if !ok || w == nil || dtypeOf(w) != dtypeOf(&t) || !slices.Equal(w.Shape, t.Shape) {
			keep = append(keep, t)
			continue
		}
		a, okA, err := tensorDigest(&t)
		if err != nil {
			return nil, nil, err
		}
		b, okB := written[w.Name]
		if !okB {
			if b, okB, err = tensorDigest(w); err != nil {
				return nil, nil, err
			}
		}
		if !okA || !okB || a != b {
			keep = append(keep, t)
			continue
		}
		dropped[t.Name] = n
	}
	return keep, dropped, nil
}

func dtypeOf(t *safetensors.Tensor) safetensors.DType {
	if t.DType == "" {
		return safetensors.F32
	}
	return t.DType
}

// tensorDigest returns the sha256 of t's little-endian bytes (ok false when t holds float32
// values of another dtype).
func tensorDigest(t *safetensors.Tensor) (sum [sha256.Size]byte, ok bool, err error) {
	switch {
	case t.Data != nil:
		return sha256.Sum256(t.Data), true, nil
	case t.Stream != nil:
		h := sha256.New()
		if err := t.Stream(h); err != nil {
			return sum, false, fmt.Errorf("tensor %s: %w", t.Name, err)
		}
		return [sha256.Size]byte(h.Sum(nil)), true, nil
	case t.F32 != nil && dtypeOf(t) == safetensors.F32:
		b, err := safetensors.AppendFloat32s(make([]byte, 0, 4*len(t.F32)), t.F32, safetensors.F32)
		return sha256.Sum256(b), err == nil, err
	}
	return sum, false, nil
}

// RestoreContext restores the context variables of the checkpoint (see the
// package function RestoreContext), including those stored once in the weights
// (Checkpoint.WeightsScope).
func (l *Loaded) RestoreContext(ctx *context.Context) error { return l.RestoreContextExcept(ctx, nil) }

// RestoreContextExcept is RestoreContext without the training-state tensors
// named in skip (another rank's share of a ZeRO-1 optimiser state), which are
// neither read nor created.
func (l *Loaded) RestoreContextExcept(ctx *context.Context, skip map[string]bool) error {
	if l.TrainState == nil {
		return fmt.Errorf("checkpoint %s: no training state", l.Dir)
	}
	if err := restoreContext(ctx, l.TrainState, skip); err != nil {
		return err
	}
	raw := l.TrainState.Metadata()[inWeightsKey]
	if raw == "" {
		return nil
	}
	var in map[string]string
	if err := json.Unmarshal([]byte(raw), &in); err != nil {
		return fmt.Errorf("checkpoint %s: %s: %w", l.Dir, inWeightsKey, err)
	}
	if len(in) > 0 && l.Weights == nil {
		return fmt.Errorf("checkpoint %s: variables stored in weights, but no weights", l.Dir)
	}
	for _, full := range slices.Sorted(maps.Keys(in)) {
		w := in[full]
		scope, name := splitPath(full)
		v := ctx.GetVariableByScopeAndName(scope, name)
		if v == nil {
			return fmt.Errorf("checkpoint %s: no variable %s for weight %s", l.Dir, full, w)
		}
		dt, shape, err := l.Weights.Info(w)
		if err != nil {
			return fmt.Errorf("checkpoint %s: %w", l.Dir, err)
		}
		raw, err := l.Weights.Bytes(w)
		if err != nil {
			return fmt.Errorf("checkpoint %s: %w", l.Dir, err)
		}
		if toST[v.Shape().DType] != dt || !slices.Equal(v.Shape().Dimensions, shape) {
			return fmt.Errorf("checkpoint %s: weight %s is %s%v, variable %s is %s", l.Dir, w, dt, shape, full, v.Shape())
		}
		t := tensors.FromShape(v.Shape())
		if len(raw) > 0 {
			if err := t.MutableBytes(func(b []byte) { copy(b, raw) }); err != nil {
				return fmt.Errorf("checkpoint %s: weight %s: %w", l.Dir, w, err)
			}
		}
		if err := v.SetValue(t); err != nil {
			return fmt.Errorf("checkpoint %s: variable %s: %w", l.Dir, full, err)
		}
	}
	return nil
}

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
			// A device-resident tensor is copied to the host for the write only: the host copy is
			// dropped after it, so a checkpoint holds one tensor on the host at a time.
			local := t.IsLocal()
			var werr error
			if err := t.ConstBytes(func(b []byte) { _, werr = w.Write(b) }); err != nil {
				return fmt.Errorf("checkpoint: variable %s: %w", name, err)
			}
			if !local && t.IsOnAnyDevice() {
				t.FinalizeLocal()
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
	return restoreContext(ctx, f, nil)
}

// restoreContext is RestoreContext one tensor at a time from the memory-mapped
// f, skipping the names in skip.
func restoreContext(ctx *context.Context, f *safetensors.File, skip map[string]bool) error {
	fromST := map[safetensors.DType]dtypes.DType{}
	for k, v := range toST {
		fromST[v] = k
	}
	for _, n := range f.Names() {
		if skip[n] {
			continue
		}
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
