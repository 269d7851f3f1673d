// Package config lets every saferlhf command read its flags from one config
// file (YAML, or JSON, which is YAML too) whose keys are the flag names:
// values from the file apply unless the flag is given on the command line.
// It also has range checks whose errors name the flag ("--lr must be > 0, got -1").
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/saferlhf/saferlhf/internal/atomicfile"
)

// FlagName is the name of the flag that names the config file.
const FlagName = "config"

// Parse parses args into fs and then applies the config file named by
// --config (defined on fs by Parse if the caller did not): every key must be a
// flag of fs (underscores and hyphens are interchangeable); flags set
// explicitly in args keep their command-line value. Errors name the file, line
// and key.
func Parse(fs *flag.FlagSet, args []string) error {
	if fs.Lookup(FlagName) == nil {
		fs.String(FlagName, "", "YAML or JSON file of flag values (keys = flag names); command-line flags win")
	}
	// A flag defined directly on fs (not by Register) may be given once too.
	fs.VisitAll(func(f *flag.Flag) {
		switch f.Value.(type) {
		case *value, *alias, *once:
		default:
			f.Value = &once{Value: f.Value, name: f.Name}
		}
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := fs.Lookup(FlagName).Value.String()
	if path == "" {
		return nil
	}
	return ApplyFile(fs, path)
}

// ApplyFile sets the flags of fs from the file at path, except those already
// set explicitly (fs must have been parsed).
func ApplyFile(fs *flag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return Apply(fs, path, b)
}

// Apply is ApplyFile on file contents; name is used in error messages.
func Apply(fs *flag.FlagSet, name string, data []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config %s: %w", name, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("config %s:%d: the file must be a mapping of flag names to values", name, root.Line)
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[canonical(f)] = true })
	seen := map[string]int{}
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		f := lookup(fs, key)
		where := fmt.Sprintf("config %s:%d: key %q", name, k.Line, key)
		if f == nil {
			errs = append(errs, fmt.Errorf("%s: unknown key (no flag --%s)%s", where, key, suggest(fs, key)))
			continue
		}
		if f.Name == FlagName {
			errs = append(errs, fmt.Errorf("%s: a config file cannot name another config file", where))
			continue
		}
		name := canonical(f)
		if line, dup := seen[name]; dup {
			errs = append(errs, fmt.Errorf("%s: flag --%s already set at line %d", where, name, line))
			continue
		}
		seen[name] = k.Line
		val, err := scalarValue(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if explicit[name] {
			continue // the command line wins
		}
		if err := fs.Set(name, val); err != nil {
			errs = append(errs, fmt.Errorf("%s: invalid value %q for --%s: %w", where, val, name, err))
		}
	}
	return errors.Join(errs...)
}

func lookup(fs *flag.FlagSet, key string) *flag.Flag {
	for _, k := range []string{key, strings.ReplaceAll(key, "_", "-"), strings.ReplaceAll(key, "-", "_")} {
		if f := fs.Lookup(k); f != nil {
			return f
		}
	}
	return nil
}

// scalarValue turns a YAML value into the flag's string form: scalars as
// written (so 2e-5 stays 2e-5), sequences of scalars joined with commas.
func scalarValue(v *yaml.Node) (string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return "", fmt.Errorf("null value")
		}
		return v.Value, nil
	case yaml.SequenceNode:
		parts := make([]string, len(v.Content))
		for i, c := range v.Content {
			if c.Kind != yaml.ScalarNode {
				return "", fmt.Errorf("list items must be scalars")
			}
			parts[i] = c.Value
		}
		return strings.Join(parts, ","), nil
	case yaml.AliasNode:
		return scalarValue(v.Alias)
	}
	return "", fmt.Errorf("value must be a scalar or a list, not a mapping")
}

// suggest names the closest flag when the key looks like a typo.
func suggest(fs *flag.FlagSet, key string) string {
	best, bestD := "", 3
	fs.VisitAll(func(f *flag.Flag) {
		if d := editDistance(strings.ReplaceAll(key, "_", "-"), strings.ReplaceAll(f.Name, "_", "-")); d < bestD {
			best, bestD = f.Name, d
		}
	})
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Effective returns every flag of fs (except --config and deprecated aliases) with its current value.
func Effective(fs *flag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if _, isAlias := f.Value.(*alias); f.Name != FlagName && !isAlias {
			m[f.Name] = f.Value.String()
		}
	})
	return m
}

// WriteEffective writes the effective flag values to path as YAML (atomically),
// sorted by name; the file can be passed back with --config to rerun.
func WriteEffective(fs *flag.FlagSet, path string) error {
	m := Effective(fs)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	root := &yaml.Node{Kind: yaml.MappingNode}
	for _, k := range keys {
		root.Content = append(root.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: k},
			&yaml.Node{Kind: yaml.ScalarNode, Value: m[k], Style: styleFor(m[k])})
	}
	b, err := yaml.Marshal(root)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if err := atomicfile.WriteBytes(path, b, 0o644); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// styleFor quotes values that YAML would otherwise read as something else (empty, null, ...).
func styleFor(v string) yaml.Style {
	var n yaml.Node
	if v == "" || yaml.Unmarshal([]byte(v), &n) != nil || len(n.Content) != 1 || n.Content[0].Kind != yaml.ScalarNode || n.Content[0].Value != v || n.Content[0].Tag == "!!null" {
		return yaml.DoubleQuotedStyle
	}
	return 0
}
