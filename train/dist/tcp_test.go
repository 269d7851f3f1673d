package dist

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func group(t *testing.T, n int, opts Options) []*TCP {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, err := NewLocalGroup(ctx, n, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range cs {
			c.Close()
		}
	})
	return cs
}

// onAll runs f on every rank concurrently and returns the errors by rank.
func onAll(cs []*TCP, f func(c *TCP) error) []error {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() { errs[i] = f(c) })
	}
	wg.Wait()
	return errs
}

func TestTCPCollectives(t *testing.T) {
	cs := group(t, 3, Options{Timeout: 20 * time.Second})
	ctx := context.Background()
	sums := make([][]float32, 3)
	means := make([][]float32, 3)
	bcast := make([][]byte, 3)
	gathered, toRoot := make([][][]byte, 3), make([][][]byte, 3)
	errs := onAll(cs, func(c *TCP) error {
		r := float32(c.Rank())
		sums[c.Rank()] = []float32{r, 10 * r, 0.1, -r}
		if err := c.AllReduce(ctx, sums[c.Rank()], Sum); err != nil {
			return err
		}
		means[c.Rank()] = []float32{r, 3}
		if err := c.AllReduce(ctx, means[c.Rank()], Mean); err != nil {
			return err
		}
		bcast[c.Rank()] = []byte(fmt.Sprintf("from %d", c.Rank()))
		if err := c.Broadcast(ctx, bcast[c.Rank()], 2); err != nil {
			return err
		}
		g, err := c.AllGather(ctx, bytes.Repeat([]byte{byte('a' + c.Rank())}, c.Rank()))
		gathered[c.Rank()] = g
		if err != nil {
			return err
		}
		if toRoot[c.Rank()], err = c.Gather(ctx, []byte(fmt.Sprintf("r%d", c.Rank()))); err != nil {
			return err
		}
		return c.Barrier(ctx)
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	// 0.1 summed three times in rank order, in float32.
	want01 := float32(0.1) + float32(0.1) + float32(0.1)
	for r := range 3 {
		if got := sums[r]; got[0] != 3 || got[1] != 30 || got[2] != want01 || got[3] != -3 {
			t.Errorf("rank %d: sum = %v", r, got)
		}
		if got := means[r]; got[0] != 1 || got[1] != 3 {
			t.Errorf("rank %d: mean = %v", r, got)
		}
		if string(bcast[r]) != "from 2" {
			t.Errorf("rank %d: broadcast = %q", r, bcast[r])
		}
		if g := gathered[r]; len(g) != 3 || string(g[0]) != "" || string(g[1]) != "b" || string(g[2]) != "cc" {
			t.Errorf("rank %d: all-gather = %q", r, g)
		}
		if g := toRoot[r]; r == 0 && fmt.Sprintf("%s", g) != "[r0 r1 r2]" || r != 0 && g != nil {
			t.Errorf("rank %d: gather = %q", r, g)
		}
	}
}

func TestTCPFailures(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		run  func(c *TCP) error
		want []string // substring of each rank's error
	}{
		{name: "dead rank", run: func(c *TCP) error {
			if c.Rank() == 2 {
				return c.Close()
			}
			return c.AllReduce(ctx, []float32{1}, Sum)
		}, want: []string{"rank 0: AllReduce(sum) #1: rank 2 is gone", "rank 1: AllReduce(sum) #1: aborted by rank 0: dist: rank 0: AllReduce(sum) #1: rank 2 is gone", ""}},
		{name: "stuck rank", run: func(c *TCP) error {
			if c.Rank() == 2 {
				return nil // never calls the collective
			}
			return c.Barrier(ctx)
		}, want: []string{"rank 2 did not arrive within 300ms", "aborted by rank 0: dist: rank 0: Barrier #1: rank 2 did not arrive", ""}},
		{name: "out of step", run: func(c *TCP) error {
			if c.Rank() == 1 {
				return c.Barrier(ctx)
			}
			return c.AllReduce(ctx, []float32{1}, Mean)
		}, want: []string{"rank 1 called Barrier #1 (arg 0) instead", "rank 1: Barrier #1: aborted by rank 0", "aborted by rank 0"}},
		{name: "length mismatch", run: func(c *TCP) error {
			return c.AllReduce(ctx, make([]float32, 2+c.Rank()), Sum)
		}, want: []string{"rank 1 has 3 values, rank 0 has 2", "aborted by rank 0", "aborted by rank 0"}},
		{name: "rank 0 gone", run: func(c *TCP) error {
			if c.Rank() == 0 {
				return c.Close()
			}
			return c.AllReduce(ctx, []float32{1}, Sum)
		}, want: []string{"", "rank 1: AllReduce(sum) #1: lost rank 0", "rank 2: AllReduce(sum) #1: lost rank 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := group(t, 3, Options{Timeout: 300 * time.Millisecond})
			errs := onAll(cs, tc.run)
			for r, want := range tc.want {
				if want == "" {
					continue
				}
				if errs[r] == nil || !strings.Contains(errs[r].Error(), want) {
					t.Errorf("rank %d: err = %v, want one containing %q", r, errs[r], want)
				}
			}
			// The communicator stays failed.
			for r, c := range cs {
				if tc.want[r] != "" && c.Barrier(ctx) == nil {
					t.Errorf("rank %d: a collective after the failure succeeded", r)
				}
			}
		})
	}
}

func TestTCPRendezvousMismatch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := serveTCP(ctx, ln, 2, Options{})
		errc <- err
	}()
	_, err = dialTCP(ctx, Env{Rank: 1, WorldSize: 3, Addr: ln.Addr().String()}, Options{})
	if err == nil || !strings.Contains(err.Error(), "refused by rank 0: rank 1 was started with a world of 3 ranks, rank 0 with 2") {
		t.Errorf("rank 1: %v", err)
	}
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "world of 3 ranks") {
		t.Errorf("rank 0: %v", err)
	}
	// Nobody listening: a clear error after the connect timeout.
	_, err = dialTCP(ctx, Env{Rank: 1, WorldSize: 2, Addr: ln.Addr().String()}, Options{ConnectTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "could not reach rank 0") {
		t.Errorf("no rank 0: %v", err)
	}
}

// TestMain lets the test binary act as another rank (SAFERLHF_DIST_CHILD set).
func TestMain(m *testing.M) {
	if os.Getenv("SAFERLHF_DIST_CHILD") != "" {
		os.Exit(childRank())
	}
	os.Exit(m.Run())
}

// childRank joins the group, all-reduces its rank twice, then waits for a third
// collective that fails when another rank is killed; it prints the error.
func childRank() int {
	env, err := FromEnv(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	ctx := context.Background()
	c, err := Connect(ctx, env, Options{Timeout: 20 * time.Second, ConnectTimeout: 20 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 4
	}
	defer c.Close()
	v := []float32{float32(env.Rank)}
	if err := c.AllReduce(ctx, v, Sum); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 5
	}
	fmt.Println("sum", v[0])
	if err := c.Barrier(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 6
	}
	if env.Rank == 2 {
		time.Sleep(time.Minute) // killed by the parent
	}
	if err := c.AllReduce(ctx, v, Sum); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 7
	}
	return 0
}

// TestTCPProcesses runs three ranks as processes (this one is rank 0), then
// kills rank 2: ranks 0 and 1 must both fail with an error naming it.
func TestTCPProcesses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	children := make([]*exec.Cmd, 3)
	outs := make([]*bytes.Buffer, 3)
	for r := 1; r < 3; r++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		outs[r] = new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = outs[r], outs[r]
		cmd.Env = append(os.Environ(), "SAFERLHF_DIST_CHILD=1", "RANK="+strconv.Itoa(r), "WORLD_SIZE=3",
			"LOCAL_RANK="+strconv.Itoa(r), "MASTER_ADDR=127.0.0.1", "MASTER_PORT="+port)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children[r] = cmd
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	ctx := context.Background()
	c, err := serveTCP(ctx, ln, 3, Options{Timeout: 20 * time.Second, ConnectTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v := []float32{0}
	if err := c.AllReduce(ctx, v, Sum); err != nil || v[0] != 3 {
		t.Fatalf("sum over processes = %v, %v; want 3", v, err)
	}
	if err := c.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if err := children[2].Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err = c.AllReduce(ctx, v, Sum)
	if err == nil || !strings.Contains(err.Error(), "rank 2 is gone") {
		t.Fatalf("rank 0 after killing rank 2: %v", err)
	}
	err = children[1].Wait()
	if code := children[1].ProcessState.ExitCode(); code != 7 || !strings.Contains(outs[1].String(), "aborted by rank 0: dist: rank 0: AllReduce(sum) #3: rank 2 is gone") {
		t.Fatalf("rank 1 exited %d (%v) with output:\n%s", code, err, outs[1])
	}
	t.Logf("rank 0: %v\nrank 1: %s", c.broken, strings.TrimSpace(outs[1].String()))
}
