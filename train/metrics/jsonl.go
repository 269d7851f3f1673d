// Package metrics records training curves: a JSONL writer (one object per
// record, written and flushed line by line, resumable), PNG plots of the curves
// and of distributions (gonum.org/v1/plot), and a progress bar.
package metrics

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"

	"github.com/saferlhf/saferlhf/internal/atomicfile"
)

// Record is one line of a metrics file: the optimizer step, numeric values and
// optional string tags (e.g. "split": "eval"). Non-finite values are written as
// JSON null and read back as NaN.
type Record struct {
	Step   int
	Values map[string]float64
	Tags   map[string]string
}

// MarshalJSON writes {"step":N, sorted keys...}; floats use the shortest
// representation that reads back to the same float64, so two runs with equal
// values produce byte-identical files.
func (r Record) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"step":`)
	b.WriteString(strconv.Itoa(r.Step))
	keys := make([]string, 0, len(r.Values)+len(r.Tags))
	for k := range r.Values {
		keys = append(keys, k)
	}
	for k := range r.Tags {
		if _, dup := r.Values[k]; dup {
			return nil, fmt.Errorf("metrics: key %q is both a value and a tag", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "step" {
			return nil, fmt.Errorf("metrics: key \"step\" is reserved")
		}
		kb, _ := json.Marshal(k)
		b.WriteByte(',')
		b.Write(kb)
		b.WriteByte(':')
		if t, ok := r.Tags[k]; ok {
			tb, _ := json.Marshal(t)
			b.Write(tb)
			continue
		}
		v := r.Values[k]
		if math.IsNaN(v) || math.IsInf(v, 0) {
			b.WriteString("null")
		} else {
			b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads a line written by MarshalJSON (numbers → Values, strings → Tags, null → NaN).
func (r *Record) UnmarshalJSON(data []byte) error {
	var m map[string]any
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return err
	}
	st, ok := m["step"].(json.Number)
	if !ok {
		return errors.New(`missing numeric "step"`)
	}
	step, err := st.Int64()
	if err != nil {
		return fmt.Errorf("step: %w", err)
	}
	*r = Record{Step: int(step), Values: map[string]float64{}}
	for k, v := range m {
		if k == "step" {
			continue
		}
		switch x := v.(type) {
		case json.Number:
			f, err := x.Float64()
			if err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			r.Values[k] = f
		case nil:
			r.Values[k] = math.NaN()
		case string:
			if r.Tags == nil {
				r.Tags = map[string]string{}
			}
			r.Tags[k] = x
		case bool:
			r.Values[k] = map[bool]float64{false: 0, true: 1}[x]
		default:
			return fmt.Errorf("%s: unsupported value %v", k, v)
		}
	}
	return nil
}

// Writer appends records to a JSONL file, one write(2) per line (nothing stays
// buffered in the process if it is killed).
type Writer struct {
	path string
	f    *os.File
}

// Create starts a fresh metrics file at path (truncating any old one).
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return &Writer{path: path, f: f}, nil
}

// Resume opens path for appending after a resume from the checkpoint of step
// resumeStep: it keeps the records up to and including resumeStep and drops
// the rest (records of later steps, and the unreadable tail a crash can leave:
// a torn last line, NUL padding), rewriting the file atomically, so that the
// finished file equals that of an uninterrupted run. Records of a step must
// therefore be written before that step's checkpoint. An unreadable line
// followed by records that are kept is an error naming the line. A missing
// file is created.
func Resume(path string, resumeStep int) (*Writer, error) {
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	var keep bytes.Buffer
	bad := 0 // first unreadable line (1-based) not yet followed by a kept record
	for i, line := range bytes.Split(raw, []byte("\n")) {
		if len(bytes.TrimSpace(bytes.Trim(line, "\x00"))) == 0 {
			continue
		}
		var r Record
		if json.Unmarshal(line, &r) != nil {
			if bad == 0 {
				bad = i + 1
			}
			continue
		}
		if r.Step > resumeStep {
			continue
		}
		if bad != 0 {
			return nil, fmt.Errorf("metrics %s:%d: unreadable line before the records of step %d", path, bad, r.Step)
		}
		keep.Write(line)
		keep.WriteByte('\n')
	}
	if err := atomicfile.WriteBytes(path, keep.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return &Writer{path: path, f: f}, nil
}

// Path returns the file path.
func (w *Writer) Path() string { return w.path }

// Write appends one record {"step": step, values...}.
func (w *Writer) Write(step int, values map[string]float64) error {
	return w.WriteRecord(Record{Step: step, Values: values})
}

// WriteJSON appends v, which must marshal to a JSON object with a numeric
// "step" (a struct with a `json:"step"` field), as one line: for records whose
// key order is fixed by a struct rather than sorted.
func (w *Writer) WriteJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("metrics %s: %w", w.path, err)
	}
	var r Record
	if err := r.UnmarshalJSON(b); err != nil {
		return fmt.Errorf("metrics %s: %w", w.path, err)
	}
	if _, err := w.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("metrics %s: %w", w.path, err)
	}
	return nil
}

// WriteRecord appends r as one line.
func (w *Writer) WriteRecord(r Record) error {
	b, err := r.MarshalJSON()
	if err != nil {
		return fmt.Errorf("metrics %s: step %d: %w", w.path, r.Step, err)
	}
	if _, err := w.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("metrics %s: %w", w.path, err)
	}
	return nil
}

// Sync fsyncs the file (call it before writing a checkpoint).
func (w *Writer) Sync() error {
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("metrics %s: %w", w.path, err)
	}
	return nil
}

// Close closes the file.
func (w *Writer) Close() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("metrics %s: %w", w.path, err)
	}
	return nil
}

// Read returns the records of a metrics file. A torn last line is ignored;
// an invalid line elsewhere is an error naming the file and line.
func Read(path string) ([]Record, error) {
	recs, _, err := readLines(path)
	return recs, err
}

func readLines(path string) ([]Record, [][]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	var recs []Record
	var lines [][]byte
	parts := bytes.Split(raw, []byte("\n"))
	for i, line := range parts {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			if i == len(parts)-1 {
				break // torn final line without its newline: the process died mid-write
			}
			return nil, nil, fmt.Errorf("metrics %s:%d: %w", path, i+1, err)
		}
		recs = append(recs, r)
		lines = append(lines, line)
	}
	return recs, lines, nil
}

// Series extracts (step, value) pairs of key from records that have it and,
// if tag is non-empty ("split=eval"), whose tags match; NaN values are skipped.
func Series(recs []Record, key, tag string) (steps, values []float64) {
	tk, tv, hasTag := cut(tag)
	for _, r := range recs {
		if hasTag && r.Tags[tk] != tv {
			continue
		}
		v, ok := r.Values[key]
		if !ok || math.IsNaN(v) {
			continue
		}
		steps = append(steps, float64(r.Step))
		values = append(values, v)
	}
	return steps, values
}

func cut(tag string) (k, v string, ok bool) {
	for i := 0; i < len(tag); i++ {
		if tag[i] == '=' {
			return tag[:i], tag[i+1:], true
		}
	}
	return "", "", false
}
