//go:build ((linux && amd64) || darwin) && !noxla && cgo

package backend

import (
	"github.com/gomlx/gomlx/backends/xla"
)

func init() {
	// Never download plugins: the user names one, or FindCUDAPlugin finds one.
	xla.EnableAutoInstall(false)
}

func xlaCompiled() bool { return true }
