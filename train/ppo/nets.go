package ppo

import (
	"encoding/json"

	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// Nets runs the six networks of the loop (spec §1.1): the trained actor, the frozen reference
// actor, the frozen reward and cost models, and the trained reward and cost critics. The loop in
// trainer.go is written against this interface only; GoMLX implements it (GraphNets), and tests
// use small fakes.
type Nets interface {
	// Generate samples a response for every prompt (left padded by the implementation) with the
	// actor and returns seq and attention mask (spec §1.2 steps 1–2). Row r samples from its own
	// stream, fixed by seed and its global index firstRow+r (model.GenerateOptions.FirstRow), so
	// its response does not depend on the batch, rank or backend that generates it.
	Generate(prompts [][]int32, seed, firstRow uint64) (*Rollout, error)
	// Score fills r's log-probs, reference log-probs, end scores and critic values (spec §1.2 step 3),
	// with no gradients. Cost and CostValues are left nil when the model is absent. When the
	// trainer asks for it (--rl-math graph), nets that can (GraphNets on go and xla:*) keep the
	// per-token values on the device instead of in LogProbs, RefLogProbs, RewardValues and
	// CostValues; the end scores always come to the host.
	Score(r *Rollout) error
	// UpdateActor runs one clipped-surrogate step on the micro-batch (spec §1.5).
	UpdateActor(b ActorBatch) (ActorStats, error)
	// UpdateCritic runs one clipped value-loss step (spec §1.6) of the reward critic (cost=false) or
	// the cost critic (cost=true) toward returns (width L) under mask. returns and mask are nil
	// when the rl_step's RL math left them on the device, with the rollout (GraphNets only).
	UpdateCritic(cost bool, lr float64, r *Rollout, returns, mask []float32) (float64, error)
	// Checkpoint returns what a checkpoint stores of the networks (see NetsCheckpoint); the
	// trainer writes it with train/checkpoint. Tensors may stream (safetensors.Tensor.Stream) and
	// are written before the next update.
	Checkpoint() (*NetsCheckpoint, error)
	// Restore sets every trained variable and optimiser moment, bit for bit, from a checkpoint
	// written from NetsCheckpoint: l.TrainState holds State (less the tensors stored once in the
	// weights, which l.RestoreContext reads back; see NetsCheckpoint.WeightsScope).
	Restore(l *checkpoint.Loaded) error
	// SavePolicy writes the actor as a model directory (HF safetensors + config.json).
	SavePolicy(dir string) error
}

// NetsCheckpoint is the networks' part of a checkpoint.
type NetsCheckpoint struct {
	// Weights (HF names, own dtype) and Config (config.json) are the current actor as an HF model,
	// so that a checkpoint directory opens with generate and eval-*.
	Weights []safetensors.Tensor
	Config  json.RawMessage
	// State is every trained variable (actor or its adapters, critics) and optimiser moment, by
	// name, in its own dtype; frozen models (reference, reward, cost, LoRA bases) are left out.
	State     []safetensors.Tensor
	StateMeta map[string]string
	// WeightsScope, if set, names the scope whose State tensors WeightsScope/N equal weight N
	// (the fully trained actor): they are stored once, in the weights (checkpoint.Checkpoint.WeightsScope).
	WeightsScope string
}

// ActorBatch is the input of one actor step.
type ActorBatch struct {
	LR      float64
	Rollout *Rollout
	// RewardAdv and CostAdv are the GAE advantages at full width L (zero before start); with
	// CostAdv non-nil the advantage is (A^r − λ·A^c)/(1+λ) (PPO-Lag), else A^r. They and Mask
	// are nil when the rl_step's RL math left them on the device, with the rollout (GraphNets
	// only; the cost advantages there when it has a cost critic).
	RewardAdv, CostAdv []float32
	Lambda             float64
	Mask               []float32 // the response mask
	// PTX, when non-nil, makes the step minimise ½(actor loss + PTXCoeff·PTX loss) (spec §1.9's
	// doubled accumulation).
	PTX      *PTXBatch
	PTXCoeff float64
}

// PTXBatch is a supervised micro-batch for PTX mixing: ids, attention mask and labels (−100 on
// prompt tokens), all [B*T].
type PTXBatch struct {
	B, T   int
	IDs    []int32
	Mask   []float32
	Labels []int32
	// Den, when set, holds the PTX loss's denominator for each of the update's micro-batches
	// (gradient accumulation): the label count of the global micro-batch (every rank's rows) over
	// the world size, so that the ranks' mean loss is the global token mean. Nil: each
	// micro-batch's own label count (one process).
	Den []float64
}

// ActorStats is what one actor step reports.
type ActorStats struct {
	Loss     float64 // clipped surrogate loss (without PTX)
	PTXLoss  float64
	ClipFrac float64 // fraction of response tokens where the ratio was clipped
	ApproxKL float64 // masked mean of ρ − 1 − log ρ
	GradNorm float64
}
