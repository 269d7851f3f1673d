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
