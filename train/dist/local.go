package dist

import (
	"context"
	"fmt"
	"net"
)

// NewLocalGroup returns n TCP Communicators of one process, connected over
// loopback (rank i at index i): the same code path as a multi-process run, for
// tests and for several ranks in one process.
func NewLocalGroup(ctx context.Context, n int, opts Options) ([]*TCP, error) {
	if n < 2 {
		return nil, fmt.Errorf("dist: a local group needs at least 2 ranks, got %d", n)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("dist: local group: %w", err)
	}
	addr := ln.Addr().String()
	out := make([]*TCP, n)
	errs := make(chan error, n)
	go func() {
		var err error
		out[0], err = serveTCP(ctx, ln, n, opts)
		errs <- err
	}()
	for r := 1; r < n; r++ {
		go func() {
			var err error
			out[r], err = dialTCP(ctx, Env{Rank: r, WorldSize: n, Addr: addr, Launcher: "local"}, opts)
			errs <- err
		}()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		for _, c := range out {
			if c != nil {
				c.Close()
			}
		}
		return nil, first
	}
	return out, nil
}
