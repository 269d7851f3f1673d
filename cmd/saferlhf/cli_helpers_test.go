package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/native/engine"
)

// Shared helpers for the CLI tests of this package.

// buildCLIBinary builds the saferlhf binary (pure Go: CGO_ENABLED=0, -tags noxla)
// into a temporary directory and returns its path.
func buildCLIBinary(t *testing.T) string {
	t.Helper()
	return buildBinary(t, "0")
}

// buildNativeCLIBinary builds the cgo binary (the native engine compiled in, -tags noxla);
// it skips the test when this test binary was built without cgo.
func buildNativeCLIBinary(t *testing.T) string {
	t.Helper()
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	return buildBinary(t, "1")
}

func buildBinary(t *testing.T, cgo string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "saferlhf")
	cmd := exec.Command("go", "build", "-tags", "noxla", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runCLI runs the binary from the repository root and returns stdout, stderr and the exit code.
func runCLI(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = "../.."
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// captureStdout runs fn with os.Stdout redirected and returns what it wrote.
func captureStdout(t *testing.T, fn func() error) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	ferr := fn()
	os.Stdout = old
	w.Close()
	out := <-done
	if ferr != nil {
		t.Fatal(ferr)
	}
	return out
}
