package cuda

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestKernelsOnCPUEmulator compiles the embedded CUDA sources with the host
// C++ compiler against a small CUDA emulator (testdata/emu/emu.h: a thread per
// CUDA thread, real barriers and warp shuffles) and runs every kernel against
// float64 references, so that CI without a GPU still checks the kernels' own
// code (tiled GAE scan, reductions, indexing, gradients). The parity tests
// against package kernels run on a real GPU.
func TestKernelsOnCPUEmulator(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the C++ build of the emulator")
	}
	gxx, err := exec.LookPath("g++")
	if err != nil {
		t.Skipf("no g++ to build the CUDA emulator: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "emu")
	build := exec.Command(gxx, "-std=c++20", "-O1", "-pthread", "-w", "-I", ".", "-o", bin, "testdata/emu/harness.cpp")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the emulator harness: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).CombinedOutput()
	t.Logf("%s", out)
	if err != nil || !strings.Contains(string(out), "ALL OK") {
		t.Fatalf("kernels on the CPU emulator: %v", err)
	}
}
