package checkpoint

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/saferlhf/saferlhf/train/safetensors"
)

// NonFiniteError reports a NaN or Inf training quantity (a metric or a tensor).
type NonFiniteError struct {
	Step     int
	Quantity string
	Value    float64
}

func (e *NonFiniteError) Error() string {
	return fmt.Sprintf("step %d: %s is %v", e.Step, e.Quantity, e.Value)
}

// CheckFinite is the one non-finite guard of the training loops: it returns a
// *NonFiniteError naming the step and the first quantity (in sorted name
// order) that is NaN or ±Inf, or nil if all are finite. Manager.Save applies
// the same guard to every tensor it writes.
func CheckFinite(step int, named map[string]float64) error {
	names := make([]string, 0, len(named))
	for k := range named {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if v := named[k]; math.IsNaN(v) || math.IsInf(v, 0) {
			return &NonFiniteError{Step: step, Quantity: k, Value: v}
		}
	}
	return nil
}

// guardTensors returns copies of ts whose floating-point data are checked for
// NaN and ±Inf as they are written: the write fails with a *NonFiniteError
// naming the tensor.
func guardTensors(step int, ts []safetensors.Tensor) []safetensors.Tensor {
	out := make([]safetensors.Tensor, len(ts))
	for i, t := range ts {
		out[i] = t
		dt := t.DType
		if dt == "" {
			dt = safetensors.F32
		}
		if !dt.IsFloat() {
			continue
		}
		bad := func(v float64) error {
			return &NonFiniteError{Step: step, Quantity: "tensor " + t.Name, Value: v}
		}
		switch {
		case t.F32 != nil:
			for _, v := range t.F32 {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					v := float64(v)
					out[i].F32, out[i].Stream = nil, func(io.Writer) error { return bad(v) }
					break
				}
			}
		case t.Data != nil:
			data := t.Data
			out[i].Data = nil
			out[i].Stream = func(w io.Writer) error {
				_, err := (&finiteWriter{w: w, dt: dt, bad: bad}).Write(data)
				return err
			}
		case t.Stream != nil:
			stream := t.Stream
			out[i].Stream = func(w io.Writer) error { return stream(&finiteWriter{w: w, dt: dt, bad: bad}) }
		}
	}
	return out
}

// finiteWriter passes bytes of dtype dt through to w, failing on the first
// NaN or ±Inf element (elements may straddle writes).
type finiteWriter struct {
	w    io.Writer
	dt   safetensors.DType
	bad  func(v float64) error
	part []byte // bytes of an element split across writes
}

func (f *finiteWriter) Write(p []byte) (int, error) {
	size := f.dt.Size()
	b := p
	if len(f.part) > 0 {
		need := size - len(f.part)
		if len(b) < need {
			f.part = append(f.part, b...)
			return f.w.Write(p)
		}
		elem := append(f.part, b[:need]...)
		if v, ok := finite(f.dt, elem); !ok {
			return 0, f.bad(v)
		}
		f.part = f.part[:0]
		b = b[need:]
	}
	whole := len(b) - len(b)%size
	for i := 0; i < whole; i += size {
		if v, ok := finite(f.dt, b[i:i+size]); !ok {
			return 0, f.bad(v)
		}
	}
	f.part = append(f.part, b[whole:]...)
	return f.w.Write(p)
}

// finite decodes one little-endian element of dt and reports whether it is finite.
func finite(dt safetensors.DType, b []byte) (float64, bool) {
	var v float64
	switch dt {
	case safetensors.F32:
		v = float64(math.Float32frombits(binary.LittleEndian.Uint32(b)))
	case safetensors.F64:
		v = math.Float64frombits(binary.LittleEndian.Uint64(b))
	case safetensors.BF16:
		v = float64(safetensors.BF16ToFloat32(binary.LittleEndian.Uint16(b)))
	case safetensors.F16:
		v = float64(safetensors.F16ToFloat32(binary.LittleEndian.Uint16(b)))
	default:
		return 0, true
	}
	return v, !math.IsNaN(v) && !math.IsInf(v, 0)
}
