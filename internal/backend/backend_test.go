package backend

import (
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/native/engine"
)

func TestNew(t *testing.T) {
	tests := []struct {
		spec    string
		wantErr string
	}{
		{spec: "go"},
		{spec: "go:ops_sequential"},
		{spec: "go:nonsense", wantErr: "unknown configuration option"},
		{spec: "tpu", wantErr: "unknown backend"},
		{spec: "xla:relative/plugin.so", wantErr: "absolute path"},
		{spec: "xla:/nonexistent/plugin.so", wantErr: "no such file"},
		{spec: "xla:", wantErr: "no plugin given"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			b, err := New(tt.spec)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New(%q): %v", tt.spec, err)
				}
				if !strings.Contains(b.Name(), "go") {
					t.Errorf("New(%q).Name() = %q, want the go backend", tt.spec, b.Name())
				}
				b.Finalize()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New(%q) error = %v, want one containing %q", tt.spec, err, tt.wantErr)
			}
		})
	}
}

// TestOptionsCheck: a memory fraction is refused out of range, and on the backends without a
// PJRT client, which would ignore it.
func TestOptionsCheck(t *testing.T) {
	for _, tc := range []struct {
		spec    string
		frac    float64
		wantErr string
	}{
		{"go", 0, ""},
		{"native", 0, ""},
		{"xla:cuda", 0.3, ""},
		{"xla:/opt/plugin.so", 1, ""},
		{"go", 0.3, "--gpu-memory-fraction 0.3: --backend go:ops_sequential has no GPU memory pool"},
		{"native", 0.5, "--backend native has no GPU memory pool"},
		{"xla:cuda", 1.5, "want a value in (0, 1]"},
		{"xla:cuda", -0.1, "want a value in (0, 1]"},
	} {
		err := Options{MemoryFraction: tc.frac}.Check(tc.spec)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Check(%s, %g) = %v, want %q", tc.spec, tc.frac, err, tc.wantErr)
		}
	}
	if _, err := NewWithOptions("go", Options{MemoryFraction: 0.3}); err == nil {
		t.Error("NewWithOptions(go, memory fraction 0.3) started")
	}
}

// TestNative: "native" starts the pure-Go backend marked for the native
// engine when it is compiled in, and says why not otherwise.
func TestNative(t *testing.T) {
	b, err := New(Native)
	if !engine.Available {
		if err == nil || !strings.Contains(err.Error(), "not compiled in") {
			t.Fatalf("New(native) without cgo: error %v", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if !IsNative(b) || !strings.Contains(b.Name(), "go") {
		t.Fatalf("New(native) = %s, IsNative %v", b.Name(), IsNative(b))
	}
	g, err := New("go")
	if err != nil {
		t.Fatal(err)
	}
	if IsNative(g) {
		t.Fatal("IsNative(go backend) = true")
	}
	if _, err := New("native:x"); err == nil {
		t.Fatal("native:x: no error")
	}
}

func TestResolve(t *testing.T) {
	t.Setenv(EnvVar, "")
	if got := Resolve(""); got != DefaultSpec() {
		t.Errorf("Resolve(\"\") = %q, want %q", got, DefaultSpec())
	}
	if got, want := DefaultSpec() == Native, engine.Available; got != want {
		t.Errorf("DefaultSpec() = %q with the native engine available=%v", DefaultSpec(), want)
	}
	t.Setenv(EnvVar, "go:parallelism=1")
	if got := Resolve(""); got != "go:parallelism=1" {
		t.Errorf("Resolve with env = %q", got)
	}
	if got := Resolve("xla:cuda"); got != "xla:cuda" {
		t.Errorf("Resolve(xla:cuda) = %q", got)
	}
}
