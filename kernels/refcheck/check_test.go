package refcheck

import (
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
