package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"unsafe"
)

// MaxHeaderSize bounds the JSON header (the reference implementation uses 100 MB too).
const MaxHeaderSize = 100 << 20

// ErrNotFound is returned (wrapped) when a tensor name is not in a file or set.
var ErrNotFound = errors.New("tensor not found")

// TensorInfo describes one tensor of a file: dtype, shape and byte range inside the data section.
type TensorInfo struct {
	Name       string
	DType      DType
	Shape      []int
	Begin, End int64 // offsets relative to the start of the data section
}

// NumElements returns the product of the shape (1 for a scalar).
func (ti TensorInfo) NumElements() int {
	n := 1
	for _, d := range ti.Shape {
		n *= d
	}
	return n
}

// File is an open safetensors file. Tensor data is read lazily from a
// read-only memory map; a File is safe for concurrent readers. Slices returned
// by Bytes and Float32View alias the mapping and are invalid after Close.
type File struct {
	path    string
	data    []byte // whole file contents (mapped or read)
	unmap   func() error
	dataOff int64 // start of the data section: 8 + header length
	infos   map[string]*TensorInfo
	names   []string // in data order
	meta    map[string]string
}

// Open memory-maps the safetensors file at path and validates its header.
func Open(path string) (*File, error) {
	data, unmap, err := mapFile(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors %s: %w", path, err)
	}
	f, err := parse(path, data)
	if err != nil {
		if unmap != nil {
			_ = unmap()
		}
		return nil, err
	}
	f.unmap = unmap
	return f, nil
}

// OpenBytes parses a safetensors file held in memory; name is used in error messages.
// The File aliases b.
func OpenBytes(name string, b []byte) (*File, error) { return parse(name, b) }

// Path returns the path (or name) the file was opened with.
func (f *File) Path() string { return f.path }

// Names returns the tensor names in data order (the order in which they are stored).
func (f *File) Names() []string { return append([]string(nil), f.names...) }

// Metadata returns the "__metadata__" string map of the header (nil if absent).
func (f *File) Metadata() map[string]string { return f.meta }

// Has reports whether the file holds a tensor called name.
func (f *File) Has(name string) bool { _, ok := f.infos[name]; return ok }

// TensorInfo returns the full description of tensor name.
func (f *File) TensorInfo(name string) (TensorInfo, error) {
	ti, ok := f.infos[name]
	if !ok {
		return TensorInfo{}, fmt.Errorf("safetensors %s: tensor %q: %w", f.path, name, ErrNotFound)
	}
	c := *ti
	c.Shape = slices.Clone(ti.Shape)
	return c, nil
}

// Info returns the dtype and shape of tensor name.
func (f *File) Info(name string) (DType, []int, error) {
	ti, err := f.TensorInfo(name)
	return ti.DType, ti.Shape, err
}

// Bytes returns the raw little-endian bytes of tensor name, aliasing the file mapping (do not modify).
func (f *File) Bytes(name string) ([]byte, error) {
	ti, ok := f.infos[name]
	if !ok {
		return nil, fmt.Errorf("safetensors %s: tensor %q: %w", f.path, name, ErrNotFound)
	}
	return f.data[f.dataOff+ti.Begin : f.dataOff+ti.End : f.dataOff+ti.End], nil
}

// Float32 decodes tensor name into a new float32 slice (any dtype; integers and
// bools are converted by value) and returns it with its shape.
func (f *File) Float32(name string) ([]float32, []int, error) {
	ti, ok := f.infos[name]
	if !ok {
		return nil, nil, fmt.Errorf("safetensors %s: tensor %q: %w", f.path, name, ErrNotFound)
	}
	out := make([]float32, ti.NumElements())
	if err := f.Float32Into(name, out); err != nil {
		return nil, nil, err
	}
	return out, slices.Clone(ti.Shape), nil
}

// Float32Into decodes tensor name into dst, which must have exactly its number of elements.
func (f *File) Float32Into(name string, dst []float32) error {
	ti, ok := f.infos[name]
	if !ok {
		return fmt.Errorf("safetensors %s: tensor %q: %w", f.path, name, ErrNotFound)
	}
	if len(dst) != ti.NumElements() {
		return fmt.Errorf("safetensors %s: tensor %q: destination has %d elements, tensor has %d (shape %v)",
			f.path, name, len(dst), ti.NumElements(), ti.Shape)
	}
	src := f.data[f.dataOff+ti.Begin : f.dataOff+ti.End]
	if err := decodeFloat32(ti.DType, src, dst); err != nil {
		return fmt.Errorf("safetensors %s: tensor %q: %w", f.path, name, err)
	}
	return nil
}

// Float32View returns an F32 tensor as a float32 slice aliasing the mapping,
// without copying. ok is false when the tensor is not F32, is misaligned in
// memory, or the host is not little-endian; use Float32 then.
func (f *File) Float32View(name string) (v []float32, ok bool) {
	ti, found := f.infos[name]
	if !found || ti.DType != F32 || !littleEndianHost() {
		return nil, false
	}
	b := f.data[f.dataOff+ti.Begin : f.dataOff+ti.End]
	if len(b) == 0 {
		return []float32{}, true
	}
	if uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4), true
}

// Close releases the mapping. Slices from Bytes and Float32View become invalid.
func (f *File) Close() error {
	if f.unmap == nil {
		return nil
	}
	err := f.unmap()
	f.unmap = nil
	f.data = nil
	if err != nil {
		return fmt.Errorf("safetensors %s: unmap: %w", f.path, err)
	}
	return nil
}

func littleEndianHost() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}

// rawInfo is one header entry as written in JSON.
type rawInfo struct {
	DType       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

// parse validates the header of a whole safetensors file held in data.
func parse(path string, data []byte) (*File, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("safetensors %s: %s", path, fmt.Sprintf(format, args...))
	}
	if len(data) < 8 {
		return nil, fail("file too short (%d bytes) for the 8-byte header length", len(data))
	}
	n := binary.LittleEndian.Uint64(data[:8])
	if n > MaxHeaderSize {
		return nil, fail("header length %d exceeds the limit of %d bytes", n, MaxHeaderSize)
	}
	if n > uint64(len(data)-8) {
		return nil, fail("header length %d exceeds the file size %d", n, len(data))
	}
	hdr := data[8 : 8+n]
	if len(hdr) == 0 || hdr[0] != '{' {
		return nil, fail("header does not start with '{'")
	}
	f := &File{path: path, data: data, dataOff: int64(8 + n), infos: map[string]*TensorInfo{}}
	dataLen := int64(len(data)) - f.dataOff

	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // '{'
		return nil, fail("header JSON: %v", err)
	}
	var list []*TensorInfo
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fail("header JSON: %v", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, fail("header JSON: key %v is not a string", tok)
		}
		if name == "__metadata__" {
			if f.meta != nil {
				return nil, fail("header: duplicate __metadata__")
			}
			var meta map[string]string
			if err := dec.Decode(&meta); err != nil {
				return nil, fail("header __metadata__: must map strings to strings: %v", err)
			}
			if meta == nil {
				meta = map[string]string{}
			}
			f.meta = meta
			continue
		}
		if _, dup := f.infos[name]; dup {
			return nil, fail("tensor %q: duplicate name in header", name)
		}
		var ri rawInfo
		if err := dec.Decode(&ri); err != nil {
			return nil, fail("tensor %q: header entry: %v", name, err)
		}
		ti, err := checkInfo(name, ri, dataLen)
		if err != nil {
			return nil, fail("%v", err)
		}
		f.infos[name] = ti
		list = append(list, ti)
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, fail("header JSON: %v", err)
	}
	// Anything after the object must be padding whitespace.
	rest := hdr[dec.InputOffset():]
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fail("header JSON: trailing data after the object")
	}
	// Overlap check in data order.
	sort.SliceStable(list, func(i, j int) bool { return list[i].Begin < list[j].Begin })
	var prevEnd int64
	var prevName string
	for _, ti := range list {
		if ti.End > ti.Begin { // empty tensors overlap nothing
			if ti.Begin < prevEnd {
				return nil, fail("tensor %q: data_offsets [%d,%d] overlap tensor %q (ends at %d)", ti.Name, ti.Begin, ti.End, prevName, prevEnd)
			}
			prevEnd, prevName = ti.End, ti.Name
		}
		f.names = append(f.names, ti.Name)
	}
	return f, nil
}

// checkInfo validates one header entry against the data section length.
func checkInfo(name string, ri rawInfo, dataLen int64) (*TensorInfo, error) {
	if ri.DType == nil || ri.Shape == nil || ri.DataOffsets == nil {
		return nil, fmt.Errorf("tensor %q: header entry needs dtype, shape and data_offsets", name)
	}
	dt := DType(*ri.DType)
	size := int64(dt.Size())
	if size == 0 {
		return nil, fmt.Errorf("tensor %q: unknown dtype %q", name, *ri.DType)
	}
	if len(*ri.DataOffsets) != 2 {
		return nil, fmt.Errorf("tensor %q: data_offsets must have 2 entries, got %d", name, len(*ri.DataOffsets))
	}
	begin, end := (*ri.DataOffsets)[0], (*ri.DataOffsets)[1]
	if begin < 0 || end < begin || end > dataLen {
		return nil, fmt.Errorf("tensor %q: data_offsets [%d,%d] out of range (data section has %d bytes)", name, begin, end, dataLen)
	}
	if begin%size != 0 {
		return nil, fmt.Errorf("tensor %q: data_offsets begin %d not aligned to dtype %s (%d bytes)", name, begin, dt, size)
	}
	shape := make([]int, len(*ri.Shape))
	nelem := int64(1)
	for i, d := range *ri.Shape {
		if d < 0 {
			return nil, fmt.Errorf("tensor %q: negative dimension %d in shape %v", name, d, *ri.Shape)
		}
		if d > 0 && nelem > math.MaxInt64/size/d {
			return nil, fmt.Errorf("tensor %q: shape %v overflows", name, *ri.Shape)
		}
		nelem *= d
		shape[i] = int(d)
	}
	if nelem*size != end-begin {
		return nil, fmt.Errorf("tensor %q: shape %v × %s (%d bytes) does not match data_offsets [%d,%d] (%d bytes)",
			name, shape, dt, nelem*size, begin, end, end-begin)
	}
	return &TensorInfo{Name: name, DType: dt, Shape: shape, Begin: begin, End: end}, nil
}
