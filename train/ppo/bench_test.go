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
// more step; Measured sees the result before that step; a non-empty directory is refused.
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
	var early BenchResult // what Measured saw, before the resumed step
	o.Measured = func(r *BenchResult) { early = *r }
	r, err := Bench(o)
	if err != nil {
		t.Fatal(err)
	}
	if r.CheckpointBytes <= 0 || r.CheckpointSecs <= 0 || r.ResumedStepSeconds <= 0 {
		t.Fatalf("checkpoint proof: %d bytes, write %gs, resumed step %gs", r.CheckpointBytes, r.CheckpointSecs, r.ResumedStepSeconds)
	}
	if early.StepSeconds != r.StepSeconds || early.CheckpointBytes != r.CheckpointBytes || len(early.Programs) == 0 || early.ResumedStepSeconds != 0 {
		t.Errorf("Measured before the resume: step %gs, checkpoint %d bytes, %d programs, resumed step %gs; final: step %gs, checkpoint %d bytes",
			early.StepSeconds, early.CheckpointBytes, len(early.Programs), early.ResumedStepSeconds, r.StepSeconds, r.CheckpointBytes)
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

// TestBenchRLMathModes: the bench runs with host and graph RL math and reports the counted
// host↔device bytes. With graph the per-token tensors stay on the device: per step the ids go up
// once, the RL math moves 2 [B] end scores up and 8 scalars down, and everything besides the ids
// stays below one [B,L] float32 tensor; with host it is many of them.
func TestBenchRLMathModes(t *testing.T) {
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &model.Config{Architecture: "LlamaForCausalLM", ModelType: "llama", HiddenSize: 8, IntermediateSize: 16,
		NumLayers: 1, NumHeads: 2, NumKVHeads: 1, VocabSize: 20, MaxPositions: 32, RMSNormEps: 1e-5, RopeTheta: 10000,
		BOS: 1, EOS: 2}
	const B = 2
	var L int64
	for _, mode := range []string{RLMathGraph, RLMathHost} {
		o := BenchOptions{Backend: be, BackendName: "go", Cfg: cfg, Batch: B, PromptLen: 3, GenLen: 2, Steps: 1, RLMath: mode,
			Sampling: Sampling{Temperature: 1, TopP: 1, RepetitionPenalty: 1}}
		r, err := Bench(o)
		if err != nil {
			t.Fatal(err)
		}
		floats := r.HostDeviceBytes - r.HostDeviceIDBytes
		if r.RLMath != mode || r.H2DBytes+r.D2HBytes <= r.HostDeviceBytes {
			t.Errorf("%s: rl_math %q, %d + %d bytes in all, %d counted", mode, r.RLMath, r.H2DBytes, r.D2HBytes, r.HostDeviceBytes)
		}
		if mode == RLMathGraph {
			L = r.HostDeviceIDBytes/(4*B) - 1 // the sequences, once
			if L < 4 || r.RLMathH2DBytes != 4*2*B || r.RLMathD2HBytes != 4*8 || floats >= 4*B*L {
				t.Errorf("graph: L %d; RL math %d bytes up, %d down (want %d, %d); %d bytes besides ids, want < %d",
					L, r.RLMathH2DBytes, r.RLMathD2HBytes, 4*2*B, 4*8, floats, 4*B*L)
			}
		} else if r.RLMathH2DBytes != 0 || floats < 10*4*B*L {
			t.Errorf("host: RL math %d bytes; %d bytes besides ids, want ≥ %d", r.RLMathH2DBytes, floats, 10*4*B*L)
		}
	}
}
