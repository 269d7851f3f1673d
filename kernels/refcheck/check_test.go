package refcheck

import (
	"os"
	"testing"
)

const goldenDir = "../../assets/golden"

func TestGoldenCPU(t *testing.T) {
	res, err := Run(goldenDir, CPU(false), CPU(true))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		t.Logf("%-26s %3d cases f64 %.2e f32 %.2e %s %s", r.File, r.Cases, r.MaxErr["f64"], r.MaxErr["f32"], r.Worst["f32"], r.Skipped)
		if r.Failed() {
			t.Errorf("%s: errors %v above tolerance (worst: %v)", r.File, r.MaxErr, r.Worst)
		}
	}
}

func TestGoldenGraph(t *testing.T) {
	g32, err := Graph("go")
	if err != nil {
		t.Fatal(err)
	}
	g64, err := Graph64("go")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(goldenDir, g32, g64)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		t.Logf("%-26s %3d cases graph %.2e graph64 %.2e %s %s", r.File, r.Cases, r.MaxErr["graph"], r.MaxErr["graph64"], r.Worst["graph64"], r.Skipped)
		if r.Failed() {
			t.Errorf("%s: errors %v above tolerance (worst: %v)", r.File, r.MaxErr, r.Worst)
		}
	}
}

// TestExtraDir checks the golden files of $REFCHECK_DIR (if set) on every path,
// e.g. vectors produced elsewhere: REFCHECK_DIR=/path go test ./kernels/refcheck -run ExtraDir -v
func TestExtraDir(t *testing.T) {
	dir := os.Getenv("REFCHECK_DIR")
	if dir == "" {
		t.Skip("REFCHECK_DIR not set")
	}
	g, err := Graph("go")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(dir, CPU(false), CPU(true), g)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		t.Logf("%-26s %3d cases %v %s", r.File, r.Cases, r.MaxErr, r.Skipped)
		if r.Failed() {
			t.Errorf("%s: errors %v above tolerance (worst: %v)", r.File, r.MaxErr, r.Worst)
		}
	}
}
