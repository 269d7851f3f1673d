package config

import (
	"flag"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
)

// Register defines one flag on fs for every field of the struct that v points
// to that has a `flag:"name"` tag; the field's current value is the flag's
// default (so the struct's constructor is the one place a default lives) and
// its `help:"..."` tag the usage text. An `alias:"old,..."` tag adds
// deprecated spellings that set the same field. Fields with a `group:"g"` tag
// are registered only when g is among groups. Embedded structs are walked.
//
// Supported field types: string, bool, int, uint64, float64 (and named types
// of those) and []string, a comma-separated list that accumulates when the
// flag is repeated. Any other flag given twice is an error.
//
//	type Config struct {
//		LR    float64  `flag:"lr" help:"peak learning rate"`
//		Data  []string `flag:"data" help:"training data"`
//		Steps int      `flag:"max-steps" alias:"steps" help:"cap on optimizer steps"`
//	}
//	c := Config{LR: 2e-5}
//	config.Register(fs, &c)
func Register(fs *flag.FlagSet, v any, groups ...string) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.Elem().Kind() != reflect.Struct {
		panic(fmt.Sprintf("config.Register: want a pointer to a struct, got %T", v))
	}
	register(fs, rv.Elem(), groups)
}

func register(fs *flag.FlagSet, s reflect.Value, groups []string) {
	t := s.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			register(fs, s.Field(i), groups)
			continue
		}
		name := f.Tag.Get("flag")
		if name == "" || !f.IsExported() {
			continue
		}
		if g := f.Tag.Get("group"); g != "" && !contains(groups, g) {
			continue
		}
		val := newValue(s.Field(i), name)
		fs.Var(val, name, f.Tag.Get("help"))
		for _, a := range strings.Split(f.Tag.Get("alias"), ",") {
			if a != "" {
				fs.Var(&alias{val, name}, a, "deprecated spelling of --"+name)
			}
		}
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// value is a flag bound to a struct field.
type value struct {
	f    reflect.Value
	name string
	set  bool
}

func newValue(f reflect.Value, name string) *value {
	switch f.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Uint64, reflect.Float64:
	case reflect.Slice:
		if f.Type().Elem().Kind() != reflect.String {
			panic(fmt.Sprintf("config.Register: --%s: unsupported type %s", name, f.Type()))
		}
	default:
		panic(fmt.Sprintf("config.Register: --%s: unsupported type %s", name, f.Type()))
	}
	return &value{f: f, name: name}
}

func (v *value) String() string {
	if v == nil || !v.f.IsValid() {
		return ""
	}
	switch v.f.Kind() {
	case reflect.Slice:
		return strings.Join(v.f.Interface().([]string), ",")
	case reflect.Float64:
		return strconv.FormatFloat(v.f.Float(), 'g', -1, 64)
	}
	return fmt.Sprint(v.f.Interface())
}

func (v *value) IsBoolFlag() bool { return v.f.Kind() == reflect.Bool }

func (v *value) Set(s string) error {
	if v.f.Kind() == reflect.Slice {
		var items []string
		if v.set { // a repeated list flag accumulates
			items = v.f.Interface().([]string)
		}
		for _, x := range strings.Split(s, ",") {
			if x = strings.TrimSpace(x); x != "" {
				items = append(items, x)
			}
		}
		v.f.Set(reflect.ValueOf(items).Convert(v.f.Type()))
		v.set = true
		return nil
	}
	if v.set {
		return fmt.Errorf("--%s given more than once", v.name)
	}
	switch v.f.Kind() {
	case reflect.String:
		v.f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("want true or false")
		}
		v.f.SetBool(b)
	case reflect.Int:
		n, err := strconv.ParseInt(s, 0, strconv.IntSize)
		if err != nil {
			return fmt.Errorf("want an integer")
		}
		v.f.SetInt(n)
	case reflect.Uint64:
		n, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			return fmt.Errorf("want a non-negative integer")
		}
		v.f.SetUint(n)
	case reflect.Float64:
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("want a number")
		}
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Errorf("want a finite number")
		}
		v.f.SetFloat(x)
	}
	v.set = true
	return nil
}

// once wraps a flag.Value defined outside Register so that giving it twice is an error.
type once struct {
	flag.Value
	name string
	set  bool
}

func (o *once) String() string {
	if o == nil || o.Value == nil {
		return ""
	}
	return o.Value.String()
}

func (o *once) Set(s string) error {
	if o.set {
		return fmt.Errorf("--%s given more than once", o.name)
	}
	o.set = true
	return o.Value.Set(s)
}

func (o *once) IsBoolFlag() bool {
	b, ok := o.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// alias is a deprecated spelling of another flag: it sets the same field.
type alias struct {
	*value
	target string
}

// Canonical returns the name of the flag f stands for (its own name unless f is
// a deprecated alias).
func Canonical(f *flag.Flag) string { return canonical(f) }

func canonical(f *flag.Flag) string {
	if a, ok := f.Value.(*alias); ok {
		return a.target
	}
	return f.Name
}

// IsSet reports whether the flag called name (or one of its aliases) was set
// on the command line or by the config file.
func IsSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || canonical(f) == name })
	return set
}
