package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// rawFile builds a safetensors file by hand (independent of Write).
func rawFile(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

func i32bytes(vs ...int32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, uint32(v))
	}
	return b
}

func TestReadHandMade(t *testing.T) {
	// The example of the safetensors README: one I32 [2,2] tensor plus metadata.
	hdr := `{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"foo":"bar"}}`
	f, err := OpenBytes("mem", rawFile(hdr, i32bytes(1, -2, 3, 4)))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Names(); !reflect.DeepEqual(got, []string{"test"}) {
		t.Fatalf("names %v", got)
	}
	dt, shape, err := f.Info("test")
	if err != nil || dt != I32 || !reflect.DeepEqual(shape, []int{2, 2}) {
		t.Fatalf("info %v %v %v", dt, shape, err)
	}
	v, _, err := f.Float32("test")
	if err != nil || !reflect.DeepEqual(v, []float32{1, -2, 3, 4}) {
		t.Fatalf("values %v %v", v, err)
	}
	if f.Metadata()["foo"] != "bar" {
		t.Fatalf("metadata %v", f.Metadata())
	}
	if _, _, err := f.Float32("nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("missing tensor error %v", err)
	}
}

func TestHeaderErrors(t *testing.T) {
	tests := []struct {
		name   string
		file   []byte
		wantIn []string
	}{
		{"short", []byte{1, 2, 3}, []string{"too short"}},
		{"huge header", binary.LittleEndian.AppendUint64(nil, 1<<62), []string{"exceeds the limit"}},
		{"header past eof", binary.LittleEndian.AppendUint64(nil, 100), []string{"exceeds the file size"}},
		{"not json", rawFile(`{"a":`, nil), []string{`"a"`, "header entry"}},
		{"bad key", rawFile(`{1:2}`, nil), []string{"header JSON"}},
		{"not object", rawFile(`[1]`, nil), []string{"does not start"}},
		{"unknown dtype", rawFile(`{"w":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}`, []byte{0}), []string{`"w"`, "unknown dtype"}},
		{"out of range", rawFile(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 4)), []string{`"w"`, "out of range"}},
		{"reversed", rawFile(`{"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, make([]byte, 4)), []string{`"w"`, "out of range"}},
		{"negative", rawFile(`{"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}`, make([]byte, 4)), []string{`"w"`, "out of range"}},
		{"size mismatch", rawFile(`{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, make([]byte, 12)), []string{`"w"`, "does not match"}},
		{"unaligned", rawFile(`{"w":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}`, make([]byte, 8)), []string{`"w"`, "not aligned"}},
		{"overlap", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)), []string{`"b"`, "overlap", `"a"`}},
		{"duplicate", rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, make([]byte, 2)), []string{`"a"`, "duplicate"}},
		{"negative dim", rawFile(`{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}`, nil), []string{`"a"`, "negative"}},
		{"overflow dims", rawFile(`{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`, nil), []string{`"a"`, "overflows"}},
		{"missing field", rawFile(`{"a":{"dtype":"U8","shape":[1]}}`, make([]byte, 1)), []string{`"a"`, "data_offsets"}},
		{"bad offsets", rawFile(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}`, make([]byte, 1)), []string{`"a"`, "2 entries"}},
		{"bad metadata", rawFile(`{"__metadata__":{"x":1}}`, nil), []string{"__metadata__"}},
		{"trailing", rawFile(`{} x`, nil), []string{"trailing"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenBytes("bad.safetensors", tc.file)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			for _, w := range append(tc.wantIn, "bad.safetensors") {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestF16Exhaustive(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := F16ToFloat32(uint16(h))
		if math.IsNaN(float64(f)) {
			if g := Float32ToF16(f); g&0x7c00 != 0x7c00 || g&0x3ff == 0 {
				t.Fatalf("NaN %#04x -> %#04x", h, g)
			}
			continue
		}
		if g := Float32ToF16(f); g != uint16(h) {
			t.Fatalf("f16 %#04x -> %g -> %#04x", h, f, g)
		}
	}
	for h := 0; h < 1<<16; h++ {
		f := BF16ToFloat32(uint16(h))
		if math.IsNaN(float64(f)) {
			continue
		}
		if g := Float32ToBF16(f); g != uint16(h) {
			t.Fatalf("bf16 %#04x -> %g -> %#04x", h, f, g)
		}
	}
}

func TestRounding(t *testing.T) {
	tests := []struct {
		v        float32
		f16, b16 uint16
	}{
		{1, 0x3c00, 0x3f80},
		{-2, 0xc000, 0xc000},
		{0.1, 0x2e66, 0x3dcd},
		{65504, 0x7bff, 0x4780},
		{65520, 0x7c00, 0x4780}, // f16 rounds up to Inf
		{float32(math.Ldexp(1, -24)), 0x0001, 0x3380},
		{float32(math.Ldexp(1, -26)), 0x0000, 0x3280},       // below half the smallest subnormal
		{1 + float32(math.Ldexp(1, -11)), 0x3c00, 0x3f80},   // tie to even (down)
		{1 + 3*float32(math.Ldexp(1, -11)), 0x3c02, 0x3f80}, // tie to even (up)
		{float32(math.Inf(-1)), 0xfc00, 0xff80},
	}
	for _, tc := range tests {
		if g := Float32ToF16(tc.v); g != tc.f16 {
			t.Errorf("f16(%g) = %#04x, want %#04x", tc.v, g, tc.f16)
		}
		if g := Float32ToBF16(tc.v); g != tc.b16 {
			t.Errorf("bf16(%g) = %#04x, want %#04x", tc.v, g, tc.b16)
		}
	}
}

func TestWriteReadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.safetensors")
	vals := []float32{1, -0.5, 3.25, 1e-3, 0, 100}
	ts := []Tensor{
		{Name: "u8", DType: U8, Shape: []int{3}, Data: []byte{0, 7, 255}}, // odd size first: layout must still align
		{Name: "f32", DType: F32, Shape: []int{2, 3}, F32: vals},
		{Name: "bf16", DType: BF16, Shape: []int{6}, F32: vals},
		{Name: "f16", DType: F16, Shape: []int{3, 2}, F32: vals},
		{Name: "f64", DType: F64, Shape: []int{6}, F32: vals},
		{Name: "i64", DType: I64, Shape: []int{2}, Data: binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, uint64(1<<40)), ^uint64(0))},
		{Name: "i32", DType: I32, Shape: []int{2}, Data: i32bytes(-7, 9)},
		{Name: "bool", DType: Bool, Shape: []int{2}, Data: []byte{1, 0}},
		{Name: "scalar", Shape: nil, F32: []float32{42}},
		{Name: "empty", DType: F32, Shape: []int{0, 4}, F32: []float32{}},
	}
	if err := Write(path, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, _ := os.ReadFile(path)
	if n := binary.LittleEndian.Uint64(b); (8+n)%8 != 0 {
		t.Errorf("header length %d not padded to 8", n)
	}
	want := map[string][]float32{
		"u8": {0, 7, 255}, "f32": vals, "f64": vals, "i64": {1 << 40, -1}, "i32": {-7, 9}, "bool": {1, 0},
		"scalar": {42}, "empty": {},
		"bf16": {1, -0.5, 3.25, BF16ToFloat32(Float32ToBF16(1e-3)), 0, 100},
		"f16":  {1, -0.5, 3.25, F16ToFloat32(Float32ToF16(1e-3)), 0, 100},
	}
	for _, tt := range ts {
		got, shape, err := f.Float32(tt.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want[tt.Name]) {
			t.Errorf("%s: got %v want %v", tt.Name, got, want[tt.Name])
		}
		ws := tt.Shape
		if ws == nil {
			ws = []int{}
		}
		if !reflect.DeepEqual(shape, ws) {
			t.Errorf("%s: shape %v want %v", tt.Name, shape, ws)
		}
		ti, _ := f.TensorInfo(tt.Name)
		if ti.Begin%int64(ti.DType.Size()) != 0 {
			t.Errorf("%s misaligned at %d", tt.Name, ti.Begin)
		}
	}
	if v, ok := f.Float32View("f32"); !ok || !reflect.DeepEqual(v, vals) {
		t.Errorf("Float32View = %v %v", v, ok)
	}
	if _, ok := f.Float32View("bf16"); ok {
		t.Error("Float32View of bf16 should fail")
	}
	if f.Metadata()["format"] != "pt" {
		t.Errorf("metadata %v", f.Metadata())
	}
	// The data section must be contiguous (the reference loader rejects holes).
	var end int64
	for _, n := range f.Names() {
		ti, _ := f.TensorInfo(n)
		if ti.Begin != end {
			t.Errorf("%s begins at %d, previous ended at %d", n, ti.Begin, end)
		}
		end = ti.End
	}
}

func TestWriteErrorsKeepOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.safetensors")
	if err := Write(path, []Tensor{{Name: "a", Shape: []int{1}, F32: []float32{1}}}, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	bad := [][]Tensor{
		{{Name: "a", Shape: []int{2}, F32: []float32{1}}},
		{{Name: "a", DType: I32, Shape: []int{1}, F32: []float32{1}}},
		{{Name: "a", DType: "X", Shape: []int{1}, Data: []byte{1}}},
		{{Name: "a", Shape: []int{1}, F32: []float32{1}}, {Name: "a", Shape: []int{1}, F32: []float32{1}}},
		{{Name: "", Shape: []int{1}, F32: []float32{1}}},
	}
	for i, ts := range bad {
		if err := Write(path, ts, nil); err == nil {
			t.Errorf("case %d: no error", i)
		}
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Error("failed Write changed the existing file")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestShardedDir(t *testing.T) {
	dir := t.TempDir()
	var ts []Tensor
	for i := range 5 {
		v := make([]float32, 10)
		for j := range v {
			v[j] = float32(i*10 + j)
		}
		ts = append(ts, Tensor{Name: "layer." + string(rune('a'+i)) + ".weight", Shape: []int{2, 5}, F32: v})
	}
	files, err := WriteDir(dir, ts, map[string]string{"format": "pt"}, 100) // 40 bytes each: 2 per shard
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 4 || files[3] != IndexFile || files[0] != "model-00001-of-00003.safetensors" {
		t.Fatalf("files %v", files)
	}
	var idx Index
	b, _ := os.ReadFile(filepath.Join(dir, IndexFile))
	if err := json.Unmarshal(b, &idx); err != nil || idx.Metadata["total_size"].(float64) != 200 {
		t.Fatalf("index %s %v", b, err)
	}
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.Names()) != 5 || len(s.Files()) != 3 {
		t.Fatalf("names %v files %d", s.Names(), len(s.Files()))
	}
	for _, tt := range ts {
		v, shape, err := s.Float32(tt.Name)
		if err != nil || !reflect.DeepEqual(v, tt.F32) || !reflect.DeepEqual(shape, tt.Shape) {
			t.Errorf("%s: %v %v %v", tt.Name, v, shape, err)
		}
	}

	// Unsharded directory.
	dir2 := t.TempDir()
	if files, err := WriteDir(dir2, ts, nil, 0); err != nil || !reflect.DeepEqual(files, []string{SingleFile}) {
		t.Fatalf("%v %v", files, err)
	}
	s2, err := OpenDir(dir2)
	if err != nil || len(s2.Names()) != 5 {
		t.Fatalf("%v", err)
	}
	s2.Close()

	// An index naming a tensor its shard lacks, or a path outside dir, is an error.
	for _, wm := range []map[string]string{
		{"nope": "model-00001-of-00003.safetensors"},
		{"layer.a.weight": "../x.safetensors"},
	} {
		b, _ := json.Marshal(Index{WeightMap: wm})
		os.WriteFile(filepath.Join(dir, IndexFile), b, 0o644)
		if _, err := OpenDir(dir); err == nil {
			t.Errorf("index %v: no error", wm)
		}
	}
}

// FuzzParse checks that no header, however malformed, panics the parser or the decoders.
func FuzzParse(f *testing.F) {
	f.Add(rawFile(`{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"foo":"bar"}}`, i32bytes(1, 2, 3, 4)))
	f.Add(rawFile(`{"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]},"b":{"dtype":"F16","shape":[],"data_offsets":[2,4]}}`, make([]byte, 4)))
	f.Add(rawFile(`{"a":{"dtype":"F64","shape":[0],"data_offsets":[0,0]}}`, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := OpenBytes("fuzz", b)
		if err != nil {
			return
		}
		for _, n := range file.Names() {
			v, shape, err := file.Float32(n)
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
			ti, _ := file.TensorInfo(n)
			if len(v) != ti.NumElements() || len(shape) != len(ti.Shape) {
				t.Fatalf("%s: %d values for %v", n, len(v), shape)
			}
			file.Float32View(n)
		}
	})
}

// TestHFBytes compares with the byte strings of the reference implementation's
// own tests (huggingface/safetensors bindings/python/tests: test_serialization
// for torch, and a load test of an older writer's unaligned header with metadata).
func TestHFBytes(t *testing.T) {
	want := "@\x00\x00\x00\x00\x00\x00\x00" + `{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}` + "    " + strings.Repeat("\x00", 16)
	path := filepath.Join(t.TempDir(), "hf.safetensors")
	if err := Write(path, []Tensor{{Name: "test", DType: I32, Shape: []int{2, 2}, Data: make([]byte, 16)}}, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != want {
		t.Errorf("Write bytes differ from the reference:\n%q\n%q", got, want)
	}
	old := "f\x00\x00\x00\x00\x00\x00\x00" + `{"__metadata__":{"framework":"pt"},"test1":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}` + "       " + strings.Repeat("\x00", 16)
	f, err := OpenBytes("old", []byte(old))
	if err != nil {
		t.Fatal(err)
	}
	if v, _, err := f.Float32("test1"); err != nil || !reflect.DeepEqual(v, []float32{0, 0, 0, 0}) || f.Metadata()["framework"] != "pt" {
		t.Errorf("%v %v %v", v, err, f.Metadata())
	}
}
