package native

import (
	"errors"
	"math"
	"os"
	"strings"
	"testing"
)

// RequireGPUEnv, when set (bench/gpu/check.sh sets it), turns "no GPU" skips into failures.
const requireGPUEnv = "SAFERLHF_REQUIRE_GPU"

// openOrSkip opens GPU 0, or skips the test saying why (no cgo, no driver, no device).
func openOrSkip(t testing.TB) *CUDA {
	t.Helper()
	c, err := Open()
	if err != nil {
		if os.Getenv(requireGPUEnv) != "" {
			t.Fatalf("%s is set but: %v", requireGPUEnv, err)
		}
		t.Skipf("no GPU: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestPackArg(t *testing.T) {
	tests := []struct {
		in   any
		want uint64
	}{
		{DevicePtr(0xdeadbeef), 0xdeadbeef},
		{int(-1), math.MaxUint64},
		{int32(-2), math.MaxUint64 - 1},
		{uint32(7), 7},
		{float32(1.5), uint64(math.Float32bits(1.5))},
		{float64(-2.25), math.Float64bits(-2.25)},
		{true, 1},
	}
	for _, tt := range tests {
		got, err := packArg(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("packArg(%T %v) = %#x, %v; want %#x", tt.in, tt.in, got, err, tt.want)
		}
		// A 32-bit parameter reads the low word: it must equal the 32-bit value.
		if v, ok := tt.in.(int32); ok && int32(uint32(got)) != v {
			t.Errorf("packArg(int32 %d): low word %d", v, int32(uint32(got)))
		}
	}
	if _, err := packArg("x"); err == nil {
		t.Error("packArg(string) succeeded")
	}
}

func TestOpenWithoutCUDA(t *testing.T) {
	if Compiled {
		t.Skip("cgo build: covered by TestOpen")
	}
	if _, err := Open(); !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("Open() error = %v, want ErrNoCUDA", err)
	}
}

func TestCandidates(t *testing.T) {
	t.Setenv(NVRTCEnvVar, "/x/libnvrtc.so.13")
	t.Setenv(CUDAEnvVar, "/y/libcuda.so.1")
	if c := nvrtcCandidates(); c[0] != "/x/libnvrtc.so.13" || c[1] != "libnvrtc.so.13" {
		t.Errorf("nvrtcCandidates() starts %q", c[:2])
	}
	if c := driverCandidates(); c[0] != "/y/libcuda.so.1" || c[1] != "libcuda.so.1" {
		t.Errorf("driverCandidates() starts %q", c[:2])
	}
	dir := t.TempDir()
	for _, n := range []string{"libnvrtc.so.13", "libnvrtc-builtins.so.13.0", "libnvrtc-builtins.so"} {
		if err := os.WriteFile(dir+"/"+n, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b := builtinsNextTo(dir + "/libnvrtc.so.13")
	if len(b) != 2 || !strings.HasSuffix(b[0], "so.13.0") {
		t.Errorf("builtinsNextTo = %q", b)
	}
	if builtinsNextTo("libnvrtc.so.13") != nil {
		t.Error("builtinsNextTo(soname) should be empty")
	}
}

const testSrc = `
extern "C" __global__ void axpy(float *y, const float *x, float a, int n, long long off) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n) y[i] = a * x[i] + y[i] + (float)off;
}`

func TestOpenCompileLaunch(t *testing.T) {
	c := openOrSkip(t)
	t.Logf("%s", c.Info())
	if c.Info().Major < 3 || c.Info().SMs < 1 || c.Info().TotalMem <= 0 {
		t.Fatalf("implausible device info %+v", c.Info())
	}
	ma, mi, path, err := c.NVRTCVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("NVRTC %d.%d at %s", ma, mi, path)
	m, err := c.Compile(testSrc, "axpy.cu", "")
	if err != nil {
		t.Fatal(err)
	}
	if m2, _ := c.Compile(testSrc, "axpy.cu", ""); m2 != m {
		t.Error("second Compile of the same source was not served from the cache")
	}
	f, err := m.Function("axpy")
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	x, y := make([]float32, n), make([]float32, n)
	for i := range x {
		x[i], y[i] = float32(i), float32(2*i)
	}
	dx, err := Upload(c, x)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free(dx)
	dy, err := Upload(c, y)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Free(dy)
	start, _ := c.NewEvent()
	stop, _ := c.NewEvent()
	defer start.Destroy()
	defer stop.Destroy()
	if err := start.Record(); err != nil {
		t.Fatal(err)
	}
	if err := c.Launch(f, D1((n+255)/256), D1(256), 0, dy, dx, float32(0.5), n, int64(3)); err != nil {
		t.Fatal(err)
	}
	if err := stop.Record(); err != nil {
		t.Fatal(err)
	}
	if err := stop.Synchronize(); err != nil {
		t.Fatal(err)
	}
	ms, err := stop.ElapsedMs(start)
	if err != nil || ms < 0 {
		t.Fatalf("ElapsedMs = %v, %v", ms, err)
	}
	got, err := Download[float32](c, dy, n)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if want := 0.5*x[i] + y[i] + 3; got[i] != want {
			t.Fatalf("y[%d] = %v, want %v", i, got[i], want)
		}
	}
	if !c.IsDevicePtr(dy) || c.IsDevicePtr(0x10) {
		t.Error("IsDevicePtr is wrong")
	}
	// Poisoning with a 32-bit pattern, then copying device to device.
	if err := c.Memset32(dy, math.Float32bits(float32(math.NaN())), n); err != nil {
		t.Fatal(err)
	}
	if got, _ := Download[float32](c, dy, 1); !math.IsNaN(float64(got[0])) {
		t.Errorf("after Memset32 NaN: %v", got[0])
	}
	if err := c.CopyDtoD(dy, dx, 4*n); err != nil {
		t.Fatal(err)
	}
	if got, _ := Download[float32](c, dy, n); got[n-1] != x[n-1] {
		t.Errorf("CopyDtoD: %v", got[n-1])
	}
}

func TestCompileErrorHasLog(t *testing.T) {
	c := openOrSkip(t)
	_, err := c.Compile(`extern "C" __global__ void bad() { undefined_thing(); }`, "bad.cu", "")
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(e.Log, "undefined_thing") {
		t.Fatalf("Compile(bad) error = %v, want an *Error with the compiler log", err)
	}
	if _, err := c.Alloc(1 << 62); err == nil || !strings.Contains(err.Error(), "cuMemAlloc") {
		t.Errorf("Alloc(huge) error = %v", err)
	}
}
