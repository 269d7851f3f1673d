// Package backend starts the GoMLX backend that runs the model graphs, chosen
// explicitly by the user: the pure-Go backend (always built), "native" (the
// same pure-Go backend for graphs, with the native C engine of native/llama
// for whatever has a native path: the default when built with cgo) or XLA
// through a PJRT plugin given by name or absolute path. It never lets GoMLX
// auto-install anything.
package backend

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gomlx/gomlx/backends"
	_ "github.com/gomlx/gomlx/backends/simplego" // the pure-Go backend, always available

	"github.com/saferlhf/saferlhf/native/engine"
)

// Default is the backend used when none is given: the pure-Go backend with
// sequential op execution (the parallel executor of GoMLX v0.26 can deadlock
// when several large DotGenerals are ready at once; DotGeneral itself still
// uses every core).
const Default = "go:ops_sequential"

// EnvVar names the environment variable that overrides Default.
const EnvVar = "SAFERLHF_BACKEND"

// Native is the spec of the native C engine (native/llama) over the pure-Go backend.
const Native = "native"

// DefaultSpec is the spec used when none is given: Native when the native
// engine is compiled in (cgo builds), else Default.
func DefaultSpec() string {
	if engine.Available {
		return Native
	}
	return Default
}

// Resolve returns the backend spec to use: spec if non-empty, else $SAFERLHF_BACKEND, else DefaultSpec().
// "go" alone expands to Default.
func Resolve(spec string) string {
	if spec == "" {
		spec = os.Getenv(EnvVar)
	}
	if spec == "" {
		spec = DefaultSpec()
	}
	if spec == "go" {
		return Default
	}
	return spec
}

// nativeBackend is the pure-Go backend marked for the native engine.
type nativeBackend struct{ backends.Backend }

// IsNative reports whether be was started with the "native" spec: callers
// with a native path (generation, see native/llama.NewGenerator) take it.
func IsNative(be backends.Backend) bool {
	_, ok := be.(nativeBackend)
	return ok
}

// New starts the backend named by spec (see Resolve). Accepted forms:
//
//	go, go:<simplego options>         pure-Go backend
//	native                            the native C engine where it has a path, the pure-Go backend elsewhere
//	xla:cuda                          XLA with the CUDA PJRT plugin found on this machine
//	xla:/abs/path/to/pjrt_plugin.so   XLA with that plugin
func New(spec string) (backends.Backend, error) { return NewWithOptions(spec, Options{}) }

// Options are the PJRT client's settings (XLA backends only).
type Options struct {
	// MemoryFraction is the fraction of the GPU's memory the client's pool may
	// take (--gpu-memory-fraction, in (0, 1]; 0: the plugin's default, 0.75).
	MemoryFraction float64
	// Preallocate makes the client take its whole pool at start (the plugin's
	// default); false allocates on demand, so nvidia-smi shows the real peak.
	Preallocate bool
}

// Check refuses options the backend of spec cannot apply: a memory fraction outside [0, 1], or
// one for a backend without a PJRT client (go, native), which would ignore it.
func (o Options) Check(spec string) error {
	if o.MemoryFraction < 0 || o.MemoryFraction > 1 {
		return fmt.Errorf("--gpu-memory-fraction %g: want a value in (0, 1]", o.MemoryFraction)
	}
	spec = Resolve(spec)
	if name, _, _ := strings.Cut(spec, ":"); o.MemoryFraction > 0 && name != "xla" {
		return fmt.Errorf("--gpu-memory-fraction %g: --backend %s has no GPU memory pool to size (it applies to --backend xla:cuda)", o.MemoryFraction, spec)
	}
	return nil
}

// NewWithOptions is New with PJRT client options (see Options.Check).
func NewWithOptions(spec string, o Options) (backends.Backend, error) {
	if err := o.Check(spec); err != nil {
		return nil, err
	}
	spec = Resolve(spec)
	name, cfg, _ := strings.Cut(spec, ":")
	switch name {
	case "go":
		return newChecked(spec)
	case Native:
		if cfg != "" {
			return nil, fmt.Errorf("backend %q: native takes no options", spec)
		}
		if !engine.Available {
			return nil, fmt.Errorf("backend %q: %w", spec, engine.ErrUnavailable)
		}
		be, err := newChecked(Default)
		if err != nil {
			return nil, err
		}
		return nativeBackend{be}, nil
	case "xla":
		plugin, err := resolvePlugin(cfg)
		if err != nil {
			return nil, err
		}
		if !xlaCompiled() {
			return nil, fmt.Errorf("backend %q: this binary was built without XLA (tag noxla or CGO_ENABLED=0); rebuild with cgo", spec)
		}
		if o.MemoryFraction > 0 || o.Preallocate {
			return newXLA(plugin, o)
		}
		return newChecked("xla:" + plugin)
	default:
		return nil, fmt.Errorf("backend %q: unknown backend %q (want native, go, go:<options>, xla:cuda or xla:/abs/plugin.so)", spec, name)
	}
}

// resolvePlugin turns "cuda" or an absolute path into an absolute plugin path
// that exists, so that go-xla never falls back to downloading one.
func resolvePlugin(cfg string) (string, error) {
	plugin, opts, _ := strings.Cut(cfg, ",")
	if plugin == "" {
		return "", fmt.Errorf("backend xla: no plugin given (use xla:cuda or xla:/abs/path/pjrt_plugin.so)")
	}
	if plugin == "cuda" {
		p, err := FindCUDAPlugin()
		if err != nil {
			return "", err
		}
		plugin = p
	}
	if !filepath.IsAbs(plugin) {
		return "", fmt.Errorf("backend xla:%s: plugin must be \"cuda\" or an absolute path", cfg)
	}
	if _, err := os.Stat(plugin); err != nil {
		return "", fmt.Errorf("backend xla: plugin %s: %w", plugin, err)
	}
	if opts != "" {
		plugin += "," + opts
	}
	return plugin, nil
}

// newChecked calls GoMLX, turning its panics into errors.
func newChecked(spec string) (b backends.Backend, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("backend %q: %v", spec, r)
		}
	}()
	b, err = backends.NewWithConfig(spec)
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", spec, err)
	}
	return b, nil
}
