//go:build !cgo

package engine

// Available reports whether the native engine is compiled into this binary (it needs cgo).
const Available = false

func unavailable() { panic(ErrUnavailable) }

func cThreads() int   { return 1 }
func cSetThreads(int) {}
func cISA() int       { return 0 }
func cSetISA(int) int { return 0 }
func cSgemm(bool, bool, int, int, int, float32, []float32, int, []float32, int, float32, []float32, int) {
	unavailable()
}
func cRMSNormFwd(int, int, []float32, []float32, float32, []float32, []float32) { unavailable() }
func cRMSNormBwd(int, int, []float32, []float32, []float32, []float32, []float32, bool, []float32) {
	unavailable()
}
func cSwiGLUFwd([]float32, []float32, []float32)                                   { unavailable() }
func cSwiGLUBwd([]float32, []float32, []float32, []float32, []float32)             { unavailable() }
func cRoPE(int, int, int, []int32, []float32, []float32, float32, []float32, bool) { unavailable() }
func cSoftmax(int, int, []float32)                                                 { unavailable() }
func cLogSoftmaxGather(int, int, []float32, int, []int32, []float32, []float32)    { unavailable() }
func cLogSoftmaxGatherBwd(int, int, []float32, int, []int32, []float32, []float32) { unavailable() }
func cAttnFwd(int, int, int, int, int, []float32, []float32, []float32, []float32, []float32, []float32) {
	unavailable()
}
func cAttnBwd(int, int, int, int, int, []float32, []float32, []float32, []float32, []float32, []float32, []float32, []float32, []float32, []float32) {
	unavailable()
}
func cAttnDecode(int, int, int, int, int, int, []float32, []float32, []float32, []float32, []float32) {
	unavailable()
}
func cDecodeLayer(int, int, int, int, int, int, int, int, float32, float32, []float32, []int32, []float32, []float32, []float32, []float32, []float32, []float32) {
	unavailable()
}
func cAdamW([]float32, []float32, []float32, []float32, float32, float32, float32, float32, float32, float32, float32) {
	unavailable()
}
func cSumSq([]float32) float64 { unavailable(); return 0 }

// BLAS is an installed CBLAS library loaded at run time (needs cgo).
type BLAS struct{ Config string }

// OpenBLAS returns ErrUnavailable in this build.
func OpenBLAS(string, int) (*BLAS, error) { return nil, ErrUnavailable }

// Sgemm is never reached in this build.
func (*BLAS) Sgemm(bool, bool, int, int, int, float32, []float32, int, []float32, int, float32, []float32, int) {
	unavailable()
}
