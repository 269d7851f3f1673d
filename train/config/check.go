package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
)

// Checker collects validation errors for flags, each naming its flag; Err joins
// them. It is the one validator of the commands' configurations.
//
//	var c config.Checker
//	c.Positive("lr", *lr)
//	c.Range("clip-range-ratio", *eps, 0, 1)
//	if err := c.Err(); err != nil { ... } // "--lr must be > 0, got -1"
type Checker struct {
	errs []error
}

func (c *Checker) add(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

// Positive requires v > 0 (and finite).
func (c *Checker) Positive(name string, v float64) {
	if !(v > 0) || math.IsInf(v, 0) {
		c.add("--%s must be > 0, got %v", name, v)
	}
}

// NonNegative requires v >= 0 (and finite).
func (c *Checker) NonNegative(name string, v float64) {
	if !(v >= 0) || math.IsInf(v, 0) {
		c.add("--%s must be >= 0, got %v", name, v)
	}
}

// Range requires lo <= v <= hi.
func (c *Checker) Range(name string, v, lo, hi float64) {
	if !(v >= lo && v <= hi) {
		c.add("--%s must be in [%v, %v], got %v", name, lo, hi, v)
	}
}

// Fraction requires 0 < v <= 1 (a probability mass such as --top-p).
func (c *Checker) Fraction(name string, v float64) {
	if !(v > 0 && v <= 1) {
		c.add("--%s must be in (0, 1], got %v", name, v)
	}
}

// PositiveInt requires v > 0.
func (c *Checker) PositiveInt(name string, v int) {
	if v <= 0 {
		c.add("--%s must be > 0, got %d", name, v)
	}
}

// NonNegativeInt requires v >= 0.
func (c *Checker) NonNegativeInt(name string, v int) {
	if v < 0 {
		c.add("--%s must be >= 0, got %d", name, v)
	}
}

// OneOf requires v to be one of allowed.
func (c *Checker) OneOf(name, v string, allowed ...string) {
	if !slices.Contains(allowed, v) {
		c.add("--%s must be one of %s, got %q", name, strings.Join(allowed, ", "), v)
	}
}

// Required requires a non-empty string.
func (c *Checker) Required(name, v string) {
	if v == "" {
		c.add("--%s is required", name)
	}
}

// Exists requires the path given to flag name, when not empty, to exist; the error names the
// flag ("--reward-model rm/x: no such file or directory") and wraps the cause (fs.ErrNotExist).
func (c *Checker) Exists(name, path string) {
	if path == "" {
		return
	}
	if _, err := os.Stat(path); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		c.add("--%s %s: %w", name, path, err)
	}
}

// Add adds err, when not nil, as it is (a check of another package that names its flags).
func (c *Checker) Add(err error) {
	if err != nil {
		c.errs = append(c.errs, err)
	}
}

// Check adds an error with the given message when ok is false.
func (c *Checker) Check(ok bool, format string, args ...any) {
	if !ok {
		c.add(format, args...)
	}
}

// Finite requires every float64 field of the struct v points to that has a
// flag tag (config.Register) to be finite, naming the flag.
func (c *Checker) Finite(v any) {
	finite(c, reflect.ValueOf(v).Elem())
}

func finite(c *Checker, s reflect.Value) {
	t := s.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			finite(c, s.Field(i))
			continue
		}
		if name := f.Tag.Get("flag"); name != "" && f.Type.Kind() == reflect.Float64 {
			if x := s.Field(i).Float(); math.IsNaN(x) || math.IsInf(x, 0) {
				c.add("--%s must be finite, got %v", name, x)
			}
		}
	}
}

// Err returns all collected errors joined (one per line), or nil.
func (c *Checker) Err() error { return errors.Join(c.errs...) }
