package ppo

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/gomlx/gomlx/pkg/core/dtypes"

	"github.com/saferlhf/saferlhf/train/model"
)

// MemoryPlan estimates the device memory of a PPO-Lag run before anything is allocated: frozen
// and trained weights, optimizer state, the generator's KV cache, the activations one update
// micro-batch keeps for its backward pass, and the scoring pass's largest transients. The
// estimate is an upper-bound style sum (XLA frees and reuses buffers, and may rematerialise),
// meant to refuse runs that cannot fit, not to predict the allocator to the byte.
type MemoryPlan struct {
	Weights, Trainable, Optimizer, KVCache, Activations, Scoring, Peak int64
}

// MemoryPlanConfig describes the run PlanMemory sizes.
type MemoryPlanConfig struct {
	Actor, Reward, Cost *model.Config // Cost nil: plain PPO
	DType               dtypes.DType
	LoRA                model.LoRAConfig
	Batch, MicroBatch   int // rollouts per update and rows per micro-batch (0: Batch)
	PromptLen, GenLen   int
	// Layerwise: the updates run layer by layer (UpdatesLayerwise, the XLA default), keeping
	// only each layer's input for the backward and recomputing one layer at a time.
	Layerwise bool
}

// PlanMemory returns the plan of c.
func PlanMemory(c MemoryPlanConfig) MemoryPlan {
	wb := int64(4)
	if c.DType == dtypes.BFloat16 {
		wb = 2
	}
	models := []*model.Config{c.Actor, c.Reward}
	if c.Cost != nil {
		models = append(models, c.Cost)
	}
	var p MemoryPlan
	for _, m := range models {
		// One frozen copy per pair (reference, reward model, cost model: under LoRA the base the
		// actor and critics share), and float32 trained weights or adapters.
		n := int64(m.NumParams())
		p.Weights += n * wb
		if c.LoRA.Rank > 0 {
			p.Trainable += 4 * c.LoRA.Params(m)
		} else {
			p.Trainable += 4 * n
		}
	}
	// AdamW's two moments, the gradients, and accumulators when micro-batching.
	p.Optimizer = 3 * p.Trainable
	mb := c.MicroBatch
	if mb <= 0 || mb > c.Batch {
		mb = c.Batch
	}
	if mb < c.Batch {
		p.Optimizer += p.Trainable
	}
	a := c.Actor
	t := int64(c.PromptLen + c.GenLen)
	kvWidth := int64(a.NumKVHeads * a.Dh())
	p.KVCache = 2 * int64(a.NumLayers) * int64(c.Batch) * (t + 64) * kvWidth * wb
	// Saved per token and layer for the backward pass: the float32 residual stream and norm
	// outputs, q/k/v/o and the FFN's gate, up and product in the compute dtype, plus the attention
	// scores (float32) and probabilities (compute dtype) of every key.
	d, f, h := int64(a.HiddenSize), int64(a.IntermediateSize), int64(a.NumHeads)
	perTok := 4*3*d + wb*(int64(a.NumHeads*a.Dh())+2*kvWidth+d+3*f) + h*t*(4+wb)
	p.Activations = int64(mb) * t * (int64(a.NumLayers)*perTok + 3*4*int64(a.VocabSize))
	if c.Layerwise {
		// Each layer's float32 input, plus one layer's intermediates while it is recomputed, and
		// the loss program's logits.
		p.Activations = int64(mb) * t * (int64(a.NumLayers)*4*d + perTok + 3*4*int64(a.VocabSize))
	}
	// Scoring (no gradients), in row blocks of the micro-batch size: a model's float32 logits and
	// their exponentials, and one layer's attention scores at a time.
	p.Scoring = int64(mb)*t*3*4*int64(a.VocabSize) + int64(mb)*h*t*t*(4+wb)
	p.Peak = p.Weights + p.Trainable + p.Optimizer + max(p.KVCache, p.Activations, p.Scoring)
	return p
}

func gib(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

// String is the plan as printed before the first step.
func (p MemoryPlan) String() string {
	return fmt.Sprintf("memory plan: weights %s, trained %s, optimizer+grads %s, KV cache %s, activations per micro-batch %s, scoring transients %s; estimated peak %s",
		gib(p.Weights), gib(p.Trainable), gib(p.Optimizer), gib(p.KVCache), gib(p.Activations), gib(p.Scoring), gib(p.Peak))
}

// Check refuses a plan whose peak exceeds capacity bytes, naming the flags that shrink it.
func (p MemoryPlan) Check(capacity int64, c MemoryPlanConfig) error {
	if capacity <= 0 || p.Peak <= capacity {
		return nil
	}
	var hints []string
	if c.DType != dtypes.BFloat16 {
		hints = append(hints, "--dtype bf16 (halves the weights)")
	}
	if c.LoRA.Rank == 0 {
		hints = append(hints, "--lora-rank 16 (trains adapters, not full copies)")
	}
	if p.Activations >= p.KVCache && p.Activations >= p.Scoring {
		mb := c.MicroBatch
		if mb <= 0 || mb > c.Batch {
			mb = c.Batch
		}
		if mb > 1 {
			hints = append(hints, fmt.Sprintf("--micro-batch-size %d", max(1, mb/2)))
		}
	}
	if p.KVCache >= p.Activations || p.Scoring >= p.Activations {
		hints = append(hints, "a smaller --train-batch-size/--batch or --max-new-tokens")
	}
	hints = append(hints, "--gpu-memory-fraction closer to 1")
	return fmt.Errorf("%s exceeds the device's %s: try %s", p, gib(capacity), strings.Join(hints, ", "))
}

// DeviceMemory returns the first GPU's total memory from nvidia-smi (0 when unknown).
func DeviceMemory() int64 {
	out, err := exec.Command("nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits").Output()
	if err != nil {
		return 0
	}
	mib, err := strconv.ParseInt(strings.TrimSpace(strings.Split(string(out), "\n")[0]), 10, 64)
	if err != nil {
		return 0
	}
	return mib << 20
}
