package collectives

import (
	stdctx "context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/saferlhf/saferlhf/kernels/cuda"
	"github.com/saferlhf/saferlhf/train/dist"
)

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": Auto, "auto": Auto, "tcp": TCP, "nccl": NCCL} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseMode("mpi"); err == nil || !strings.Contains(err.Error(), `--collectives "mpi": want auto, tcp or nccl`) {
		t.Errorf("ParseMode(mpi): %v", err)
	}
}

func TestOnGPU(t *testing.T) {
	t.Setenv("SAFERLHF_BACKEND", "")
	for spec, want := range map[string]bool{"xla:cuda": true, "xla:cuda,opt=1": true, "xla:/opt/x/pjrt_c_api_cuda_plugin.so": true,
		"xla:/opt/jax_plugins/xla_cuda13/xla_cuda_plugin.so": true, "xla:/opt/pjrt_c_api_cpu_plugin.so": false,
		"go": false, "native": false, "go:ops_sequential": false} {
		if got := OnGPU(spec); got != want {
			t.Errorf("OnGPU(%q) = %v", spec, got)
		}
	}
	t.Setenv("SAFERLHF_BACKEND", "xla:cuda")
	if !OnGPU("") {
		t.Error(`OnGPU("") with SAFERLHF_BACKEND=xla:cuda`)
	}
}

// TestDecide: the transport for each mode, backend and NCCL availability, with
// the reason or error a user sees.
func TestDecide(t *testing.T) {
	t.Setenv("SAFERLHF_BACKEND", "")
	missing := errors.New("native: NCCL (libnccl.so.2) could not be loaded")
	for _, tc := range []struct {
		mode   Mode
		spec   string
		world  int
		probe  error
		use    bool
		why    string // substring of the reason, or of the error when err
		err    bool
		probed bool
	}{
		{TCP, "xla:cuda", 2, nil, false, "tcp (--collectives tcp)", false, false},
		{Auto, "xla:cuda", 1, nil, false, "none (one rank)", false, false},
		{Auto, "go", 2, nil, false, "tcp (--backend go:ops_sequential keeps tensors in host memory)", false, false},
		{Auto, "native", 2, nil, false, "tcp (--backend native keeps", false, false},
		{Auto, "xla:cuda", 2, nil, true, "nccl", false, true},
		{Auto, "xla:cuda", 2, missing, false, "tcp (NCCL unavailable on rank 0: native: NCCL (libnccl.so.2) could not be loaded)", false, true},
		{NCCL, "xla:cuda", 2, nil, true, "nccl", false, true},
		{NCCL, "xla:cuda", 1, nil, true, "nccl", false, true}, // one rank through the library, on request
		{NCCL, "xla:cuda", 2, missing, false, "--collectives nccl: rank 0: native: NCCL (libnccl.so.2) could not be loaded (use --collectives tcp", true, true},
		{NCCL, "go", 2, nil, false, "--collectives nccl needs --backend xla:cuda (NCCL averages gradients in GPU memory), not --backend go:ops_sequential", true, false},
		{NCCL, "native", 1, nil, false, "not --backend native", true, false},
	} {
		probed := false
		probe := func() error { probed = true; return tc.probe }
		var comm dist.Communicator = dist.Self{}
		if tc.world > 1 {
			comm = fakeWorld{tc.world}
		}
		use, why, err := decide(stdctx.Background(), tc.mode, tc.spec, comm, probe)
		got := why
		if err != nil {
			got = err.Error()
		}
		if use != tc.use || (err != nil) != tc.err || !strings.Contains(got, tc.why) || probed != tc.probed {
			t.Errorf("%s on %s, %d rank(s), probe %v: use %v, %q, err %v, probed %v; want use %v, %q, err %v, probed %v",
				tc.mode, tc.spec, tc.world, tc.probe, use, why, err, probed, tc.use, tc.why, tc.err, tc.probed)
		}
	}
}

// fakeWorld is a communicator of world ranks whose AllGather returns this rank's data for every rank.
type fakeWorld struct{ n int }

func (f fakeWorld) Rank() int { return 0 }
func (f fakeWorld) Size() int { return f.n }
func (f fakeWorld) AllReduce(stdctx.Context, []float32, dist.Op) error {
	return errors.New("unexpected AllReduce")
}
func (f fakeWorld) Broadcast(stdctx.Context, []byte, int) error {
	return errors.New("unexpected Broadcast")
}
func (f fakeWorld) AllGather(_ stdctx.Context, d []byte) ([][]byte, error) {
	out := make([][]byte, f.n)
	for i := range out {
		out[i] = d
	}
	return out, nil
}
func (f fakeWorld) Gather(c stdctx.Context, d []byte) ([][]byte, error) { return f.AllGather(c, d) }
func (f fakeWorld) Barrier(stdctx.Context) error                        { return nil }
func (f fakeWorld) Close() error                                        { return nil }

// TestDecideAgrees: when NCCL is missing on rank 1 only, auto picks tcp on both
// ranks and nccl fails on both, naming rank 1.
func TestDecideAgrees(t *testing.T) {
	for _, mode := range []Mode{Auto, NCCL} {
		comms := localGroup(t, 2)
		var wg sync.WaitGroup
		for r, c := range comms {
			wg.Go(func() {
				probe := func() error {
					if r == 1 {
						return errors.New("no libnccl here")
					}
					return nil
				}
				use, why, err := decide(stdctx.Background(), mode, "xla:cuda", c, probe)
				switch {
				case use:
					t.Errorf("%s, rank %d: NCCL chosen", mode, r)
				case mode == Auto && (err != nil || why != "tcp (NCCL unavailable on rank 1: no libnccl here)"):
					t.Errorf("auto, rank %d: %q, %v", r, why, err)
				case mode == NCCL && (err == nil || !strings.Contains(err.Error(), "rank 1: no libnccl here")):
					t.Errorf("nccl, rank %d: %v", r, err)
				}
			})
		}
		wg.Wait()
	}
}

// TestSelectHere: Select on this machine. The host modes never touch a GPU;
// --collectives nccl on xla:cuda fails with a reason (no cgo/XLA in this build,
// no NCCL, no GPU) unless all are present, which a GPU machine checks
// (TestNCCLReducerGPU).
func TestSelectHere(t *testing.T) {
	t.Setenv("SAFERLHF_BACKEND", "")
	be := goBackend(t)
	for _, mode := range []Mode{Auto, TCP} {
		r, why, err := Select(stdctx.Background(), mode, "go", be, dist.Self{}, 0)
		if r != nil || err != nil || why == "" {
			t.Errorf("Select(%s, go): %v, %q, %v", mode, r, why, err)
		}
	}
	if _, _, err := Select(stdctx.Background(), NCCL, "go", be, dist.Self{}, 0); err == nil || !strings.Contains(err.Error(), "needs --backend xla:cuda") {
		t.Errorf("Select(nccl, go): %v", err)
	}
	r, why, err := Select(stdctx.Background(), NCCL, "xla:cuda", be, dist.Self{}, 0)
	if err == nil {
		r.Close()
		t.Skipf("NCCL and a GPU are here (%s)", why)
	}
	if !cuda.PJRTCompiled && !strings.Contains(err.Error(), "built without cgo or XLA") {
		t.Errorf("Select(nccl, xla:cuda) in a build without XLA: %v", err)
	}
	t.Logf("--collectives nccl here: %v", err)
}

// TestCheckFlags: the data-parallel settings every ranked command shares are checked together,
// every bad one reported with its flag.
func TestCheckFlags(t *testing.T) {
	for _, tc := range []struct {
		name        string
		zero        int
		coll, to    string
		be          string
		errContains []string
	}{
		{"defaults", 0, "", "", "go", nil},
		{"all set", 1, "tcp", "90s", "native", nil},
		{"nccl on xla:cuda", 0, "nccl", "1h", "xla:cuda", nil},
		{"bad zero stage", 3, "auto", "10m", "go", []string{"zero-stage"}},
		{"nccl on the CPU", 0, "nccl", "10m", "go", []string{"--collectives nccl needs --backend xla:cuda"}},
		{"unknown mode", 0, "mpi", "10m", "go", []string{"collectives"}},
		{"all three bad", 2, "mpi", "-1s", "go", []string{"zero-stage", "collectives", "--dist-timeout"}},
	} {
		err := CheckFlags(tc.zero, tc.coll, tc.to, tc.be)
		if (err == nil) != (len(tc.errContains) == 0) {
			t.Errorf("%s: err %v", tc.name, err)
			continue
		}
		for _, want := range tc.errContains {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, want)
			}
		}
	}
}
