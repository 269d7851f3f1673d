package dist

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// VisibleDevices returns the CUDA_VISIBLE_DEVICES value that gives this rank
// its own GPU (the LocalRank-th of those the node exposes), and whether it
// must be set. One process per GPU is the model: XLA and NCCL then see a
// single device 0. Nothing changes for a single process, when the launcher
// already gave each rank one device, or when the node's process count is unknown.
func (e Env) VisibleDevices(current string) (string, bool, error) {
	if !e.IsDistributed() || e.LocalWorldSize <= 1 {
		return current, false, nil
	}
	if current == "" {
		return strconv.Itoa(e.LocalRank), true, nil
	}
	devs := strings.Split(current, ",")
	switch {
	case len(devs) == 1:
		return current, false, nil // the launcher pinned this rank already
	case len(devs) < e.LocalWorldSize:
		return "", false, fmt.Errorf("dist: CUDA_VISIBLE_DEVICES=%q lists %d GPUs for the %d processes of this node", current, len(devs), e.LocalWorldSize)
	}
	return strings.TrimSpace(devs[e.LocalRank]), true, nil
}

// PinGPU sets CUDA_VISIBLE_DEVICES for this process as VisibleDevices says,
// before any GPU library is loaded, and returns the value in effect.
func PinGPU(e Env) (string, error) {
	v, set, err := e.VisibleDevices(os.Getenv("CUDA_VISIBLE_DEVICES"))
	if err != nil || !set {
		return v, err
	}
	return v, os.Setenv("CUDA_VISIBLE_DEVICES", v)
}
