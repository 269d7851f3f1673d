package checkpoint

import (
	"io"
	"log/slog"
	"testing"

	"github.com/saferlhf/saferlhf/train/safetensors"
)

// BenchmarkSaveVerify saves a 64 MiB checkpoint (16 streamed F32 tensors: the non-finite guard,
// sha256 manifest and fsyncs included) and opens it again with Latest (every file re-hashed).
func BenchmarkSaveVerify(b *testing.B) {
	const tensors, elems = 16, 1 << 20
	data := f32Bytes(make([]float32, elems)...)
	for i := range data {
		data[i] = byte(i % 61) // finite F32 values
	}
	m, _ := NewManager(b.TempDir(), 1)
	m.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	b.SetBytes(tensors * int64(len(data)))
	for i := 0; i < b.N; i++ {
		c := &Checkpoint{State: State{Step: i}}
		for k := 0; k < tensors; k++ {
			c.TrainState = append(c.TrainState, safetensors.Tensor{Name: string(rune('a' + k)), DType: "F32",
				Shape: []int{elems}, Stream: streamOf(data, 1<<16)})
		}
		if _, err := m.Save(c); err != nil {
			b.Fatal(err)
		}
		l, err := m.Latest()
		if err != nil {
			b.Fatal(err)
		}
		l.Close()
	}
}
