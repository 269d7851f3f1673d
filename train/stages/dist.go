package stages

import (
	stdctx "context"
	"fmt"

	"github.com/gomlx/gomlx/backends"
	"github.com/saferlhf/saferlhf/train/collectives"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// gradientReducer picks how the Stepper averages gradients (--collectives), records it in
// res and says so on rank 0's progress. A nil reducer is the Stepper's host path; close
// (never nil) releases an NCCL one.
func gradientReducer(ctx stdctx.Context, kind string, cfg Config, be backends.Backend, comm dist.Communicator, res *Result) (trainer.GradientReducer, func(), error) {
	mode, err := collectives.ParseMode(cfg.Collectives)
	if err != nil {
		return nil, nil, err
	}
	timeout, err := dist.ParseTimeout(cfg.DistTimeout)
	if err != nil {
		return nil, nil, err
	}
	r, why, err := collectives.Select(ctx, mode, cfg.Backend, be, comm, timeout)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", kind, err)
	}
	if comm.Size() > 1 || r != nil {
		res.Transport = "tcp"
		if r != nil {
			res.Transport = r.Name()
		}
		if cfg.Progress != nil && comm.Rank() == 0 {
			fmt.Fprintf(cfg.Progress, "%s: gradient averaging: %s\n", kind, why)
		}
	}
	if r == nil {
		return nil, func() {}, nil
	}
	return r, func() { r.Close() }, nil
}

// connect joins the ranks of a launched run (dist.Self without a launcher).
func connect(ctx stdctx.Context, stage Stage, cfg Config) (dist.Communicator, error) {
	env, err := dist.FromEnv(nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	if env.IsDistributed() && cfg.BatchSize%env.WorldSize != 0 { // before waiting for the others
		return nil, fmt.Errorf("%s: --batch-size %d is the global batch and must be divisible by the world size %d", stage, cfg.BatchSize, env.WorldSize)
	}
	timeout, err := dist.ParseTimeout(cfg.DistTimeout)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	comm, _, err := dist.Join(ctx, dist.Options{Log: cfg.Progress, Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	return comm, nil
}

// rankPart is one rank's contiguous share of every global batch (the zero value: all of it).
type rankPart struct{ rank, world int }

// rows is the number of rows of a global batch of b that the rank takes.
func (p rankPart) rows(b int) int { return b / max(1, p.world) }

// first is the rank's first row within a global batch of b.
func (p rankPart) first(b int) int { return p.rank * p.rows(b) }

// shardTrain makes a training source yield only comm's rank's share of every
// global batch; the held-out source stays whole (trainer.Evaluate shares its batches out among the ranks).
func shardTrain(src trainer.Source, comm dist.Communicator) error {
	if comm.Size() < 2 {
		return nil
	}
	var b int
	switch s := src.(type) {
	case *seqSource:
		s.part, b = rankPart{comm.Rank(), comm.Size()}, s.b
	case *pairSource:
		s.part, b = rankPart{comm.Rank(), comm.Size()}, s.b
	case *dpoSource:
		s.part, b = rankPart{comm.Rank(), comm.Size()}, s.b
	default:
		return fmt.Errorf("the %T data source cannot be sharded across ranks", src)
	}
	if b%comm.Size() != 0 {
		return fmt.Errorf("--batch-size %d is the global batch and must be divisible by the world size %d", b, comm.Size())
	}
	return nil
}
