package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/saferlhf/saferlhf/internal/atomicfile"
)

// RunFile marks an output directory as a run of one kind ({"kind": "sft"}).
const RunFile = "run.json"

type runMarker struct {
	Kind string `json:"kind"`
}

// RunKind returns the kind recorded in dir's run.json, "" if there is none.
func RunKind(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, RunFile))
	if err != nil {
		return ""
	}
	var r runMarker
	if json.Unmarshal(b, &r) != nil {
		return ""
	}
	return r.Kind
}

// PrepareOutput makes dir ready for a run of kind, so that no output is ever
// overwritten by accident:
//   - a missing or empty dir is created and marked as a run of kind (with resume: an error, there is nothing to resume);
//   - with resume, dir must hold a run of the same kind;
//   - without resume, a non-empty dir is an error unless force is set and dir
//     holds a previous run of the same kind, which is then removed.
func PrepareOutput(dir, kind string, resume, force bool) error {
	remove, err := outputAction(dir, kind, resume, force)
	if err != nil || resume {
		return err
	}
	if remove {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("--force: removing %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("output %s: %w", dir, err)
	}
	b, _ := json.Marshal(runMarker{Kind: kind})
	return atomicfile.WriteBytes(filepath.Join(dir, RunFile), append(b, '\n'), 0o644)
}

// CheckOutput returns the error PrepareOutput would, without touching dir: a
// command checks its output before loading its inputs and prepares it after.
func CheckOutput(dir, kind string, resume, force bool) error {
	_, err := outputAction(dir, kind, resume, force)
	return err
}

// outputAction applies PrepareOutput's rules: an error, or whether a previous
// run in dir is to be removed (--force).
func outputAction(dir, kind string, resume, force bool) (remove bool, err error) {
	if dir == "" {
		return false, errors.New("no output directory")
	}
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		return false, fmt.Errorf("output %s is a file, not a directory", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("output %s: %w", dir, err)
	}
	have := RunKind(dir)
	describe := "files that are not a saferlhf run"
	if have != "" {
		describe = "a " + have + " run"
	} else if _, err := os.Stat(filepath.Join(dir, "checkpoints")); err == nil {
		describe = "a run of an older saferlhf (no " + RunFile + "; its checkpoints cannot be resumed)"
	}
	switch {
	case len(entries) == 0 && resume:
		return false, fmt.Errorf("--resume: %s holds no run to resume", dir)
	case len(entries) == 0:
		return false, nil
	case resume && have != kind:
		return false, fmt.Errorf("--resume: %s holds %s, not a %s run: resuming another stage's output is not possible", dir, describe, kind)
	case resume:
		return false, nil
	case !force:
		return false, fmt.Errorf("output %s is not empty (it holds %s): pass --resume to continue it, --force to replace a previous %s run, or choose another directory", dir, describe, kind)
	case have != kind:
		return false, fmt.Errorf("--force replaces only a previous %s run, but %s holds %s", kind, dir, describe)
	}
	return true, nil
}

// ResumeOptions says how Manager.Resume checks a checkpoint against the new run.
type ResumeOptions struct {
	// Kind is the stage of the new run; a checkpoint of another kind is always refused.
	Kind string
	// Config is the new run's configuration as JSON (nil: not compared).
	Config json.RawMessage
	// Ignore lists the config keys that do not change the trajectory (output
	// dir, logging, checkpoint cadence, ...); see CompareConfig.
	Ignore []string
	// Frozen are the new run's frozen models (see HashModel); each one the
	// checkpoint recorded must have the same content.
	Frozen []Frozen
	// AllowConfigChange accepts a changed config or frozen model (--allow-config-change).
	AllowConfigChange bool
}

// Resume opens the newest intact checkpoint (Latest) for a resumed run and
// checks it against the new run: no usable checkpoint is an error (never a
// fresh start), another stage kind is an error, and a changed trajectory
// setting or frozen model is an error naming it unless o.AllowConfigChange.
func (m *Manager) Resume(o ResumeOptions) (*Loaded, error) {
	l, err := m.Latest()
	if err != nil {
		return nil, fmt.Errorf("--resume: %w (nothing to continue: start the run again with --force instead)", err)
	}
	err = func() error {
		if l.State.Kind != o.Kind {
			return fmt.Errorf("--resume: %s was written by a %q run, not %q: resuming another stage's output is not possible", l.Dir, l.State.Kind, o.Kind)
		}
		var changed error
		if o.Config != nil {
			changed = CompareConfig(l.State.Config, o.Config, o.Ignore)
		}
		if changed == nil {
			changed = CompareFrozen(l.State.Frozen, o.Frozen)
		}
		if changed != nil && !o.AllowConfigChange {
			return fmt.Errorf("--resume from %s: %w (pass --allow-config-change to resume anyway)", l.Dir, changed)
		}
		return nil
	}()
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// ConfigChangeError names a setting that differs between a checkpoint's config and the new one.
type ConfigChangeError struct {
	Key             string
	Stored, Current string // JSON values ("" when absent)
}

func (e *ConfigChangeError) Error() string {
	show := func(s string) string {
		if s == "" {
			return "unset"
		}
		return s
	}
	return fmt.Sprintf("setting %q changed since the checkpoint (%s, now %s)", e.Key, show(e.Stored), show(e.Current))
}

// CompareConfig compares two configurations given as JSON objects, flattened
// to keys "a.b" for nested objects (arrays compare whole). It returns a
// *ConfigChangeError for the first key (in sorted order) whose value differs,
// unless the key, or an object enclosing it, is listed in ignore. A stored
// config that is not valid JSON is an error.
func CompareConfig(stored, current json.RawMessage, ignore []string) error {
	a, err := Flatten(stored)
	if err != nil {
		return fmt.Errorf("stored config: %w", err)
	}
	b, err := Flatten(current)
	if err != nil {
		return fmt.Errorf("new config: %w", err)
	}
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		if a[k] == b[k] || ignored(k, ignore) {
			continue
		}
		return &ConfigChangeError{Key: k, Stored: a[k], Current: b[k]}
	}
	return nil
}

func ignored(key string, ignore []string) bool {
	for _, x := range ignore {
		if key == x || strings.HasPrefix(key, x+".") {
			return true
		}
	}
	return false
}

// Flatten turns a JSON object into key → compact JSON value, nested objects
// joined with "." ({"a":{"b":1}} → "a.b": "1"). Empty input gives an empty map.
func Flatten(raw json.RawMessage) (map[string]string, error) {
	out := map[string]string{}
	if len(bytes.TrimSpace(raw)) == 0 {
		return out, nil
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if m, ok := v.(map[string]any); ok && (len(m) > 0 || prefix == "") {
			for k, x := range m {
				if prefix != "" {
					k = prefix + "." + k
				}
				walk(k, x)
			}
			return
		}
		b, _ := json.Marshal(v)
		out[prefix] = string(b)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("config is not a JSON object")
	}
	walk("", v)
	return out, nil
}

// Frozen is a model a run reads but never trains (a PPO reference actor,
// reward or cost model, a LoRA base): checkpoints reference it by path and
// content hash instead of copying it.
type Frozen struct {
	Role   string `json:"role"`
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// HashModel returns the sha256 over a model: a file's contents, or for a
// directory the names and contents of its regular files (not subdirectories),
// in name order.
func HashModel(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	h := sha256.New()
	files := []string{path}
	if st.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", path, err)
		}
		files = files[:0]
		for _, e := range entries {
			if e.Type().IsRegular() {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
	}
	for _, p := range files {
		if st.IsDir() {
			fmt.Fprintf(h, "%s\x00", filepath.Base(p))
		}
		f, err := os.Open(p)
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", path, err)
		}
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", p, err)
		}
		fmt.Fprintf(h, "\x00%d\x00", n)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FrozenModel hashes the model at path (HashModel) for a run's Frozen list.
func FrozenModel(role, path string) (Frozen, error) {
	sum, err := HashModel(path)
	if err != nil {
		return Frozen{}, fmt.Errorf("frozen %s: %w", role, err)
	}
	return Frozen{Role: role, Path: path, SHA256: sum}, nil
}

// CompareFrozen returns an error naming the first frozen model the checkpoint
// recorded (stored) that the new run lacks or whose content differs.
func CompareFrozen(stored, current []Frozen) error {
	cur := map[string]Frozen{}
	for _, f := range current {
		cur[f.Role] = f
	}
	for _, s := range stored {
		c, ok := cur[s.Role]
		switch {
		case !ok:
			return fmt.Errorf("frozen %s %s of the checkpoint is not used by the new run", s.Role, s.Path)
		case c.SHA256 != s.SHA256:
			return fmt.Errorf("frozen %s changed since the checkpoint: %s has sha256 %.12s…, the checkpoint used %s with %.12s…", s.Role, c.Path, c.SHA256, s.Path, s.SHA256)
		}
	}
	return nil
}
