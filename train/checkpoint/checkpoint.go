// Package checkpoint writes and reads training checkpoints atomically.
//
// A checkpoint is a directory <root>/step-NNNNNNNN holding
//
//	model.safetensors (or shards + index)  the model weights, HF names and layout
//	config.json                            the model config (optional), so the dir loads as an HF model
//	training_state.safetensors             every other variable: optimizer moments, step counters, RNG state
//	state.json                             step, host RNG, data position, λ state, metrics offset, ...
//	<extra files>                          anything else the trainer adds (tokenizer, ...)
//
// Everything is written into <root>/.tmp-step-N, fsynced, and the directory is
// renamed to step-N; then the text file <root>/latest is replaced atomically.
// A crash at any point leaves the previous checkpoints intact; Latest skips
// unreadable or partial directories with a warning.
package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/saferlhf/saferlhf/internal/atomicfile"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// File names inside a checkpoint directory.
const (
	StateFile      = "state.json"
	TrainStateFile = "training_state.safetensors"
	ConfigFile     = "config.json"
	LatestFile     = "latest"
	dirPrefix      = "step-"
	tmpPrefix      = ".tmp-step-"
)

// ErrNoCheckpoint is returned by Latest when the root holds no usable checkpoint.
var ErrNoCheckpoint = errors.New("no checkpoint")

// State is state.json: everything besides tensors that exact resumption needs.
// The opaque fields are produced and consumed by their owners (data reader,
// Lagrange multiplier, RNG) as JSON.
type State struct {
	// Step is the number of optimizer steps (or PPO iterations) completed.
	Step int `json:"step"`
	// Epoch and the data position (e.g. shards.Reader.Position) of the next batch.
	Epoch int             `json:"epoch,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	// RNG is the host random generator state (e.g. math/rand/v2 PCG MarshalBinary as base64 JSON).
	RNG json.RawMessage `json:"rng,omitempty"`
	// Lambda is the Lagrange multiplier state of PPO-Lag (λ, episode-cost window, delay counters).
	Lambda json.RawMessage `json:"lambda,omitempty"`
	// MetricsOffset is the byte length of metrics.jsonl at this step (metrics.ResumeAt).
	MetricsOffset int64 `json:"metrics_offset"`
	// Metrics holds the latest metric values (for display; resumption does not need them).
	Metrics map[string]float64 `json:"metrics,omitempty"`
	// Extra holds any other named state.
	Extra map[string]json.RawMessage `json:"extra,omitempty"`
	// Saved is the wall-clock time of the save (RFC 3339), informative only.
	Saved string `json:"saved,omitempty"`
}

// Array is a float32 tensor: flat row-major data and its shape.
type Array struct {
	Shape []int
	Data  []float32
}

// Checkpoint is what Save writes.
type Checkpoint struct {
	State State
	// Weights are the model weights by HF name; written as WeightsDType (default F32; BF16 halves the size).
	Weights      map[string]Array
	WeightsDType safetensors.DType
	// MaxShardBytes > 0 shards the weights HF-style (model-0000K-of-0000N + index).
	MaxShardBytes int64
	// Config is config.json (the model config); nil writes none.
	Config json.RawMessage
	// TrainState are the other tensors, bit-exact (see ContextTensors).
	TrainState []safetensors.Tensor
	// TrainStateMeta is the metadata of training_state.safetensors (e.g. TrainableMetadata).
	TrainStateMeta map[string]string
	// Files are extra files (name → contents) copied into the directory.
	Files map[string][]byte
}

// Manager saves checkpoints under Root and keeps the last Keep (all if Keep <= 0).
type Manager struct {
	Root string
	Keep int
	// Log receives warnings about skipped directories (default slog.Default()).
	Log *slog.Logger

	// hook, for tests, is called at named points of Save ("weights", "renamed").
	hook func(stage string)
}

// NewManager creates root if needed and returns a Manager keeping the last keep checkpoints.
func NewManager(root string, keep int) (*Manager, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	return &Manager{Root: root, Keep: keep}, nil
}

func (m *Manager) log() *slog.Logger {
	if m.Log != nil {
		return m.Log
	}
	return slog.Default()
}

// Dir returns the directory of the checkpoint of step.
func (m *Manager) Dir(step int) string {
	return filepath.Join(m.Root, fmt.Sprintf("%s%08d", dirPrefix, step))
}

// Save writes c atomically as step-<c.State.Step>, updates latest, and removes
// checkpoints beyond Keep and leftovers of interrupted saves. It returns the directory.
func (m *Manager) Save(c *Checkpoint) (string, error) {
	step := c.State.Step
	if step < 0 {
		return "", fmt.Errorf("checkpoint: negative step %d", step)
	}
	final := m.Dir(step)
	tmp := filepath.Join(m.Root, fmt.Sprintf("%s%d", tmpPrefix, step))
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("checkpoint step %d: %w", step, err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("checkpoint step %d: %w", step, err)
	}
	fail := func(err error) (string, error) {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("checkpoint step %d: %w", step, err)
	}
	if err := writeContents(tmp, c); err != nil {
		return fail(err)
	}
	if m.hook != nil {
		m.hook("weights")
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return fail(err)
	}
	// Replace an existing checkpoint of the same step (a resumed run saving again).
	if _, err := os.Stat(final); err == nil {
		old := filepath.Join(m.Root, fmt.Sprintf(".old-%s%d", dirPrefix, step))
		os.RemoveAll(old)
		if err := os.Rename(final, old); err != nil {
			return fail(err)
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fail(err)
	}
	if err := atomicfile.SyncDir(m.Root); err != nil {
		return "", fmt.Errorf("checkpoint step %d: %w", step, err)
	}
	if m.hook != nil {
		m.hook("renamed")
	}
	if err := atomicfile.WriteBytes(filepath.Join(m.Root, LatestFile), []byte(filepath.Base(final)+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("checkpoint step %d: %w", step, err)
	}
	m.prune(step)
	return final, nil
}

func writeContents(dir string, c *Checkpoint) error {
	st := c.State
	if st.Saved == "" {
		st.Saved = time.Now().UTC().Format(time.RFC3339)
	}
	names := make([]string, 0, len(c.Weights))
	for n := range c.Weights {
		names = append(names, n)
	}
	sort.Strings(names)
	dt := c.WeightsDType
	if dt == "" {
		dt = safetensors.F32
	}
	ts := make([]safetensors.Tensor, 0, len(names))
	for _, n := range names {
		a := c.Weights[n]
		ts = append(ts, safetensors.Tensor{Name: n, DType: dt, Shape: a.Shape, F32: a.Data})
	}
	if len(ts) > 0 {
		if _, err := safetensors.WriteDir(dir, ts, map[string]string{"format": "pt"}, c.MaxShardBytes); err != nil {
			return err
		}
	}
	if len(c.TrainState) > 0 {
		meta := map[string]string{"step": strconv.Itoa(st.Step)}
		for k, v := range c.TrainStateMeta {
			meta[k] = v
		}
		if err := safetensors.Write(filepath.Join(dir, TrainStateFile), c.TrainState, meta); err != nil {
			return err
		}
	}
	if c.Config != nil {
		if err := atomicfile.WriteBytes(filepath.Join(dir, ConfigFile), c.Config, 0o644); err != nil {
			return err
		}
	}
	for name, b := range c.Files {
		if !filepath.IsLocal(name) || name == StateFile {
			return fmt.Errorf("extra file name %q not allowed", name)
		}
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
			return err
		}
		if err := atomicfile.WriteBytes(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	sb, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("%s: %w", StateFile, err)
	}
	// state.json last: its presence marks a complete directory even without the rename.
	return atomicfile.WriteBytes(filepath.Join(dir, StateFile), append(sb, '\n'), 0o644)
}

// prune removes leftovers of interrupted saves and checkpoints beyond Keep (never keep).
func (m *Manager) prune(keep int) {
	entries, err := os.ReadDir(m.Root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) || strings.HasPrefix(e.Name(), ".old-") {
			os.RemoveAll(filepath.Join(m.Root, e.Name()))
		}
	}
	if m.Keep <= 0 {
		return
	}
	steps := m.steps()
	if len(steps) <= m.Keep {
		return
	}
	for _, s := range steps[:len(steps)-m.Keep] {
		if s != keep {
			os.RemoveAll(m.Dir(s))
		}
	}
}

// steps lists the step numbers of step-N directories, ascending (valid or not).
func (m *Manager) steps() []int {
	entries, err := os.ReadDir(m.Root)
	if err != nil {
		return nil
	}
	var steps []int
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), dirPrefix) {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), dirPrefix))
		if err == nil && n >= 0 {
			steps = append(steps, n)
		}
	}
	sort.Ints(steps)
	return steps
}

// Steps returns the steps of the checkpoints that load, ascending.
func (m *Manager) Steps() []int {
	var ok []int
	for _, s := range m.steps() {
		if l, err := Load(m.Dir(s)); err == nil {
			l.Close()
			ok = append(ok, s)
		}
	}
	return ok
}

// Loaded is an opened checkpoint. Weights and TrainState are lazily read
// (memory-mapped); Close releases them.
type Loaded struct {
	Dir        string
	State      State
	Config     json.RawMessage   // nil if the checkpoint has no config.json
	Weights    *safetensors.Set  // nil if the checkpoint has no weights
	TrainState *safetensors.File // nil if the checkpoint has no training state
}

// Close releases the memory maps.
func (l *Loaded) Close() error {
	var err error
	if l.Weights != nil {
		err = l.Weights.Close()
	}
	if l.TrainState != nil {
		if e := l.TrainState.Close(); err == nil {
			err = e
		}
	}
	return err
}

// WeightsMap decodes every weight to float32.
func (l *Loaded) WeightsMap() (map[string]Array, error) {
	out := map[string]Array{}
	if l.Weights == nil {
		return out, nil
	}
	for _, n := range l.Weights.Names() {
		d, s, err := l.Weights.Float32(n)
		if err != nil {
			return nil, err
		}
		out[n] = Array{Shape: s, Data: d}
	}
	return out, nil
}

// Load opens and validates the checkpoint directory dir: state.json must parse
// and every safetensors header must be valid.
func Load(dir string) (_ *Loaded, err error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	l := &Loaded{Dir: dir}
	if err := json.Unmarshal(b, &l.State); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %s: %w", dir, StateFile, err)
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if cb, err := os.ReadFile(filepath.Join(dir, ConfigFile)); err == nil {
		if !json.Valid(cb) {
			return nil, fmt.Errorf("checkpoint %s: %s is not valid JSON", dir, ConfigFile)
		}
		l.Config = cb
	}
	if hasWeights(dir) {
		if l.Weights, err = safetensors.OpenDir(dir); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, TrainStateFile)); err == nil {
		if l.TrainState, err = safetensors.Open(filepath.Join(dir, TrainStateFile)); err != nil {
			return nil, fmt.Errorf("checkpoint %s: %w", dir, err)
		}
	}
	return l, nil
}

func hasWeights(dir string) bool {
	for _, n := range []string{safetensors.IndexFile, safetensors.SingleFile} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			return true
		}
	}
	return false
}

// Latest opens the newest checkpoint that loads, skipping (with a warning)
// directories that do not: partial or corrupted ones. The latest pointer file
// is only a hint for people and tools: a complete step-N directory is
// committed by its rename. It returns an error wrapping ErrNoCheckpoint when none loads.
func (m *Manager) Latest() (*Loaded, error) {
	steps := m.steps()
	if p, err := os.ReadFile(filepath.Join(m.Root, LatestFile)); err == nil {
		name := strings.TrimSpace(string(p))
		if n, err := strconv.Atoi(strings.TrimPrefix(name, dirPrefix)); err == nil && len(steps) > 0 && n != steps[len(steps)-1] {
			m.log().Warn("checkpoint: latest pointer is not the newest directory (interrupted save?)", "latest", name, "newest", filepath.Base(m.Dir(steps[len(steps)-1])))
		}
	}
	for i := len(steps) - 1; i >= 0; i-- {
		l, err := Load(m.Dir(steps[i]))
		if err != nil {
			m.log().Warn("checkpoint: skipping unusable checkpoint", "dir", m.Dir(steps[i]), "err", err)
			continue
		}
		if l.State.Step != steps[i] {
			m.log().Warn("checkpoint: skipping checkpoint whose state.json names another step", "dir", m.Dir(steps[i]), "step", l.State.Step)
			l.Close()
			continue
		}
		return l, nil
	}
	return nil, fmt.Errorf("checkpoint %s: %w", m.Root, ErrNoCheckpoint)
}

// NonFiniteError reports a NaN or Inf training quantity.
type NonFiniteError struct {
	Step     int
	Quantity string
	Value    float64
}

func (e *NonFiniteError) Error() string {
	return fmt.Sprintf("step %d: %s is %v", e.Step, e.Quantity, e.Value)
}

// CheckFinite returns a *NonFiniteError naming the step and the first quantity
// (in sorted name order) that is NaN or ±Inf, or nil if all are finite.
func CheckFinite(step int, named map[string]float64) error {
	names := make([]string, 0, len(named))
	for k := range named {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if v := named[k]; math.IsNaN(v) || math.IsInf(v, 0) {
			return &NonFiniteError{Step: step, Quantity: k, Value: v}
		}
	}
	return nil
}
