// Package collectives chooses and runs the transport that averages a
// data-parallel run's gradients (--collectives auto|tcp|nccl):
//
//   - tcp: trainer.HostReducer, the gradients copied to the host and averaged
//     through the run's dist.Communicator (the TCP star);
//   - nccl: Reducer, an NCCL all-reduce of the gradient accumulators' PJRT
//     device buffers in place on the GPU (no host copy), for --backend xla:cuda;
//   - auto: nccl when the backend is xla:cuda, there is more than one rank and
//     NCCL loads on every rank, else tcp.
//
// λ, metrics and the other small collectives stay on the dist.Communicator.
package collectives

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/gomlx/gomlx/backends"
	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels/cuda"
	"github.com/saferlhf/saferlhf/native"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// CheckFlags checks the settings every data-parallel command shares, each error naming its
// flag: --zero-stage, --collectives (against --backend) and --dist-timeout.
func CheckFlags(zeroStage int, collectives, distTimeout, backendSpec string) error {
	errs := []error{trainer.CheckZeroStage(zeroStage)}
	if mode, err := ParseMode(collectives); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, CheckBackend(mode, backendSpec))
	}
	_, err := dist.ParseTimeout(distTimeout)
	return errors.Join(append(errs, err)...)
}

// Mode is the --collectives setting.
type Mode string

// The modes.
const (
	Auto Mode = "auto"
	TCP  Mode = "tcp"
	NCCL Mode = "nccl"
)

// Flag is the flag name of the mode on every data-parallel command.
const Flag = "collectives"

// Help is the flag's help text.
const Help = "how gradients are averaged across ranks: tcp (through the host and the TCP rendezvous), nccl (NCCL on the GPU buffers, no host copy; needs --backend xla:cuda and libnccl.so.2) or auto (nccl when both are there, else tcp)"

// ParseMode reads auto, tcp or nccl ("" is auto).
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return Auto, nil
	case Auto, TCP, NCCL:
		return m, nil
	}
	return Auto, fmt.Errorf("--%s %q: want auto, tcp or nccl", Flag, s)
}

// OnGPU reports whether the backend spec (see backend.Resolve) keeps tensors
// in CUDA device memory: xla:cuda, or an XLA plugin path naming CUDA.
func OnGPU(spec string) bool {
	name, cfg, _ := strings.Cut(backend.Resolve(spec), ":")
	plugin, _, _ := strings.Cut(cfg, ",")
	return name == "xla" && (plugin == "cuda" || strings.Contains(strings.ToLower(filepath.Base(plugin)), "cuda"))
}

// CheckBackend refuses nccl on a backend whose tensors are not in GPU memory
// (the check a command's configuration makes before any work).
func CheckBackend(mode Mode, spec string) error {
	if mode == NCCL && !OnGPU(spec) {
		return fmt.Errorf("--%s nccl needs --backend xla:cuda (NCCL averages gradients in GPU memory), not --backend %s; use --%s tcp or auto",
			Flag, backend.Resolve(spec), Flag)
	}
	return nil
}

// decide applies mode on this rank of comm: whether to average on the GPU
// through NCCL, and a line saying why. probe (run only when NCCL is wanted or
// possible) checks this rank's NCCL and GPU; the ranks agree on the outcome, so
// that auto picks one transport everywhere and an unavailable nccl fails every
// rank with the first failing rank's reason.
func decide(ctx context.Context, mode Mode, spec string, comm dist.Communicator, probe func() error) (bool, string, error) {
	switch {
	case mode == TCP:
		return false, "tcp (--collectives tcp)", nil
	case mode == Auto && comm.Size() < 2:
		return false, "none (one rank)", nil
	case !OnGPU(spec):
		if err := CheckBackend(mode, spec); err != nil {
			return false, "", err
		}
		return false, fmt.Sprintf("tcp (--backend %s keeps tensors in host memory)", backend.Resolve(spec)), nil
	}
	var mine []byte
	if err := probe(); err != nil {
		mine = []byte(err.Error())
	}
	all := [][]byte{mine}
	if comm.Size() > 1 {
		var err error
		if all, err = comm.AllGather(ctx, mine); err != nil {
			return false, "", fmt.Errorf("--%s: agreeing on the transport: %w", Flag, err)
		}
	}
	for r, msg := range all {
		if len(msg) == 0 {
			continue
		}
		if mode == NCCL {
			return false, "", fmt.Errorf("--%s nccl: rank %d: %s (use --%s tcp to average through the host)", Flag, r, msg, Flag)
		}
		return false, fmt.Sprintf("tcp (NCCL unavailable on rank %d: %s)", r, msg), nil
	}
	return true, "nccl", nil
}

// Select returns the gradient reducer of one rank of comm for mode on backend
// be (started from spec) and a line for the log saying which transport runs
// and why. A nil Reducer means the host path (the Stepper's default,
// trainer.HostReducer over comm). The caller closes a non-nil Reducer.
// timeout bounds NCCL's initialisation and each collective (0: dist.DefaultTimeout).
func Select(ctx context.Context, mode Mode, spec string, be backends.Backend, comm dist.Communicator, timeout time.Duration) (*Reducer, string, error) {
	if timeout <= 0 {
		timeout = dist.DefaultTimeout
	}
	var n *native.NCCL
	var cu *native.CUDA
	probe := func() error {
		var err error
		n, cu, err = openGPU()
		return err
	}
	use, why, err := decide(ctx, mode, spec, comm, probe)
	if err != nil || !use {
		if cu != nil {
			cu.Close()
		}
		return nil, why, err
	}
	nc, err := native.InitNCCL(ctx, n, cu, comm, timeout)
	if err != nil {
		cu.Close()
		return nil, "", fmt.Errorf("--%s nccl: %w", Flag, err)
	}
	r := newReducer(&cudaDevice{be: be, cu: cu, comm: nc, avg: n.Version() >= ncclAvgVersion}, be, DefaultBucketBytes)
	return r, fmt.Sprintf("nccl (NCCL %s from %s, %d rank(s), mean by %s) on %s", versionString(n.Version()), n.Path(), nc.Size(), r.meanBy(), cu.Info().Name), nil
}

// openGPU loads NCCL and opens this process's GPU (device 0: dist.PinGPU gave it one).
func openGPU() (*native.NCCL, *native.CUDA, error) {
	if !cuda.PJRTCompiled {
		return nil, nil, errors.New("this binary was built without cgo or XLA, so it cannot reach PJRT device buffers")
	}
	n, err := native.LoadNCCL()
	if err != nil {
		return nil, nil, err
	}
	cu, err := native.Open()
	if err != nil {
		return nil, nil, err
	}
	return n, cu, nil
}

// ncclAvgVersion is the first NCCL with ncclAvg (2.10.0).
const ncclAvgVersion = 21000

// versionString turns NCCL's version code (major*10000 + minor*100 + patch since 2.9) into "2.27.3".
func versionString(v int) string {
	if v >= 20900 {
		return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
	}
	return fmt.Sprintf("%d.%d.%d", v/1000, v/100%10, v%100)
}
