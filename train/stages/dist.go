package stages

import (
	stdctx "context"
	"fmt"

	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// connect joins the ranks of a launched run (dist.Self without a launcher).
func connect(ctx stdctx.Context, stage Stage, cfg Config) (dist.Communicator, error) {
	env, err := dist.FromEnv(nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	if env.IsDistributed() && cfg.BatchSize%env.WorldSize != 0 {
		return nil, fmt.Errorf("%s: --batch-size %d is the global batch and must be divisible by the world size %d", stage, cfg.BatchSize, env.WorldSize)
	}
	if _, err := dist.PinGPU(env); err != nil { // one GPU per process, before any backend loads
		return nil, fmt.Errorf("%s: %w", stage, err)
	}
	comm, err := dist.Connect(ctx, env, dist.Options{})
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", stage, env, err)
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
// global batch; the held-out source stays whole (every rank evaluates it, rank 0 logs).
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

// prepareOnRank0 runs prepare (if any) on rank 0 and gives every rank its error.
func prepareOnRank0(ctx stdctx.Context, prepare func() error, comm dist.Communicator) error {
	var msg []byte
	if comm.Rank() == 0 && prepare != nil {
		if err := prepare(); err != nil {
			if comm.Size() < 2 {
				return err
			}
			msg = []byte(err.Error())
		}
	}
	if comm.Size() < 2 {
		return nil
	}
	all, err := comm.AllGather(ctx, msg)
	if err != nil {
		return fmt.Errorf("waiting for rank 0 to prepare the output: %w", err)
	}
	if len(all[0]) > 0 {
		return fmt.Errorf("rank 0: %s", all[0])
	}
	return nil
}
