package ppo

import (
	"slices"
	"testing"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native/engine"
)

// TestNativeGenerate: with the native backend, GraphNets.Generate samples the
// same rollout (tokens and mask) as the GoMLX generator on the go backend.
func TestNativeGenerate(t *testing.T) {
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
	cfg := tinyConfig()
	cfg.MaxNewTokens = 24
	withBackend := func(spec string) func(*GraphNetsConfig) {
		return func(gc *GraphNetsConfig) {
			be, err := backend.New(spec)
			if err != nil {
				t.Fatal(err)
			}
			gc.Backend = be
		}
	}
	goNets := tinyNets(t, cfg, withBackend("go"))
	natNets := tinyNets(t, cfg, withBackend(backend.Native))
	if _, ok := natNets.gen.(*nativeGenerator); !ok {
		t.Fatalf("native backend: generator is %T", natNets.gen)
	}
	prompts := [][]int32{{1, 403, 407}, {1, 30, 100, 200, 250, 260, 270, 280, 290, 300, 310}, {1}}
	want, err := goNets.Generate(prompts, 5)
	if err != nil {
		t.Fatal(err)
	}
	got, err := natNets.Generate(prompts, 5)
	if err != nil {
		t.Fatal(err)
	}
	if got.B != want.B || got.T != want.T || got.S != want.S || !slices.Equal(got.Seq, want.Seq) || !slices.Equal(got.Mask, want.Mask) {
		t.Fatalf("native rollout %+v\ndiffers from the graph's %+v", got, want)
	}
}
