//go:build !(((linux && amd64) || darwin) && !noxla && cgo)

package backend

import (
	"fmt"

	"github.com/gomlx/gomlx/backends"
)

func xlaCompiled() bool { return false }

func newXLA(string, Options) (backends.Backend, error) {
	return nil, fmt.Errorf("backend xla: this binary was built without XLA")
}
