package native

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/saferlhf/saferlhf/train/dist"
)

// TestNCCLAbsent: without the library (or without cgo) loading fails with a
// message saying how to install it, never a crash.
func TestNCCLAbsent(t *testing.T) {
	if !Compiled {
		_, err := LoadNCCL()
		if !errors.Is(err, ErrNoCUDA) {
			t.Fatalf("LoadNCCL without cgo: %v", err)
		}
		return
	}
	n, err := LoadNCCL()
	if err == nil {
		t.Skipf("NCCL %d is installed here (%s); the absent path is not testable", n.Version(), n.Path())
	}
	for _, want := range []string{"libnccl.so.2", NCCLEnvVar, "nvidia-nccl-cu12"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// A wrong explicit path is named in the error.
	t.Setenv(NCCLEnvVar, "/nonexistent/libnccl.so.2")
	if _, err := LoadNCCL(); err == nil || !strings.Contains(err.Error(), "/nonexistent/libnccl.so.2") {
		t.Errorf("explicit path: %v", err)
	}
}

func TestNCCLDataTypeSize(t *testing.T) {
	for dt, want := range map[NCCLDataType]int{NCCLInt8: 1, NCCLBfloat16: 2, NCCLFloat16: 2, NCCLFloat32: 4, NCCLInt32: 4, NCCLFloat64: 8, NCCLInt64: 8} {
		if got := dt.Size(); got != want {
			t.Errorf("%d.Size() = %d, want %d", dt, got, want)
		}
	}
}

// TestNCCLOneRank runs on a GPU with NCCL (bench/gpu/check.sh runs it): one
// rank through the real library, the unique id shared through dist.Self
// (all-reduce, broadcast and all-gather on device buffers).
func TestNCCLOneRank(t *testing.T) {
	cu := openOrSkip(t)
	n, err := LoadNCCL()
	if err != nil {
		t.Skipf("no NCCL on this GPU machine: %v", err)
	}
	t.Logf("NCCL %d from %s on %s", n.Version(), n.Path(), cu.Info())
	c, err := InitNCCL(context.Background(), n, cu, dist.Self{}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := []float32{1, 2, 3, 4}
	p, err := Upload(cu, src)
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Free(p)
	out, err := cu.Alloc(4 * len(src))
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Free(out)
	for _, step := range []struct {
		name string
		run  func() error
	}{
		{"all-reduce", func() error { return c.AllReduce(p, out, len(src), NCCLFloat32, NCCLSum) }},
		{"broadcast", func() error { return c.Broadcast(p, out, len(src), NCCLFloat32, 0) }},
		{"all-gather", func() error { return c.AllGather(p, out, len(src), NCCLFloat32) }},
	} {
		if err := cu.Memset32(out, 0, len(src)); err != nil {
			t.Fatal(err)
		}
		if err := step.run(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got, err := Download[float32](cu, out, len(src))
		if err != nil {
			t.Fatal(err)
		}
		for i := range src {
			if got[i] != src[i] {
				t.Fatalf("%s: got %v, want %v", step.name, got, src)
			}
		}
	}
}
