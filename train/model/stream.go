package model

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/dtypes"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/safetensors"
)

// StreamWeights returns the effective model in ctx's scope (as GetWeights:
// shared base resolved, LoRA adapters merged) as HF tensors that stream one
// at a time when written, so the host never holds more than one tensor: an
// unadapted weight is written from its variable in the variable's dtype (a
// bf16 frozen base stays bf16, a float32 master float32, bit for bit); an
// adapted one is merged on the device by a small program per shape,
// W + (α/r)·B·A computed in float32, and rounded to W's dtype on the host
// (round to nearest even, as PyTorch: GoMLX's pure-Go backend truncates),
// or kept float32 with mergedF32 (for a save in another dtype: one rounding,
// as GetWeights then SaveAs). be is the backend holding the variables.
func StreamWeights(ctx *context.Context, cfg *Config, be backends.Backend, mergedF32 bool) ([]safetensors.Tensor, error) {
	present := Weights{}
	for name := range ExpectedShapes(cfg, true) {
		present[name] = nil
	}
	names := hfOrder(cfg, present) // Save's order
	scale := context.GetParamOr(ctx, paramLoRAScale, 1.0)
	merge := &mergeExecs{be: be, scale: scale}
	var out []safetensors.Tensor
	for _, name := range names {
		v := lookupVar(ctx, name)
		if v == nil {
			if name == NameLMHead {
				continue
			}
			return nil, fmt.Errorf("weights: variable %q missing in scope %q", name, ctx.Scope())
		}
		dt, ok := stDType[v.Shape().DType]
		if !ok {
			return nil, fmt.Errorf("weights: variable %q: dtype %s not supported", name, v.Shape().DType)
		}
		t := safetensors.Tensor{Name: name, DType: dt, Shape: append([]int(nil), v.Shape().Dimensions...)}
		var av, bv *context.Variable
		if an, bn, ok := loraNames(name); ok {
			av, bv = ctx.GetVariableByScopeAndName(ctx.Scope(), an), ctx.GetVariableByScopeAndName(ctx.Scope(), bn)
		}
		keepF32 := av != nil && bv != nil && (mergedF32 || v.Shape().DType == dtypes.Float32)
		if keepF32 {
			t.DType = safetensors.F32
		}
		t.Stream = func(w io.Writer) error {
			val, err := v.Value()
			if err != nil {
				return fmt.Errorf("weights: %s: %w", name, err)
			}
			if av == nil || bv == nil {
				return WriteTensor(w, val)
			}
			a, err := av.Value()
			if err != nil {
				return fmt.Errorf("weights: %s: %w", name, err)
			}
			b, err := bv.Value()
			if err != nil {
				return fmt.Errorf("weights: %s: %w", name, err)
			}
			merged, err := merge.run(val, a, b)
			if err != nil {
				return fmt.Errorf("weights: merging the adapters of %s: %w", name, err)
			}
			defer merged.FinalizeAll()
			if keepF32 {
				return WriteTensor(w, merged)
			}
			return writeBF16(w, merged)
		}
		out = append(out, t)
	}
	return out, nil
}

// stDType maps the dtypes of model variables to safetensors'.
var stDType = map[dtypes.DType]safetensors.DType{dtypes.Float32: safetensors.F32, dtypes.BFloat16: safetensors.BF16}

// WriteTensor writes t's bytes (little-endian, its dtype) to w. A tensor
// living only on the device is copied to the host for the write and the host
// copy dropped afterwards, so streaming a model keeps one tensor on the host.
func WriteTensor(w io.Writer, t *tensors.Tensor) error {
	if t.Shape().Size() == 0 {
		return nil
	}
	local := t.IsLocal()
	var werr error
	if err := t.ConstBytes(func(b []byte) { _, werr = w.Write(b) }); err != nil {
		return err
	}
	if !local && t.IsOnAnyDevice() {
		t.FinalizeLocal()
	}
	return werr
}

// writeBF16 writes the float32 tensor t as bfloat16 (round to nearest even).
func writeBF16(w io.Writer, t *tensors.Tensor) error {
	local := t.IsLocal()
	var werr error
	err := t.ConstFlatData(func(flat any) {
		x, ok := flat.([]float32)
		if !ok {
			werr = fmt.Errorf("weights: bf16 write of a %s tensor", t.DType())
			return
		}
		buf := make([]byte, 0, 2*min(len(x), 1<<20))
		for lo := 0; lo < len(x) && werr == nil; lo += 1 << 20 {
			buf = buf[:0]
			for _, v := range x[lo:min(lo+1<<20, len(x))] {
				buf = binary.LittleEndian.AppendUint16(buf, safetensors.Float32ToBF16(v))
			}
			_, werr = w.Write(buf)
		}
	})
	if err != nil {
		return err
	}
	if !local && t.IsOnAnyDevice() {
		t.FinalizeLocal()
	}
	return werr
}

// mergeExecs computes W + scale·B·A as mergeLoRA does on the host, in the
// same float32 operations (Σ_k over the rank, in order: W + (scale·B[:,k])⊗A[k,:]),
// element-wise, so no TF32 matmul rounds the update; compiled once per
// shapes and dtypes.
type mergeExecs struct {
	be    backends.Backend
	scale float64
	once  sync.Once
	ex    *G.Exec
	err   error
}

func (m *mergeExecs) run(w, a, b *tensors.Tensor) (*tensors.Tensor, error) {
	m.once.Do(func() {
		m.ex, m.err = G.NewExec(m.be, func(w, a, b *G.Node) *G.Node {
			out, in, r := w.Shape().Dimensions[0], w.Shape().Dimensions[1], a.Shape().Dimensions[0]
			acc := cast(w, dtypes.Float32)
			a, b = cast(a, dtypes.Float32), cast(b, dtypes.Float32)
			for k := 0; k < r; k++ {
				c := G.MulScalar(G.Slice(b, G.AxisRange(), G.AxisRange(k, k+1)), float64(float32(m.scale)))
				row := G.Slice(a, G.AxisRange(k, k+1), G.AxisRange())
				acc = G.Add(acc, G.Mul(G.BroadcastToDims(c, out, in), G.BroadcastToDims(row, out, in)))
			}
			return acc
		})
		if m.err == nil {
			m.ex.SetMaxCache(-1)
		}
	})
	if m.err != nil {
		return nil, m.err
	}
	var out *tensors.Tensor
	err := catch(func() { out = m.ex.MustExec1(w, a, b) })
	return out, err
}
