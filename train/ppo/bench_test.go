package ppo

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
)

// TestBenchCheckpointProof: with CheckpointDir the bench's run writes a real checkpoint (LoRA
// adapters and optimiser state, the merged actor) and a second trainer resumes from it for one
// more step; a non-empty directory is refused.
func TestBenchCheckpointProof(t *testing.T) {
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &model.Config{Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenSize: 16, IntermediateSize: 24,
		NumLayers: 2, NumHeads: 4, NumKVHeads: 2, VocabSize: 40, MaxPositions: 64, RMSNormEps: 1e-5, RopeTheta: 10000,
		BOS: 1, EOS: 2}
	dir := filepath.Join(t.TempDir(), "run")
	o := BenchOptions{Backend: be, BackendName: "go", Cfg: cfg, Batch: 2, PromptLen: 4, GenLen: 3, Steps: 1,
		LoRA: model.LoRAConfig{Rank: 2, Alpha: 4}, Sampling: Sampling{Temperature: 1, TopP: 1, TopK: 5, RepetitionPenalty: 1},
		CheckpointDir: dir}
	r, err := Bench(o)
	if err != nil {
		t.Fatal(err)
	}
	if r.CheckpointBytes <= 0 || r.CheckpointSecs <= 0 || r.ResumedStepSeconds <= 0 {
		t.Fatalf("checkpoint proof: %d bytes, write %gs, resumed step %gs", r.CheckpointBytes, r.CheckpointSecs, r.ResumedStepSeconds)
	}
	for _, step := range []string{"step-00000002", "step-00000003"} { // the stop's and the resumed run's
		if _, err := os.Stat(filepath.Join(dir, "checkpoints", step, "model.safetensors")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Bench(o); err == nil {
		t.Fatal("a second bench into the same directory was not refused")
	}
}
