package safetensors

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Set is a model's tensors spread over one or more safetensors files (a
// sharded HF checkpoint), read lazily like a File.
type Set struct {
	dir   string
	files []*File
	where map[string]*File
	names []string
}

// OpenDir opens the tensors of a model directory: model.safetensors.index.json
// if present (every weight_map entry must exist in its shard), else
// model.safetensors, else the only *.safetensors file in dir. A path to a
// .safetensors file is accepted too.
func OpenDir(dir string) (*Set, error) {
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		f, err := Open(dir)
		if err != nil {
			return nil, err
		}
		return setOf(filepath.Dir(dir), f), nil
	}
	idxPath := filepath.Join(dir, IndexFile)
	if b, err := os.ReadFile(idxPath); err == nil {
		return openIndex(dir, idxPath, b)
	} else if !os.IsNotExist(err) {
		return nil, fmt.Errorf("safetensors %s: %w", idxPath, err)
	}
	single := filepath.Join(dir, SingleFile)
	if _, err := os.Stat(single); err != nil {
		matches, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
		if len(matches) != 1 {
			return nil, fmt.Errorf("safetensors %s: no %s or %s, and %d *.safetensors files", dir, IndexFile, SingleFile, len(matches))
		}
		single = matches[0]
	}
	f, err := Open(single)
	if err != nil {
		return nil, err
	}
	return setOf(dir, f), nil
}

func setOf(dir string, f *File) *Set {
	s := &Set{dir: dir, files: []*File{f}, where: map[string]*File{}, names: f.Names()}
	for _, n := range s.names {
		s.where[n] = f
	}
	return s
}

func openIndex(dir, idxPath string, b []byte) (_ *Set, err error) {
	var idx Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("safetensors %s: %w", idxPath, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, fmt.Errorf("safetensors %s: empty weight_map", idxPath)
	}
	s := &Set{dir: dir, where: map[string]*File{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	opened := map[string]*File{}
	names := make([]string, 0, len(idx.WeightMap))
	for n := range idx.WeightMap {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		shard := idx.WeightMap[n]
		if !filepath.IsLocal(shard) || filepath.Base(shard) != shard {
			return nil, fmt.Errorf("safetensors %s: tensor %q: shard name %q must be a plain file name", idxPath, n, shard)
		}
		f := opened[shard]
		if f == nil {
			f, err = Open(filepath.Join(dir, shard))
			if err != nil {
				return nil, fmt.Errorf("safetensors %s: %w", idxPath, err)
			}
			opened[shard] = f
			s.files = append(s.files, f)
		}
		if !f.Has(n) {
			return nil, fmt.Errorf("safetensors %s: tensor %q: listed in weight_map but missing from shard %s", idxPath, n, shard)
		}
		s.where[n] = f
	}
	s.names = names
	return s, nil
}

// Names returns the tensor names (sorted for a sharded set, data order for a single file).
func (s *Set) Names() []string { return append([]string(nil), s.names...) }

// Files returns the underlying open files.
func (s *Set) Files() []*File { return append([]*File(nil), s.files...) }

// Metadata returns the __metadata__ of the first file.
func (s *Set) Metadata() map[string]string {
	if len(s.files) == 0 {
		return nil
	}
	return s.files[0].Metadata()
}

// Has reports whether the set holds tensor name.
func (s *Set) Has(name string) bool { _, ok := s.where[name]; return ok }

func (s *Set) file(name string) (*File, error) {
	f, ok := s.where[name]
	if !ok {
		return nil, fmt.Errorf("safetensors %s: tensor %q: %w", s.dir, name, ErrNotFound)
	}
	return f, nil
}

// Info returns the dtype and shape of tensor name.
func (s *Set) Info(name string) (DType, []int, error) {
	f, err := s.file(name)
	if err != nil {
		return "", nil, err
	}
	return f.Info(name)
}

// Bytes returns the raw bytes of tensor name (aliasing the mapping).
func (s *Set) Bytes(name string) ([]byte, error) {
	f, err := s.file(name)
	if err != nil {
		return nil, err
	}
	return f.Bytes(name)
}

// Float32 decodes tensor name into a new float32 slice, with its shape.
func (s *Set) Float32(name string) ([]float32, []int, error) {
	f, err := s.file(name)
	if err != nil {
		return nil, nil, err
	}
	return f.Float32(name)
}

// Float32Into decodes tensor name into dst (exactly its number of elements).
func (s *Set) Float32Into(name string, dst []float32) error {
	f, err := s.file(name)
	if err != nil {
		return err
	}
	return f.Float32Into(name, dst)
}

// Close closes every file of the set.
func (s *Set) Close() error {
	var first error
	for _, f := range s.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	s.files = nil
	return first
}
