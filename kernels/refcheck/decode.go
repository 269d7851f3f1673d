package refcheck

import (
	"encoding/json"
	"fmt"
	"math"
)

// fields is one decoded case: its JSON fields by name.
type fields map[string]json.RawMessage

func (c fields) raw(name string) (json.RawMessage, error) {
	r, ok := c[name]
	if !ok {
		return nil, fmt.Errorf("field %q missing", name)
	}
	return r, nil
}

// decode unmarshals field name into v; want describes the expected JSON in the error.
func (c fields) decode(name, want string, v any) error {
	r, err := c.raw(name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(r, v); err != nil {
		return fmt.Errorf("field %q: want %s: %v", name, want, err)
	}
	return nil
}

func (c fields) has(name string) bool { _, ok := c[name]; return ok }

func (c fields) float(name string) (float64, error) {
	r, err := c.raw(name)
	if err != nil {
		return 0, err
	}
	var v float64
	if err := json.Unmarshal(r, &v); err != nil {
		return 0, fmt.Errorf("field %q: want a number: %v", name, err)
	}
	return v, nil
}

// optFloat reads a number or null (returned as ok=false).
func (c fields) optFloat(name string) (v float64, ok bool, err error) {
	r, err := c.raw(name)
	if err != nil {
		return 0, false, err
	}
	if string(r) == "null" {
		return 0, false, nil
	}
	if err := json.Unmarshal(r, &v); err != nil {
		return 0, false, fmt.Errorf("field %q: want a number or null: %v", name, err)
	}
	return v, true, nil
}

func (c fields) int(name string) (int, error) {
	v, err := c.float(name)
	if err != nil {
		return 0, err
	}
	if v != math.Trunc(v) || v < 0 || v > 1<<30 {
		return 0, fmt.Errorf("field %q: want a non-negative integer, have %v", name, v)
	}
	return int(v), nil
}

func (c fields) str(name string) (string, error) {
	r, err := c.raw(name)
	if err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		return "", fmt.Errorf("field %q: want a string: %v", name, err)
	}
	return s, nil
}

// optStr reads a string or null ("").
func (c fields) optStr(name string) (string, error) {
	r, err := c.raw(name)
	if err != nil {
		return "", err
	}
	if string(r) == "null" {
		return "", nil
	}
	return c.str(name)
}

// vec reads a 1-D array of n numbers (n < 0: any length).
func (c fields) vec(name string, n int) ([]float64, error) {
	r, err := c.raw(name)
	if err != nil {
		return nil, err
	}
	var v []float64
	if err := json.Unmarshal(r, &v); err != nil {
		return nil, fmt.Errorf("field %q: want an array of numbers: %v", name, err)
	}
	if n >= 0 && len(v) != n {
		return nil, fmt.Errorf("field %q: %d elements, want %d", name, len(v), n)
	}
	for i, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, fmt.Errorf("field %q: element %d is %v", name, i, x)
		}
	}
	return v, nil
}

// mat reads a [rows][cols] array of numbers into a flat row-major slice.
func (c fields) mat(name string, rows, cols int) ([]float64, error) {
	r, err := c.raw(name)
	if err != nil {
		return nil, err
	}
	var v [][]float64
	if err := json.Unmarshal(r, &v); err != nil {
		return nil, fmt.Errorf("field %q: want a 2-D array of numbers: %v", name, err)
	}
	if len(v) != rows {
		return nil, fmt.Errorf("field %q: %d rows, want %d", name, len(v), rows)
	}
	out := make([]float64, 0, rows*cols)
	for i, row := range v {
		if len(row) != cols {
			return nil, fmt.Errorf("field %q: row %d has %d columns, want %d", name, i, len(row), cols)
		}
		for j, x := range row {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return nil, fmt.Errorf("field %q: element [%d][%d] is %v", name, i, j, x)
			}
		}
		out = append(out, row...)
	}
	return out, nil
}

// imat reads a [rows][cols] array of integers (token ids) into int32.
func (c fields) imat(name string, rows, cols int) ([]int32, error) {
	v, err := c.mat(name, rows, cols)
	if err != nil {
		return nil, err
	}
	out := make([]int32, len(v))
	for i, x := range v {
		if x != math.Trunc(x) || math.Abs(x) > math.MaxInt32 {
			return nil, fmt.Errorf("field %q: element %d is %v, want an int32", name, i, x)
		}
		out[i] = int32(x)
	}
	return out, nil
}

// mask reads a 0/1 matrix.
func (c fields) mask(name string, rows, cols int) ([]float64, error) {
	v, err := c.mat(name, rows, cols)
	if err != nil {
		return nil, err
	}
	for i, x := range v {
		if x != 0 && x != 1 {
			return nil, fmt.Errorf("field %q: element %d is %v, want 0 or 1", name, i, x)
		}
	}
	return v, nil
}

// reader reads a case's fields in sequence and keeps the first error: once one
// read fails, the later ones return zero values without looking, so a checker
// reads all its inputs and tests err once (the error is the one an early return
// after each read would have given).
type reader struct {
	c   fields
	err error
}

// get runs read unless an earlier read failed, recording its error.
func get[T any](r *reader, read func() (T, error)) T {
	var v T
	if r.err == nil {
		v, r.err = read()
	}
	return v
}

func (r *reader) int(name string) int { return get(r, func() (int, error) { return r.c.int(name) }) }

func (r *reader) float(name string) float64 {
	return get(r, func() (float64, error) { return r.c.float(name) })
}

func (r *reader) str(name string) string {
	return get(r, func() (string, error) { return r.c.str(name) })
}

func (r *reader) vec(name string, n int) []float64 {
	return get(r, func() ([]float64, error) { return r.c.vec(name, n) })
}

func (r *reader) mat(name string, rows, cols int) []float64 {
	return get(r, func() ([]float64, error) { return r.c.mat(name, rows, cols) })
}

func (r *reader) imat(name string, rows, cols int) []int32 {
	return get(r, func() ([]int32, error) { return r.c.imat(name, rows, cols) })
}

func (r *reader) mask(name string, rows, cols int) []float64 {
	return get(r, func() ([]float64, error) { return r.c.mask(name, rows, cols) })
}

// floats and mats read several fields of one kind (see the functions of the same
// names). After a failure they return len(names) zero values, so indexing stays safe.
func (r *reader) floats(names ...string) []float64 {
	return orZeros(get(r, func() ([]float64, error) { return floats(r.c, names...) }), len(names))
}

func (r *reader) mats(rows, cols int, names ...string) [][]float64 {
	return orZeros(get(r, func() ([][]float64, error) { return mats(r.c, rows, cols, names...) }), len(names))
}

func orZeros[T any](v []T, n int) []T {
	if v == nil {
		v = make([]T, n)
	}
	return v
}
