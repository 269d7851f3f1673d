//go:build !(cgo && linux && !noxla)

package cuda

const xlaBuild = false
