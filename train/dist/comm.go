package dist

import (
	"context"
	"fmt"
	"io"
	"time"
)

// Op is the reduction of an AllReduce.
type Op int

const (
	// Sum adds the ranks' values.
	Sum Op = iota
	// Mean adds the ranks' values and divides by the world size.
	Mean
)

func (o Op) String() string {
	switch o {
	case Sum:
		return "sum"
	case Mean:
		return "mean"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// Communicator runs collective operations among the ranks of a run. Every rank
// must call the same collectives in the same order with matching sizes; a
// mismatch, a rank that exits, or one that does not arrive within the timeout
// makes the collective fail on every rank with an error naming the rank and the
// operation, and the Communicator is unusable afterwards (the run should end).
// Results are identical, bit for bit, on every rank.
//
// ctx bounds one call (its deadline, or else the Communicator's default
// timeout); cancelling it fails the call.
type Communicator interface {
	// Rank is this process's index; Size the number of ranks.
	Rank() int
	Size() int
	// AllReduce replaces data on every rank by the element-wise reduction over ranks.
	AllReduce(ctx context.Context, data []float32, op Op) error
	// Broadcast replaces data on every rank by root's (the lengths must agree).
	Broadcast(ctx context.Context, data []byte, root int) error
	// AllGather returns every rank's data, indexed by rank (lengths may differ).
	AllGather(ctx context.Context, data []byte) ([][]byte, error)
	// Gather is AllGather whose result only rank 0 receives (nil on the others), so
	// that data meant for rank 0 alone does not travel to every rank.
	Gather(ctx context.Context, data []byte) ([][]byte, error)
	// Barrier returns when every rank has called it.
	Barrier(ctx context.Context) error
	// Close releases the connections; the other ranks' next collective then fails.
	Close() error
}

// DefaultTimeout bounds a collective whose context has no deadline. It covers
// the slowest rank's compute between two collectives (a step of a large model),
// so it is generous; Options.Timeout changes it.
const DefaultTimeout = 10 * time.Minute

// TimeoutFlag is the flag and config key of every data-parallel command that sets
// Options.Timeout (torch.distributed's init_process_group timeout): raise it when one rank
// may work alone longer than that between two collectives, such as rank 0 writing a 7B
// checkpoint while the others wait at the next step's all-reduce.
const TimeoutFlag = "dist-timeout"

// TimeoutHelp is TimeoutFlag's usage text, the same in every command.
const TimeoutHelp = "how long a collective waits for the slowest rank of a data-parallel run before every rank stops with an error naming it (a Go duration: 90s, 10m, 1h); raise it when rank 0's checkpoint writes take longer"

// ParseTimeout parses a --dist-timeout value, a Go duration such as 90s, 10m or 1h
// ("": DefaultTimeout).
func ParseTimeout(s string) (time.Duration, error) {
	if s == "" {
		return DefaultTimeout, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--%s %q: want a positive duration such as 90s, 10m or 1h", TimeoutFlag, s)
	}
	return d, nil
}

// Options configures a Communicator.
type Options struct {
	// Timeout bounds each collective without a context deadline (default DefaultTimeout).
	Timeout time.Duration
	// ConnectTimeout bounds the rendezvous: how long rank 0 waits for every rank and
	// the others retry to reach it (default 10 minutes, as torchrun's).
	ConnectTimeout time.Duration
	// Log, when set, receives one line from Join once the ranks have met, naming
	// this process's place and the launcher it came from (distributed runs only).
	Log io.Writer
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 10 * time.Minute
	}
	return o
}

// Connect returns the Communicator of env: for a single process one whose
// collectives return at once, otherwise a TCP one that meets the other ranks at
// env.Addr (rank 0 listens there). It blocks until every rank has arrived or
// ConnectTimeout passes.
func Connect(ctx context.Context, env Env, opts Options) (Communicator, error) {
	if env.WorldSize <= 1 {
		return Self{}, nil
	}
	return DialTCP(ctx, env, opts)
}

// Self is the Communicator of a single process: every collective returns its input.
type Self struct{}

func (Self) Rank() int                                      { return 0 }
func (Self) Size() int                                      { return 1 }
func (Self) AllReduce(context.Context, []float32, Op) error { return nil }
func (Self) Broadcast(_ context.Context, _ []byte, root int) error {
	if root != 0 {
		return fmt.Errorf("dist: Broadcast from rank %d in a world of 1", root)
	}
	return nil
}
func (Self) AllGather(_ context.Context, data []byte) ([][]byte, error) {
	return [][]byte{append([]byte(nil), data...)}, nil
}
func (Self) Gather(_ context.Context, data []byte) ([][]byte, error) {
	return [][]byte{append([]byte(nil), data...)}, nil
}
func (Self) Barrier(context.Context) error { return nil }
func (Self) Close() error                  { return nil }
