// Package safetensors reads and writes tensors in the Hugging Face safetensors
// format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON header, then the raw little-endian tensor
// data. Files are memory-mapped read-only and tensors are decoded lazily, one
// at a time, so loading a 7B model does not need twice its size in memory.
package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
)

// DType is a safetensors element type, spelled as in the header ("F32", "BF16", ...).
type DType string

// Element types understood by this package.
const (
	F64  DType = "F64"
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	I64  DType = "I64"
	I32  DType = "I32"
	I16  DType = "I16"
	I8   DType = "I8"
	U64  DType = "U64"
	U32  DType = "U32"
	U16  DType = "U16"
	U8   DType = "U8"
	Bool DType = "BOOL"
)

// Size returns the size in bytes of one element of d, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F64, I64, U64:
		return 8
	case F32, I32, U32:
		return 4
	case F16, BF16, I16, U16:
		return 2
	case I8, U8, Bool:
		return 1
	}
	return 0
}

// IsFloat reports whether d is a floating-point dtype (the ones Write can encode from float32).
func (d DType) IsFloat() bool {
	switch d {
	case F64, F32, F16, BF16:
		return true
	}
	return false
}

// decodeFloat32 converts the little-endian elements of src (dtype d) into dst.
// len(src) must equal len(dst)*d.Size().
func decodeFloat32(d DType, src []byte, dst []float32) error {
	le := binary.LittleEndian
	switch d {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(src[4*i:]))
		}
	case F64:
		for i := range dst {
			dst[i] = float32(math.Float64frombits(le.Uint64(src[8*i:])))
		}
	case BF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(le.Uint16(src[2*i:])) << 16)
		}
	case F16:
		tbl := f16Table()
		for i := range dst {
			dst[i] = tbl[le.Uint16(src[2*i:])]
		}
	case I64:
		for i := range dst {
			dst[i] = float32(int64(le.Uint64(src[8*i:])))
		}
	case I32:
		for i := range dst {
			dst[i] = float32(int32(le.Uint32(src[4*i:])))
		}
	case I16:
		for i := range dst {
			dst[i] = float32(int16(le.Uint16(src[2*i:])))
		}
	case I8:
		for i := range dst {
			dst[i] = float32(int8(src[i]))
		}
	case U64:
		for i := range dst {
			dst[i] = float32(le.Uint64(src[8*i:]))
		}
	case U32:
		for i := range dst {
			dst[i] = float32(le.Uint32(src[4*i:]))
		}
	case U16:
		for i := range dst {
			dst[i] = float32(le.Uint16(src[2*i:]))
		}
	case U8:
		for i := range dst {
			dst[i] = float32(src[i])
		}
	case Bool:
		for i := range dst {
			if src[i] != 0 {
				dst[i] = 1
			} else {
				dst[i] = 0
			}
		}
	default:
		return fmt.Errorf("unknown dtype %q", d)
	}
	return nil
}

// encodeFloat32 appends the float32 values of src encoded as dtype d (a float dtype) to dst.
func encodeFloat32(d DType, src []float32, dst []byte) ([]byte, error) {
	le := binary.LittleEndian
	switch d {
	case F32:
		for _, v := range src {
			dst = le.AppendUint32(dst, math.Float32bits(v))
		}
	case F64:
		for _, v := range src {
			dst = le.AppendUint64(dst, math.Float64bits(float64(v)))
		}
	case BF16:
		for _, v := range src {
			dst = le.AppendUint16(dst, Float32ToBF16(v))
		}
	case F16:
		for _, v := range src {
			dst = le.AppendUint16(dst, Float32ToF16(v))
		}
	default:
		return dst, fmt.Errorf("cannot encode float32 values as dtype %q (want F32, F64, BF16 or F16)", d)
	}
	return dst, nil
}

// Float32ToBF16 rounds v to bfloat16 (round to nearest, ties to even, as PyTorch does); NaN stays NaN.
func Float32ToBF16(v float32) uint16 {
	b := math.Float32bits(v)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep it quiet and non-zero in the top half
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// BF16ToFloat32 widens a bfloat16 value to float32 exactly.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// f16Table maps every half-precision bit pattern to float32 (256 KiB, built once, read-only).
var f16Table = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = F16ToFloat32(uint16(i))
	}
	return &t
})

// F16ToFloat32 widens an IEEE half-precision value to float32 exactly.
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal half: value = mant · 2^-24.
		f := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// Float32ToF16 rounds v to IEEE half precision (round to nearest, ties to even;
// overflow gives ±Inf, NaN stays NaN).
func Float32ToF16(v float32) uint16 {
	b := math.Float32bits(v)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Subnormal or zero in half precision.
		if e < -10 {
			return sign
		}
		m := mant | 0x800000 // implicit leading one
		shift := uint32(14 - e)
		half := uint32(1) << (shift - 1)
		rest := m & (1<<shift - 1)
		r := m >> shift
		if rest > half || (rest == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | mant>>13
	rest := mant & 0x1fff
	if rest > 0x1000 || (rest == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, which is the correct rounding (up to Inf)
	}
	return sign | uint16(r)
}

// AppendFloat32s appends src encoded as the float dtype d (F32, F64, BF16 or F16; rounded to
// nearest even) to dst.
func AppendFloat32s(dst []byte, src []float32, d DType) ([]byte, error) {
	return encodeFloat32(d, src, dst)
}
