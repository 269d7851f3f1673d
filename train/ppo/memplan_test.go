package ppo

import (
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/dtypes"

	"github.com/saferlhf/saferlhf/train/model"
)

// TestMemoryPlan: the 7B LoRA bf16 run (B=16, 128+384 tokens, micro-batches of 4) fits an
// H200 (139 GiB at a 0.92 fraction); full fine-tuning in float32 does not, and the refusal names
// --dtype bf16 and --lora-rank; halving the micro-batch halves the activations.
func TestMemoryPlan(t *testing.T) {
	c7, _ := model.Preset("llama2-7b")
	s7 := *c7
	s7.ScoreDim = 1
	h200 := int64(143155) << 20 * 92 / 100 // 139.8 GiB at a 0.92 fraction
	lora := MemoryPlanConfig{Actor: c7, Reward: &s7, Cost: &s7, DType: dtypes.BFloat16, LoRA: model.LoRAConfig{Rank: 16, Alpha: 16},
		Batch: 16, MicroBatch: 4, PromptLen: 128, GenLen: 384}
	p := PlanMemory(lora)
	t.Log(p)
	if err := p.Check(h200, lora); err != nil {
		t.Fatalf("7B LoRA bf16 refused: %v", err)
	}
	if w := float64(p.Weights) / (1 << 30); w < 36 || w > 40 {
		t.Fatalf("weights %.1f GiB, want three bf16 7B bases ≈ 37.6 GiB", w)
	}
	full := lora
	full.DType, full.LoRA = dtypes.Float32, model.LoRAConfig{}
	err := PlanMemory(full).Check(h200, full)
	if err == nil || !strings.Contains(err.Error(), "--dtype bf16") || !strings.Contains(err.Error(), "--lora-rank") {
		t.Fatalf("7B full f32: %v", err)
	}
	half := lora
	half.MicroBatch = 2
	if a, b := PlanMemory(lora).Activations, PlanMemory(half).Activations; b*2 != a {
		t.Fatalf("activations %d with micro-batch 4, %d with 2", a, b)
	}
	if a, b := PlanMemory(lora).Scoring, PlanMemory(half).Scoring; b*2 != a {
		t.Fatalf("scoring transients %d with micro-batch 4, %d with 2: scoring runs in row blocks", a, b)
	}
	// Layerwise updates keep each layer's input only: far less than every layer's intermediates.
	lw := lora
	lw.Layerwise = true
	if a, b := PlanMemory(lora).Activations, PlanMemory(lw).Activations; !(b < a/4) {
		t.Fatalf("activations %d fused, %d layerwise: want under a quarter", a, b)
	}
}
