package trainer

import (
	"time"

	"github.com/gomlx/gomlx/pkg/ml/context"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// Steps trains a model for a Loop: the GoMLX Stepper, or the NativeStepper on
// the native C engine. Both keep the weights and the AdamW state in the same
// context variables under the same names (the model's under Config.Scope,
// train/optim's under Config.OptimScope), so a checkpoint is the same
// whichever trained and restores on either.
type Steps interface {
	// Config returns the configuration with defaults filled in.
	Config() Config
	// Step runs one micro-batch at learning rate lr (see Stepper.Step).
	Step(lr float64, inputs ...any) (Result, error)
	// Eval computes the loss and metrics of a batch without gradients or updates.
	Eval(inputs ...any) (Result, error)
	// Comm returns the communicator (dist.Self for a single process).
	Comm() dist.Communicator
	// CollectiveTime returns the time spent in gradient all-reduces so far.
	CollectiveTime() time.Duration
	// Context returns the context that checkpoints store and restore.
	Context() *context.Context
	// SyncContext writes the live weights and optimizer state into Context
	// (before a checkpoint or the final model is read from it).
	SyncContext() error
	// RestorePartition, given a checkpoint's training state before it is
	// restored, returns the AdamW moments in it that other ranks own under ZeRO-1
	// (nil without), which this rank does not load, and keeps the partition for
	// ShardedState. Every engine partitions by PartitionVariables.
	RestorePartition(f *safetensors.File) (foreign map[string]bool, err error)
	// LoadContext reads them back from Context (after a checkpoint restored it).
	LoadContext() error
	// ShardedState lists the optimiser-state tensors sharded across ranks with
	// their owners (ZeRO-1), nil when every rank holds the same state; every
	// rank then takes part in writing a checkpoint (checkpoint.SaveSharded).
	ShardedState() []checkpoint.Owned
	// OptimizerStateElements counts the AdamW moment elements (float32) this rank holds.
	OptimizerStateElements() int64
}

// SyncContext is a no-op: the Stepper's live state is its context.
func (s *Stepper) SyncContext() error { return nil }

// LoadContext checks, with ZeRO-1 once the partition is known, that a restored
// checkpoint brought this rank's moments only (see RestorePartition). The
// Stepper's live state is its context.
func (s *Stepper) LoadContext() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owners == nil {
		return nil // checked by partition at the first update
	}
	return CheckMoments(s.ctx, s.cfg.OptimScope, s.trained, s.owners, s.cfg.Comm.Rank())
}
