// Package checkpoint is the one checkpoint format of saferlhf: every stage (SFT,
// reward and cost models, PPO-Lagrangian and its baselines) saves and resumes
// through it.
//
// A checkpoint is a directory <root>/step-NNNNNNNN holding
//
//	model.safetensors (or shards + index)  trained weights, HF names and layout, each tensor in its own dtype
//	config.json                            the model config, so the directory opens as an HF model
//	training_state.safetensors             every other variable, bit for bit: optimiser moments, step counters, ...
//	state.json                             step, stage kind, run config, data position, RNG, λ state, frozen bases
//	<extra files>                          anything else the trainer adds (tokenizer, ...)
//	manifest.json                          size and sha256 of every file above, written last
//
// Tensors are streamed to disk one by one (safetensors.Tensor.Stream), so a
// checkpoint has no size limit and needs no second host copy of the weights.
// Frozen models (a PPO reference actor, reward and cost models, LoRA bases) are
// not copied: state.json records their path and content hash (Frozen).
//
// Everything is written into <root>/.tmp-step-N, fsynced, and the directory is
// renamed to step-N; then the text file <root>/latest is replaced atomically.
// A crash at any point leaves the previous checkpoints intact. Load verifies
// every file against the manifest; Latest uses the newest checkpoint that
// verifies, skipping damaged or incomplete ones with a warning naming them.
// Save refuses tensors holding NaN or ±Inf, so a diverged step is never saved.
package checkpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	ManifestFile   = "manifest.json"
	LatestFile     = "latest"
	dirPrefix      = "step-"
	tmpPrefix      = ".tmp-step-"
)

// DefaultShardBytes is the weight shard size when Checkpoint.MaxShardBytes is 0 (HF's 5GB).
const DefaultShardBytes = 5_000_000_000

// ErrNoCheckpoint is returned by Latest when the root holds no usable checkpoint.
var ErrNoCheckpoint = errors.New("no usable checkpoint")

// State is state.json: everything besides tensors that exact resumption needs.
// The opaque fields are produced and consumed by their owners (data reader,
// Lagrange multiplier, RNG) as JSON.
type State struct {
	// Step is the number of optimizer steps (or PPO rollout batches) completed.
	Step int `json:"step"`
	// Kind names the stage that wrote the checkpoint ("sft", "train-rm", "ppo-lag", ...);
	// a run of another kind never resumes from it.
	Kind string `json:"kind,omitempty"`
	// Config is the run's configuration as JSON, compared on resume (CompareConfig).
	Config json.RawMessage `json:"config,omitempty"`
	// Epoch and the data position (e.g. shards.Reader.Position) of the next batch.
	Epoch int             `json:"epoch,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	// RNG is a host random generator's state (e.g. math/rand/v2 PCG MarshalBinary as base64 JSON),
	// for a trainer that draws from one. PPO no longer does (its sampling streams are functions of
	// the seed); older PPO checkpoints hold one, which its resume refuses.
	RNG json.RawMessage `json:"rng,omitempty"`
	// Lambda is the Lagrange multiplier state of PPO-Lag (λ, episode-cost window, delay counters).
	Lambda json.RawMessage `json:"lambda,omitempty"`
	// Frozen lists the models the run reads but does not train, by path and content hash.
	Frozen []Frozen `json:"frozen,omitempty"`
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
	// Weights are the trained model's weights by HF name, each in its own dtype
	// (Data, F32 or Stream; see safetensors.Tensor).
	Weights []safetensors.Tensor
	// MaxShardBytes shards the weights HF-style (model-0000K-of-0000N + index)
	// into files of at most this size; 0 means DefaultShardBytes, < 0 one file.
	MaxShardBytes int64
	// Config is config.json (the model config); nil writes none.
	Config json.RawMessage
	// TrainState are the other tensors, bit-exact (see ContextTensors).
	TrainState []safetensors.Tensor
	// WeightsScope, when set, is the context scope whose variables the Weights are
	// (variable WeightsScope/N holds weight N, as train/model names them): a
	// TrainState tensor WeightsScope/N equal to weight N in dtype, shape and bytes
	// is stored once, in the weights; Loaded.RestoreContext reads it back from there.
	WeightsScope string
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

	// last is the newest checkpoint this manager saved or loaded intact.
	last string
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

// LastIntact names the newest checkpoint known to be intact (saved by this
// manager, or the newest that verifies), or says that there is none; for messages.
func (m *Manager) LastIntact() string {
	if m.last != "" {
		return m.last
	}
	l, err := m.latest(false)
	if err != nil {
		return "none (no intact checkpoint in " + m.Root + ")"
	}
	l.Close()
	return l.Dir
}

// Save writes c atomically as step-<c.State.Step>, updates latest, and removes
// checkpoints beyond Keep and leftovers of interrupted saves. It returns the
// directory. A weight or training-state tensor holding NaN or ±Inf aborts the
// save with a *NonFiniteError naming it (the previous checkpoints stay as they are).
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
		var nf *NonFiniteError
		if errors.As(err, &nf) {
			return "", fmt.Errorf("checkpoint step %d not saved: %w (the last intact checkpoint is %s)", step, err, m.LastIntact())
		}
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
	m.last = final
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
	ws := guardTensors(st.Step, c.Weights)
	written := digests{}
	if c.WeightsScope != "" && len(c.TrainState) > 0 {
		ws = recordDigests(ws, written)
	}
	sort.SliceStable(ws, func(i, j int) bool { return ws[i].Name < ws[j].Name })
	if len(ws) > 0 {
		shard := c.MaxShardBytes
		if shard == 0 {
			shard = DefaultShardBytes
		}
		if _, err := safetensors.WriteDir(dir, ws, map[string]string{"format": "pt"}, max(shard, 0)); err != nil {
			return err
		}
	}
	if len(c.TrainState) > 0 {
		meta := map[string]string{"step": strconv.Itoa(st.Step)}
		for k, v := range c.TrainStateMeta {
			meta[k] = v
		}
		ts, inWeights, err := dropStoredWeights(c.WeightsScope, c.Weights, c.TrainState, written)
		if err != nil {
			return err
		}
		if len(inWeights) > 0 {
			b, _ := json.Marshal(inWeights)
			meta[inWeightsKey] = string(b)
		}
		if err := safetensors.Write(filepath.Join(dir, TrainStateFile), guardTensors(st.Step, ts), meta); err != nil {
			return err
		}
	}
	if c.Config != nil {
		if err := atomicfile.WriteBytes(filepath.Join(dir, ConfigFile), c.Config, 0o644); err != nil {
			return err
		}
	}
	for name, b := range c.Files {
		if !filepath.IsLocal(name) || name == StateFile || name == ManifestFile {
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
	if err := atomicfile.WriteBytes(filepath.Join(dir, StateFile), append(sb, '\n'), 0o644); err != nil {
		return err
	}
	// The manifest last: its presence and checksums mark a complete directory.
	return writeManifest(dir)
}

// manifest is manifest.json: every other file of the checkpoint with its size and sha256.
type manifest struct {
	Files map[string]fileSum `json:"files"`
}

type fileSum struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func writeManifest(dir string) error {
	mf := manifest{Files: map[string]fileSum{}}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == ManifestFile {
			return nil
		}
		s, err := sumFile(p)
		if err != nil {
			return err
		}
		mf.Files[filepath.ToSlash(rel)] = s
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", ManifestFile, err)
	}
	b, err := json.MarshalIndent(mf, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", ManifestFile, err)
	}
	return atomicfile.WriteBytes(filepath.Join(dir, ManifestFile), append(b, '\n'), 0o644)
}

func sumFile(path string) (fileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileSum{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fileSum{}, fmt.Errorf("%s: %w", path, err)
	}
	return fileSum{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Verify checks every file of the checkpoint directory dir against its
// manifest (size and sha256) and returns an error naming the first file that
// is missing or differs, or a missing manifest (an incomplete checkpoint).
func Verify(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return fmt.Errorf("checkpoint %s: incomplete (no readable %s): %w", dir, ManifestFile, err)
	}
	var mf manifest
	if err := json.Unmarshal(b, &mf); err != nil {
		return fmt.Errorf("checkpoint %s: %s: %w", dir, ManifestFile, err)
	}
	if _, ok := mf.Files[StateFile]; !ok {
		return fmt.Errorf("checkpoint %s: %s does not list %s", dir, ManifestFile, StateFile)
	}
	names := make([]string, 0, len(mf.Files))
	for n := range mf.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !filepath.IsLocal(filepath.FromSlash(n)) {
			return fmt.Errorf("checkpoint %s: %s lists %q outside the checkpoint", dir, ManifestFile, n)
		}
		want := mf.Files[n]
		got, err := sumFile(filepath.Join(dir, filepath.FromSlash(n)))
		if err != nil {
			return fmt.Errorf("checkpoint %s: %w", dir, err)
		}
		if got.Size != want.Size {
			return fmt.Errorf("checkpoint %s: %s has %d bytes, the manifest says %d (truncated or damaged)", dir, n, got.Size, want.Size)
		}
		if got.SHA256 != want.SHA256 {
			return fmt.Errorf("checkpoint %s: %s is damaged (sha256 %s, the manifest says %s)", dir, n, got.SHA256, want.SHA256)
		}
	}
	return nil
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
		if err == nil && n >= 0 && e.Name() == filepath.Base(m.Dir(n)) {
			steps = append(steps, n)
		}
	}
	sort.Ints(steps)
	return steps
}

// Existing returns the steps of every step-N directory under Root, intact or
// not, ascending: a fresh run must not start over any of them.
func (m *Manager) Existing() []int { return m.steps() }

// Steps returns the steps of the checkpoints that verify and load, ascending.
func (m *Manager) Steps() []int {
	var ok []int
	for _, s := range m.steps() {
		if l, err := Load(m.Dir(s)); err == nil && l.State.Step == s {
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

// Load verifies (Verify) and opens the checkpoint directory dir: state.json
// must parse and every safetensors header must be valid.
func Load(dir string) (_ *Loaded, err error) {
	if err := Verify(dir); err != nil {
		return nil, err
	}
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

// Latest opens the newest checkpoint that verifies and loads, skipping (with a
// warning naming it) directories that do not: partial, damaged, or whose
// state.json names another step. The latest pointer file is only a hint for
// people and tools and is never followed. It returns an error wrapping
// ErrNoCheckpoint when none is usable.
func (m *Manager) Latest() (*Loaded, error) { return m.latest(true) }

func (m *Manager) latest(warn bool) (*Loaded, error) {
	steps := m.steps()
	if warn {
		m.checkPointer(steps)
	}
	var unusable []string // why each checkpoint there is was skipped, for the error if none is left
	for i := len(steps) - 1; i >= 0; i-- {
		dir := m.Dir(steps[i])
		l, err := Load(dir)
		if err != nil {
			unusable = append(unusable, err.Error())
			if warn {
				m.log().Warn("checkpoint: skipping unusable checkpoint", "dir", dir, "err", err)
			}
			continue
		}
		if l.State.Step != steps[i] {
			unusable = append(unusable, fmt.Sprintf("checkpoint %s: state.json names step %d", dir, l.State.Step))
			if warn {
				m.log().Warn("checkpoint: skipping checkpoint whose state.json names another step", "dir", dir, "step", l.State.Step)
			}
			l.Close()
			continue
		}
		m.last = dir
		return l, nil
	}
	if len(unusable) > 0 {
		return nil, fmt.Errorf("checkpoint %s: %w among %d: %s", m.Root, ErrNoCheckpoint, len(unusable), strings.Join(unusable, "; "))
	}
	return nil, fmt.Errorf("checkpoint %s: %w", m.Root, ErrNoCheckpoint)
}

// checkPointer warns when the latest file is not the name of the newest step
// directory of the root (an interrupted save, or a pointer edited to lead elsewhere).
func (m *Manager) checkPointer(steps []int) {
	p, err := os.ReadFile(filepath.Join(m.Root, LatestFile))
	if err != nil || len(steps) == 0 {
		return
	}
	name := strings.TrimSpace(string(p))
	newest := filepath.Base(m.Dir(steps[len(steps)-1]))
	switch {
	case !filepath.IsLocal(name) || strings.ContainsAny(name, `/\`) || !strings.HasPrefix(name, dirPrefix):
		m.log().Warn("checkpoint: ignoring a latest pointer that does not name a checkpoint of this run", "latest", name, "root", m.Root)
	case name != newest:
		m.log().Warn("checkpoint: latest pointer is not the newest directory (interrupted save?)", "latest", name, "newest", newest)
	}
}
