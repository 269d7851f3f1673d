//go:build !(((linux && amd64) || darwin) && !noxla && cgo)

package backend

func xlaCompiled() bool { return false }
