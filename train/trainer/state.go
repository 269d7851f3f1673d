package trainer

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/gomlx/gomlx/pkg/core/dtypes"
	"github.com/gomlx/gomlx/pkg/core/shapes"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"
)

// savedVar is one context variable as stored by SaveState: raw little-endian bytes.
type savedVar struct {
	Scope, Name string
	DType       int32
	Dims        []int
	Trainable   bool
	Data        []byte
}

// SaveState writes every variable of ctx (model weights, optimizer moments and step,
// RNG state) to path atomically (temporary file, fsync, rename). The bytes are the
// tensors' own, so LoadState restores them bit for bit.
func SaveState(ctx *context.Context, path string) error {
	var vars []savedVar
	for v := range ctx.IterVariables() {
		t, err := v.Value()
		if err != nil {
			return fmt.Errorf("save state %s: variable %s: %w", path, v.ScopeAndName(), err)
		}
		sv := savedVar{Scope: v.Scope(), Name: v.Name(), DType: int32(t.DType()), Dims: t.Shape().Dimensions, Trainable: v.Trainable}
		if err := t.ConstBytes(func(b []byte) { sv.Data = bytes.Clone(b) }); err != nil {
			return fmt.Errorf("save state %s: variable %s: %w", path, v.ScopeAndName(), err)
		}
		vars = append(vars, sv)
	}
	sort.Slice(vars, func(i, j int) bool {
		return vars[i].Scope+"/"+vars[i].Name < vars[j].Scope+"/"+vars[j].Name
	})
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(vars); err != nil {
		return fmt.Errorf("save state %s: %w", path, err)
	}
	return WriteFileAtomic(path, buf.Bytes())
}

// LoadState sets the variables of ctx from a file written by SaveState, creating
// those that do not exist yet (optimizer state before the first step).
func LoadState(ctx *context.Context, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	var vars []savedVar
	if err := gob.NewDecoder(bytes.NewReader(raw)).Decode(&vars); err != nil {
		return fmt.Errorf("load state %s: %w", path, err)
	}
	for _, sv := range vars {
		t := tensors.FromShape(shapes.Make(dtypes.DType(sv.DType), sv.Dims...))
		var n int
		if err := t.MutableBytes(func(b []byte) { n = copy(b, sv.Data) }); err != nil {
			return fmt.Errorf("load state %s: variable %s/%s: %w", path, sv.Scope, sv.Name, err)
		}
		if n != len(sv.Data) {
			return fmt.Errorf("load state %s: variable %s/%s: %d bytes for shape %v", path, sv.Scope, sv.Name, len(sv.Data), sv.Dims)
		}
		if v := ctx.GetVariableByScopeAndName(sv.Scope, sv.Name); v != nil {
			if !v.Shape().Equal(t.Shape()) {
				return fmt.Errorf("load state %s: variable %s/%s has shape %s, checkpoint has %s", path, sv.Scope, sv.Name, v.Shape(), t.Shape())
			}
			if err := v.SetValue(t); err != nil {
				return fmt.Errorf("load state %s: variable %s/%s: %w", path, sv.Scope, sv.Name, err)
			}
			continue
		}
		v := ctx.Checked(false).InAbsPath(sv.Scope).VariableWithValue(sv.Name, t)
		v.SetTrainable(sv.Trainable)
	}
	return nil
}

// WriteFileAtomic writes data to a temporary file in path's directory, fsyncs it and
// renames it over path, so readers see either the old or the new content.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	_ = d.Sync() // not supported everywhere; the rename is what matters
	return nil
}
