package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/saferlhf/saferlhf/internal/atomicfile"
)

// Tensor is one named tensor to write. Give one of Data (raw little-endian
// bytes of DType), F32 (float32 values, encoded as DType, which must then be
// F32, F64, BF16 or F16; an empty DType means F32) or Stream (writes the raw
// bytes to w when the file is written, so a large tensor is never copied whole).
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
	F32   []float32
	// Stream must write exactly the tensor's byte size (shape × dtype size).
	Stream func(w io.Writer) error
}

// byteSize validates t and returns the size of its encoded data.
func (t *Tensor) byteSize() (int64, error) {
	if t.Name == "" {
		return 0, fmt.Errorf("tensor with empty name")
	}
	if t.Name == "__metadata__" {
		return 0, fmt.Errorf("tensor name %q is reserved", t.Name)
	}
	dt := t.DType
	if dt == "" {
		dt = F32
	}
	size := int64(dt.Size())
	if size == 0 {
		return 0, fmt.Errorf("tensor %q: unknown dtype %q", t.Name, t.DType)
	}
	n := int64(1)
	for _, d := range t.Shape {
		if d < 0 {
			return 0, fmt.Errorf("tensor %q: negative dimension in shape %v", t.Name, t.Shape)
		}
		n *= int64(d)
	}
	switch {
	case (t.F32 != nil && t.Data != nil) || (t.Stream != nil && (t.F32 != nil || t.Data != nil)):
		return 0, fmt.Errorf("tensor %q: more than one of Data, F32 and Stream given", t.Name)
	case t.Stream != nil:
	case t.F32 != nil:
		if !dt.IsFloat() {
			return 0, fmt.Errorf("tensor %q: F32 values cannot be written as dtype %s", t.Name, dt)
		}
		if int64(len(t.F32)) != n {
			return 0, fmt.Errorf("tensor %q: %d values for shape %v (%d elements)", t.Name, len(t.F32), t.Shape, n)
		}
	default:
		if int64(len(t.Data)) != n*size {
			return 0, fmt.Errorf("tensor %q: %d data bytes for shape %v × %s (%d bytes)", t.Name, len(t.Data), t.Shape, dt, n*size)
		}
	}
	return n * size, nil
}

func (t *Tensor) dtype() DType {
	if t.DType == "" {
		return F32
	}
	return t.DType
}

// Write writes ts and the metadata to a single safetensors file at path,
// atomically (temporary file in the same directory, fsync, rename). Data are
// laid out contiguously, largest element size first (stable otherwise), so that
// every tensor is aligned to its dtype as the reference loader requires; the
// header is padded with spaces to a multiple of 8 bytes.
func Write(path string, ts []Tensor, meta map[string]string) error {
	hdr, order, err := buildHeader(ts, meta)
	if err != nil {
		return fmt.Errorf("safetensors %s: %w", path, err)
	}
	err = atomicfile.Write(path, 0o644, func(w io.Writer) error {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(hdr)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		var buf []byte
		for _, i := range order {
			t := &ts[i]
			if t.Stream != nil {
				cw := &countWriter{w: w}
				if err := t.Stream(cw); err != nil {
					return fmt.Errorf("tensor %q: %w", t.Name, err)
				}
				if want, _ := t.byteSize(); cw.n != want {
					return fmt.Errorf("tensor %q: streamed %d bytes, want %d", t.Name, cw.n, want)
				}
				continue
			}
			if t.F32 == nil {
				if _, err := w.Write(t.Data); err != nil {
					return err
				}
				continue
			}
			// Encode in chunks so that a large tensor never needs a second full copy.
			const chunk = 1 << 16
			for s := 0; s < len(t.F32); s += chunk {
				e := min(s+chunk, len(t.F32))
				buf, err = encodeFloat32(t.dtype(), t.F32[s:e], buf[:0])
				if err != nil {
					return fmt.Errorf("tensor %q: %w", t.Name, err)
				}
				if _, err := w.Write(buf); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// buildHeader returns the padded JSON header and the data order of ts.
func buildHeader(ts []Tensor, meta map[string]string) ([]byte, []int, error) {
	sizes := make([]int64, len(ts))
	seen := make(map[string]bool, len(ts))
	order := make([]int, len(ts))
	for i := range ts {
		s, err := ts[i].byteSize()
		if err != nil {
			return nil, nil, err
		}
		if seen[ts[i].Name] {
			return nil, nil, fmt.Errorf("tensor %q: duplicate name", ts[i].Name)
		}
		seen[ts[i].Name] = true
		sizes[i] = s
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return ts[order[a]].dtype().Size() > ts[order[b]].dtype().Size() })

	var hdr bytes.Buffer
	hdr.WriteByte('{')
	first := true
	writeKey := func(k string) {
		if !first {
			hdr.WriteByte(',')
		}
		first = false
		kb, _ := json.Marshal(k)
		hdr.Write(kb)
		hdr.WriteByte(':')
	}
	if meta != nil {
		writeKey("__metadata__")
		mb, err := json.Marshal(meta) // sorted keys: deterministic output
		if err != nil {
			return nil, nil, err
		}
		hdr.Write(mb)
	}
	var off int64
	for _, i := range order {
		t := &ts[i]
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		entry := struct {
			DType       DType   `json:"dtype"`
			Shape       []int   `json:"shape"`
			DataOffsets []int64 `json:"data_offsets"`
		}{t.dtype(), shape, []int64{off, off + sizes[i]}}
		eb, err := json.Marshal(entry)
		if err != nil {
			return nil, nil, err
		}
		writeKey(t.Name)
		hdr.Write(eb)
		off += sizes[i]
	}
	hdr.WriteByte('}')
	for (8+hdr.Len())%8 != 0 {
		hdr.WriteByte(' ')
	}
	return hdr.Bytes(), order, nil
}

// IndexFile is the name of the index of a sharded checkpoint (HF transformers convention).
const IndexFile = "model.safetensors.index.json"

// SingleFile is the name of an unsharded model file (HF transformers convention).
const SingleFile = "model.safetensors"

// Index is the JSON content of model.safetensors.index.json.
type Index struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// WriteDir writes ts into dir in the HF layout: a single model.safetensors when
// maxShardBytes <= 0 or everything fits, else shards
// model-0000K-of-0000N.safetensors of at most maxShardBytes each (a single
// tensor larger than that gets its own shard) plus model.safetensors.index.json
// (written last, with metadata.total_size). Tensor order is kept. It returns the
// names of the files written.
func WriteDir(dir string, ts []Tensor, meta map[string]string, maxShardBytes int64) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	var total int64
	var groups [][]Tensor
	var cur []Tensor
	var curSize int64
	for i := range ts {
		s, err := ts[i].byteSize()
		if err != nil {
			return nil, fmt.Errorf("safetensors %s: %w", dir, err)
		}
		total += s
		if maxShardBytes > 0 && len(cur) > 0 && curSize+s > maxShardBytes {
			groups = append(groups, cur)
			cur, curSize = nil, 0
		}
		cur = append(cur, ts[i])
		curSize += s
	}
	groups = append(groups, cur)
	if len(groups) == 1 {
		if err := Write(filepath.Join(dir, SingleFile), ts, meta); err != nil {
			return nil, err
		}
		return []string{SingleFile}, nil
	}
	idx := Index{Metadata: map[string]any{"total_size": total}, WeightMap: map[string]string{}}
	var files []string
	for k, g := range groups {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, len(groups))
		if err := Write(filepath.Join(dir, name), g, meta); err != nil {
			return nil, err
		}
		for _, t := range g {
			idx.WeightMap[t.Name] = name
		}
		files = append(files, name)
	}
	ib, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("safetensors %s: %w", dir, err)
	}
	if err := atomicfile.WriteBytes(filepath.Join(dir, IndexFile), append(ib, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	return append(files, IndexFile), nil
}
