package backend

import (
	"strings"
	"testing"
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

func TestResolve(t *testing.T) {
	t.Setenv(EnvVar, "")
	if got := Resolve(""); got != Default {
		t.Errorf("Resolve(\"\") = %q, want %q", got, Default)
	}
	t.Setenv(EnvVar, "go:parallelism=1")
	if got := Resolve(""); got != "go:parallelism=1" {
		t.Errorf("Resolve with env = %q", got)
	}
	if got := Resolve("xla:cuda"); got != "xla:cuda" {
		t.Errorf("Resolve(xla:cuda) = %q", got)
	}
}
