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

// TestBenchRLMathModes: the bench runs with host and graph RL math; graph counts its bytes
// (PPO-Lag: 5 [B,L] float32 rows and 2 [B] scores up, 4 rows and 8 scalars down per rl_step,
// L = T−1 with T the bucketed prompt width plus the generated tokens).
func TestBenchRLMathModes(t *testing.T) {
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &model.Config{Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenSize: 8, IntermediateSize: 16,
		NumLayers: 1, NumHeads: 2, NumKVHeads: 1, VocabSize: 20, MaxPositions: 32, RMSNormEps: 1e-5, RopeTheta: 10000,
		BOS: 1, EOS: 2}
	for _, mode := range []string{RLMathHost, RLMathGraph} {
		o := BenchOptions{Backend: be, BackendName: "go", Cfg: cfg, Batch: 2, PromptLen: 3, GenLen: 2, Steps: 1, RLMath: mode,
			Sampling: Sampling{Temperature: 1, TopP: 1, RepetitionPenalty: 1}}
		r, err := Bench(o)
		if err != nil {
			t.Fatal(err)
		}
		B := int64(2)
		L := (r.RLMathD2HBytes/4 - 8) / (4 * B)
		up, down := 4*(5*B*L+2*B), 4*(4*B*L+8)
		if mode == RLMathHost {
			L, up, down = 4, 0, 0
		}
		if r.RLMath != mode || L < 4 || r.RLMathH2DBytes != up || r.RLMathD2HBytes != down {
			t.Errorf("%s: rl_math %q, %d bytes up, %d down; want %d, %d (L %d)", mode, r.RLMath, r.RLMathH2DBytes, r.RLMathD2HBytes, up, down, L)
		}
	}
}
