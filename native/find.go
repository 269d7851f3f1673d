package native

import (
	"os"
	"path/filepath"
	"sort"
)

// NVRTCEnvVar names the environment variable that gives NVRTC's shared library (an absolute path).
const NVRTCEnvVar = "SAFERLHF_NVRTC"

// CUDAEnvVar names the environment variable that gives the CUDA driver library (an absolute path).
const CUDAEnvVar = "SAFERLHF_LIBCUDA"

// driverCandidates lists where to look for the CUDA driver, in order: the
// environment variable, the dynamic loader's own search (ldconfig), then the
// usual install folders of the driver (containers often mount it under /usr/local/nvidia).
func driverCandidates() []string {
	var c []string
	if p := os.Getenv(CUDAEnvVar); p != "" {
		c = append(c, p)
	}
	return append(c, "libcuda.so.1",
		"/usr/local/nvidia/lib64/libcuda.so.1",
		"/usr/lib/x86_64-linux-gnu/libcuda.so.1",
		"/usr/lib64/libcuda.so.1",
		"/usr/lib/wsl/lib/libcuda.so.1",
	)
}

// nvrtcCandidates lists where to look for NVRTC, in order: $SAFERLHF_NVRTC,
// the loader's default search for libnvrtc.so.13 and .12, /usr/local/cuda, and
// the NVIDIA Python wheels (nvidia-cuda-nvrtc) in the usual site-packages
// folders: nvidia/cu13/lib for CUDA 13, nvidia/cuda_nvrtc/lib for CUDA 12.
func nvrtcCandidates() []string {
	var c []string
	if p := os.Getenv(NVRTCEnvVar); p != "" {
		c = append(c, p)
	}
	sonames := []string{"libnvrtc.so.13", "libnvrtc.so.12"}
	c = append(c, sonames...)
	for _, dir := range []string{"/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"} {
		for _, s := range sonames {
			c = append(c, filepath.Join(dir, s))
		}
	}
	for _, root := range sitePackages() {
		c = append(c,
			filepath.Join(root, "nvidia", "cu13", "lib", "libnvrtc.so.13"),
			filepath.Join(root, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.13"),
			filepath.Join(root, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.12"),
		)
	}
	return c
}

// sitePackages lists Python site-packages folders that may hold NVIDIA wheels,
// most specific first (the GPU machines keep PyTorch in /opt/torch/.venv).
func sitePackages() []string {
	var roots []string
	home, _ := os.UserHomeDir()
	for _, pattern := range []string{
		"/opt/*/.venv/lib/python3*/site-packages",
		"/usr/local/lib/python3*/dist-packages",
		"/usr/local/lib/python3*/site-packages",
		"/usr/lib/python3/dist-packages",
		filepath.Join(home, ".local/lib/python3*/site-packages"),
	} {
		m, _ := filepath.Glob(pattern)
		sort.Sort(sort.Reverse(sort.StringSlice(m)))
		roots = append(roots, m...)
	}
	return roots
}

// builtinsNextTo returns the NVRTC builtins libraries beside an NVRTC library
// path. NVRTC dlopens them by soname at compile time; loading them first from
// the same folder makes that work for wheels that are not on the loader's path.
func builtinsNextTo(nvrtcPath string) []string {
	if !filepath.IsAbs(nvrtcPath) {
		return nil
	}
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(nvrtcPath), "libnvrtc-builtins.so*"))
	sort.Sort(sort.Reverse(sort.StringSlice(m))) // versioned names (libnvrtc-builtins.so.13.0) before the bare one
	return m
}
