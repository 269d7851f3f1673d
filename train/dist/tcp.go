package dist

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
	"unsafe"
)

// TCP is the CPU Communicator across processes: a star over TCP, rank 0 at
// the rendezvous address. Each collective gathers every rank's contribution at
// rank 0, which combines them in rank order (so sums are deterministic and
// bit-identical on every rank) and sends the result back. It is meant for CPU
// runs and CI, where the data are small; GPU runs use NCCL.
//
// Failure handling: rank 0 reads each rank with the collective's deadline; a
// rank that exits (connection closed), sends a different collective, or does
// not arrive in time makes rank 0 send every other rank an abort message naming
// it and close, so every rank's collective returns an error instead of hanging.
type TCP struct {
	rank, size int
	opts       Options
	addr       string

	mu     sync.Mutex
	peers  []*peer // rank 0: the connection of each rank (index 0 unused)
	root   *peer   // other ranks: the connection to rank 0
	seq    uint32
	broken error
}

type peer struct {
	rank int
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

// Frame kinds and collective codes.
const (
	kHello   = 1
	kWelcome = 2
	kData    = 3
	kResult  = 4
	kAbort   = 5

	opSum       = 1
	opMean      = 2
	opBroadcast = 3
	opGather    = 4
	opBarrier   = 5
	opGatherTo0 = 6

	protoVersion = 1
	headerLen    = 16
	maxFrame     = 1 << 40
)

var magic = [8]byte{'s', 'a', 'f', 'e', 'r', 'l', 'h', 'f'}

func opName(op uint8) string {
	switch op {
	case opSum:
		return "AllReduce(sum)"
	case opMean:
		return "AllReduce(mean)"
	case opBroadcast:
		return "Broadcast"
	case opGather:
		return "AllGather"
	case opBarrier:
		return "Barrier"
	case opGatherTo0:
		return "Gather"
	}
	return fmt.Sprintf("collective %d", op)
}

type header struct {
	kind, op uint8
	arg      uint16
	seq      uint32
	n        uint64
}

func (p *peer) send(h header, payload []byte) error {
	var b [headerLen]byte
	b[0], b[1] = h.kind, h.op
	binary.LittleEndian.PutUint16(b[2:], h.arg)
	binary.LittleEndian.PutUint32(b[4:], h.seq)
	binary.LittleEndian.PutUint64(b[8:], uint64(len(payload)))
	if _, err := p.w.Write(b[:]); err != nil {
		return err
	}
	if _, err := p.w.Write(payload); err != nil {
		return err
	}
	return p.w.Flush()
}

func (p *peer) recv() (header, []byte, error) {
	var b [headerLen]byte
	if _, err := io.ReadFull(p.r, b[:]); err != nil {
		return header{}, nil, err
	}
	h := header{kind: b[0], op: b[1], arg: binary.LittleEndian.Uint16(b[2:]), seq: binary.LittleEndian.Uint32(b[4:]),
		n: binary.LittleEndian.Uint64(b[8:])}
	if h.n > maxFrame {
		return h, nil, fmt.Errorf("frame of %d bytes (corrupt stream?)", h.n)
	}
	payload := make([]byte, h.n)
	if _, err := io.ReadFull(p.r, payload); err != nil {
		return h, nil, err
	}
	return h, payload, nil
}

func newPeer(rank int, c net.Conn) *peer {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAlive(true)
		_ = tc.SetKeepAlivePeriod(15 * time.Second)
	}
	return &peer{rank: rank, conn: c, r: bufio.NewReaderSize(c, 1<<16), w: bufio.NewWriterSize(c, 1<<16)}
}

// DialTCP joins the run described by env: rank 0 listens on env.Addr's port (all
// interfaces) and waits for every other rank; the others connect to env.Addr,
// retrying until Options.ConnectTimeout.
func DialTCP(ctx context.Context, env Env, opts Options) (*TCP, error) {
	if env.WorldSize < 2 {
		return nil, fmt.Errorf("dist: DialTCP needs a world of at least 2 ranks, got %d", env.WorldSize)
	}
	if env.Rank == 0 {
		_, port, err := net.SplitHostPort(env.Addr)
		if err != nil {
			return nil, fmt.Errorf("dist: rendezvous address %q: %w", env.Addr, err)
		}
		ln, err := net.Listen("tcp", ":"+port)
		if err != nil {
			return nil, fmt.Errorf("dist: rank 0 cannot listen on port %s (rendezvous %s; is another run using it? set MASTER_PORT): %w", port, env.Addr, err)
		}
		return serveTCP(ctx, ln, env.WorldSize, opts)
	}
	return dialTCP(ctx, env, opts)
}

// serveTCP runs rank 0's side of the rendezvous on ln (which it closes).
func serveTCP(ctx context.Context, ln net.Listener, size int, opts Options) (*TCP, error) {
	opts = opts.withDefaults()
	defer ln.Close()
	c := &TCP{rank: 0, size: size, opts: opts, addr: ln.Addr().String(), peers: make([]*peer, size)}
	deadline := time.Now().Add(opts.ConnectTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	if tl, ok := ln.(*net.TCPListener); ok {
		_ = tl.SetDeadline(deadline)
	}
	fail := func(err error) (*TCP, error) {
		c.abortLocked(err.Error())
		return nil, err
	}
	for arrived := 1; arrived < size; {
		conn, err := ln.Accept()
		if err != nil {
			var missing []int
			for r := 1; r < size; r++ {
				if c.peers[r] == nil {
					missing = append(missing, r)
				}
			}
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return fail(fmt.Errorf("dist: rendezvous at %s: ranks %v did not arrive within %s: %w", c.addr, missing, opts.ConnectTimeout, err))
		}
		p := newPeer(-1, conn)
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		h, payload, err := p.recv()
		if err != nil || h.kind != kHello || len(payload) != 20 || [8]byte(payload[:8]) != magic {
			conn.Close() // not one of ours (a port scan, a stale process)
			continue
		}
		ver := binary.LittleEndian.Uint32(payload[8:])
		rank := int(binary.LittleEndian.Uint32(payload[12:]))
		theirs := int(binary.LittleEndian.Uint32(payload[16:]))
		var bad error
		switch {
		case ver != protoVersion:
			bad = fmt.Errorf("rank %d speaks protocol %d, rank 0 speaks %d (mixed saferlhf versions?)", rank, ver, protoVersion)
		case theirs != size:
			bad = fmt.Errorf("rank %d was started with a world of %d ranks, rank 0 with %d", rank, theirs, size)
		case rank < 1 || rank >= size:
			bad = fmt.Errorf("a process claims rank %d in a world of %d", rank, size)
		case c.peers[rank] != nil:
			bad = fmt.Errorf("two processes claim rank %d (from %s and %s)", rank, c.peers[rank].conn.RemoteAddr(), conn.RemoteAddr())
		}
		if bad != nil {
			_ = p.send(header{kind: kAbort}, []byte(bad.Error()))
			conn.Close()
			return fail(fmt.Errorf("dist: rendezvous at %s: %w", c.addr, bad))
		}
		p.rank = rank
		c.peers[rank] = p
		arrived++
	}
	for r := 1; r < size; r++ {
		p := c.peers[r]
		_ = p.conn.SetDeadline(time.Now().Add(30 * time.Second))
		if err := p.send(header{kind: kWelcome}, nil); err != nil {
			return fail(fmt.Errorf("dist: rendezvous: rank %d left before the start: %w", r, err))
		}
		_ = p.conn.SetDeadline(time.Time{})
	}
	return c, nil
}

func dialTCP(ctx context.Context, env Env, opts Options) (*TCP, error) {
	opts = opts.withDefaults()
	c := &TCP{rank: env.Rank, size: env.WorldSize, opts: opts, addr: env.Addr}
	deadline := time.Now().Add(opts.ConnectTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var conn net.Conn
	var last error
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		dl := time.Now().Add(10 * time.Second)
		if deadline.Before(dl) {
			dl = deadline
		}
		d := net.Dialer{Deadline: dl}
		conn, last = d.DialContext(ctx, "tcp", env.Addr)
		if last == nil {
			break
		}
		if ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return nil, fmt.Errorf("dist: rank %d could not reach rank 0 at %s within %s: %w", env.Rank, env.Addr, opts.ConnectTimeout, last)
		}
		time.Sleep(wait)
	}
	p := newPeer(0, conn)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	_ = conn.SetDeadline(deadline)
	hello := make([]byte, 20)
	copy(hello, magic[:])
	binary.LittleEndian.PutUint32(hello[8:], protoVersion)
	binary.LittleEndian.PutUint32(hello[12:], uint32(env.Rank))
	binary.LittleEndian.PutUint32(hello[16:], uint32(env.WorldSize))
	if err := p.send(header{kind: kHello}, hello); err != nil {
		conn.Close()
		return nil, fmt.Errorf("dist: rank %d: rendezvous with %s: %w", env.Rank, env.Addr, err)
	}
	h, payload, err := p.recv()
	switch {
	case err != nil:
		conn.Close()
		return nil, fmt.Errorf("dist: rank %d: rendezvous with %s: not every rank arrived in time or rank 0 failed: %w", env.Rank, env.Addr, err)
	case h.kind == kAbort:
		conn.Close()
		return nil, fmt.Errorf("dist: rank %d: rendezvous refused by rank 0: %s", env.Rank, payload)
	case h.kind != kWelcome:
		conn.Close()
		return nil, fmt.Errorf("dist: rank %d: rendezvous with %s: unexpected message %d", env.Rank, env.Addr, h.kind)
	}
	_ = conn.SetDeadline(time.Time{})
	c.root = p
	return c, nil
}

// Rank returns this process's rank.
func (c *TCP) Rank() int { return c.rank }

// Size returns the number of ranks.
func (c *TCP) Size() int { return c.size }

// AllReduce sums (or averages) data over the ranks, in rank order, in float32.
func (c *TCP) AllReduce(ctx context.Context, data []float32, op Op) error {
	code := uint8(opSum)
	if op == Mean {
		code = opMean
	} else if op != Sum {
		return fmt.Errorf("dist: AllReduce: unknown op %v", op)
	}
	res, err := c.collective(ctx, code, 0, f32Bytes(data), func(parts [][]byte) ([]byte, error) {
		out := make([]float32, len(data))
		copy(out, data)
		for _, p := range parts[1:] {
			for i, v := range bytesF32(p) {
				out[i] += v
			}
		}
		if op == Mean {
			n := float32(c.size)
			for i := range out {
				out[i] /= n
			}
		}
		return f32Bytes(out), nil
	})
	if err == nil {
		copy(data, bytesF32(res))
	}
	return err
}

// Broadcast copies root's data to every rank.
func (c *TCP) Broadcast(ctx context.Context, data []byte, root int) error {
	if root < 0 || root >= c.size {
		return fmt.Errorf("dist: Broadcast from rank %d in a world of %d", root, c.size)
	}
	mine := data
	if c.rank != root {
		mine = nil
	}
	res, err := c.collective(ctx, opBroadcast, uint16(root), mine, func(parts [][]byte) ([]byte, error) {
		return parts[root], nil
	})
	if err != nil {
		return err
	}
	if len(res) != len(data) {
		return fmt.Errorf("dist: Broadcast: rank %d sent %d bytes, rank %d expects %d", root, len(res), c.rank, len(data))
	}
	copy(data, res)
	return nil
}

// AllGather returns every rank's data, indexed by rank.
func (c *TCP) AllGather(ctx context.Context, data []byte) ([][]byte, error) {
	res, err := c.collective(ctx, opGather, 0, data, func(parts [][]byte) ([]byte, error) {
		var out []byte
		for _, p := range parts {
			out = binary.LittleEndian.AppendUint64(out, uint64(len(p)))
			out = append(out, p...)
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	parts := make([][]byte, 0, c.size)
	for len(res) >= 8 {
		n := binary.LittleEndian.Uint64(res)
		if uint64(len(res)-8) < n {
			break
		}
		parts = append(parts, res[8:8+n:8+n])
		res = res[8+n:]
	}
	if len(parts) != c.size {
		return nil, fmt.Errorf("dist: AllGather: malformed result from rank 0")
	}
	return parts, nil
}

// Gather returns every rank's data, indexed by rank, on rank 0 (its own entry is data
// itself); the other ranks get nil once rank 0 has everything.
func (c *TCP) Gather(ctx context.Context, data []byte) ([][]byte, error) {
	var parts [][]byte
	_, err := c.collective(ctx, opGatherTo0, 0, data, func(p [][]byte) ([]byte, error) {
		parts = p
		return nil, nil
	})
	if err != nil {
		return nil, err
	}
	return parts, nil
}

// Barrier returns once every rank has reached it.
func (c *TCP) Barrier(ctx context.Context) error {
	_, err := c.collective(ctx, opBarrier, 0, nil, func([][]byte) ([]byte, error) { return nil, nil })
	return err
}

// Close ends this rank's part; the others' next collective fails naming it.
func (c *TCP) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken == nil {
		c.broken = errors.New("dist: communicator closed")
	}
	if c.root != nil {
		c.root.conn.Close()
	}
	for _, p := range c.peers {
		if p != nil {
			p.conn.Close()
		}
	}
	return nil
}

// collective runs one gather-combine-scatter round.
func (c *TCP) collective(ctx context.Context, op uint8, arg uint16, payload []byte, combine func(parts [][]byte) ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, c.broken
	}
	c.seq++
	what := fmt.Sprintf("%s #%d", opName(op), c.seq)
	timeout := c.opts.Timeout
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok {
		deadline, timeout = d, time.Until(d)
	}
	var conns []net.Conn
	if c.root != nil {
		conns = []net.Conn{c.root.conn}
		// Wait a little longer than rank 0, so that its explanation arrives first.
		deadline = deadline.Add(min(timeout/5, 10*time.Second))
	}
	for _, p := range c.peers {
		if p != nil {
			conns = append(conns, p.conn)
		}
	}
	for _, conn := range conns {
		_ = conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() {
		for _, conn := range conns {
			_ = conn.SetDeadline(time.Unix(1, 0))
		}
	})
	defer stop()
	h := header{kind: kData, op: op, arg: arg, seq: c.seq}
	if c.rank != 0 {
		res, err := c.followerRound(h, payload, what, timeout, ctx)
		if err != nil {
			c.broken = err
			c.root.conn.Close()
		}
		return res, err
	}
	parts := make([][]byte, c.size)
	parts[0] = payload
	for r := 1; r < c.size; r++ {
		p := c.peers[r]
		got, data, err := p.recv()
		switch {
		case err != nil && ctx.Err() != nil:
			err = fmt.Errorf("dist: rank 0: %s cancelled: %w", what, ctx.Err())
		case err != nil && isTimeout(err):
			err = fmt.Errorf("dist: rank 0: %s: rank %d did not arrive within %s (stuck, or its host is down); aborting every rank", what, r, timeout.Round(time.Millisecond))
		case err != nil:
			err = fmt.Errorf("dist: rank 0: %s: rank %d is gone (its process exited or closed the connection: %v); aborting every rank", what, r, err)
		case got.kind != kData || got.seq != h.seq || got.op != h.op || got.arg != h.arg:
			err = fmt.Errorf("dist: rank 0: %s: rank %d called %s #%d (arg %d) instead (ranks out of step); aborting every rank", what, r, opName(got.op), got.seq, got.arg)
		case (op == opSum || op == opMean) && len(data) != len(payload):
			err = fmt.Errorf("dist: rank 0: %s: rank %d has %d values, rank 0 has %d; aborting every rank", what, r, len(data)/4, len(payload)/4)
		}
		if err != nil {
			c.broken = err
			c.abortLocked(err.Error())
			return nil, err
		}
		parts[r] = data
	}
	res, err := combine(parts)
	if err != nil {
		c.broken = err
		c.abortLocked(err.Error())
		return nil, err
	}
	h.kind = kResult
	for r := 1; r < c.size; r++ {
		if err := c.peers[r].send(h, res); err != nil {
			err = fmt.Errorf("dist: rank 0: %s: sending the result to rank %d: %v; aborting every rank", what, r, err)
			c.broken = err
			c.abortLocked(err.Error())
			return nil, err
		}
	}
	return res, nil
}

func (c *TCP) followerRound(h header, payload []byte, what string, timeout time.Duration, ctx context.Context) ([]byte, error) {
	me := fmt.Sprintf("dist: rank %d: %s", c.rank, what)
	lost := func(err error) error {
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("%s cancelled: %w", me, ctx.Err())
		case isTimeout(err):
			return fmt.Errorf("%s: no result from rank 0 (%s) within %s (a rank is stuck or a host is down)", me, c.addr, timeout.Round(time.Millisecond))
		}
		return fmt.Errorf("%s: lost rank 0 (%s): %v (rank 0 exited or aborted the run)", me, c.addr, err)
	}
	if err := c.root.send(h, payload); err != nil {
		return nil, lost(err)
	}
	got, res, err := c.root.recv()
	switch {
	case err != nil:
		return nil, lost(err)
	case got.kind == kAbort:
		return nil, fmt.Errorf("%s: aborted by rank 0: %s", me, res)
	case got.kind != kResult || got.seq != h.seq:
		return nil, fmt.Errorf("%s: unexpected message %d #%d from rank 0", me, got.kind, got.seq)
	}
	return res, nil
}

// abortLocked tells every connected rank why the run ends, then closes.
func (c *TCP) abortLocked(msg string) {
	for _, p := range c.peers {
		if p == nil {
			continue
		}
		_ = p.conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_ = p.send(header{kind: kAbort}, []byte(msg))
		p.conn.Close()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// f32Bytes views a float32 slice as its bytes (little-endian hosts: x86-64, arm64).
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

// bytesF32 views bytes as float32s (copying when unaligned).
func bytesF32(b []byte) []float32 {
	if len(b) < 4 {
		return nil
	}
	if uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		b = append([]byte(nil), b...)
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4)
}
