package safetensors

import (
	"path/filepath"
	"testing"
)

// BenchmarkFloat32Decode measures decoding a 4M-element tensor to float32 per dtype (output GB/s).
func BenchmarkFloat32Decode(b *testing.B) {
	const n = 4 << 20
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = float32(i%1000) * 1e-3
	}
	for _, dt := range []DType{F32, BF16, F16} {
		b.Run(string(dt), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "t.safetensors")
			if err := Write(path, []Tensor{{Name: "w", DType: dt, Shape: []int{n}, F32: vals}}, nil); err != nil {
				b.Fatal(err)
			}
			f, err := Open(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			dst := make([]float32, n)
			b.ResetTimer()
			for range b.N {
				if err := f.Float32Into("w", dst); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(4*n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}

// BenchmarkWrite measures writing a 4M-element float32 tensor as BF16 (input GB/s, fsync included).
func BenchmarkWrite(b *testing.B) {
	const n = 4 << 20
	vals := make([]float32, n)
	path := filepath.Join(b.TempDir(), "t.safetensors")
	b.ResetTimer()
	for range b.N {
		if err := Write(path, []Tensor{{Name: "w", DType: BF16, Shape: []int{n}, F32: vals}}, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(4*n)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
}
