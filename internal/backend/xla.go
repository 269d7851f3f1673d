//go:build ((linux && amd64) || darwin) && !noxla && cgo

package backend

import (
	"fmt"
	"os"

	"github.com/gomlx/go-xla/pkg/pjrt"
	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/backends/xla"
)

func init() {
	// Never download plugins: the user names one, or FindCUDAPlugin finds one.
	xla.EnableAutoInstall(false)
}

func xlaCompiled() bool { return true }

// newXLA starts the XLA backend on plugin ("path[,options]") with the PJRT
// client options of o (the CUDA plugin's "memory_fraction" and "preallocate",
// as JAX passes them).
func newXLA(plugin string, o Options) (b backends.Backend, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("backend xla:%s: %v", plugin, r)
		}
	}()
	opts := pjrt.NamedValuesMap{"preallocate": o.Preallocate}
	if o.MemoryFraction > 0 {
		opts["memory_fraction"] = float32(o.MemoryFraction)
	}
	xb, err := xla.NewWithOptions(plugin, opts)
	if err != nil {
		// A plugin that rejects these options still runs, with its defaults.
		fmt.Fprintf(os.Stderr, "backend xla: PJRT client options %v refused (%v); using the plugin's defaults\n", opts, err)
		return xla.New(plugin)
	}
	return xb, nil
}
