package backend

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// PluginEnvVar names the environment variable holding the CUDA PJRT plugin's absolute path.
const PluginEnvVar = "SAFERLHF_PJRT_CUDA"

// FindCUDAPlugin locates the CUDA PJRT plugin: $SAFERLHF_PJRT_CUDA, else the
// plugin shipped by the jax-cuda{12,13}-plugin Python wheels in the usual
// site-packages folders. It also points XLA_FLAGS' CUDA data dir at the
// toolkit next to the plugin when the user has not set it.
func FindCUDAPlugin() (string, error) {
	if p := os.Getenv(PluginEnvVar); p != "" {
		setCUDADataDir(filepath.Dir(filepath.Dir(filepath.Dir(p))))
		return p, nil
	}
	var found []string
	for _, root := range sitePackages() {
		for _, v := range []string{"xla_cuda13", "xla_cuda12"} {
			p := filepath.Join(root, "jax_plugins", v, "xla_cuda_plugin.so")
			if _, err := os.Stat(p); err == nil {
				found = append(found, p)
			}
		}
	}
	if len(found) == 0 {
		return "", fmt.Errorf("no CUDA PJRT plugin found: set %s to the absolute path of xla_cuda_plugin.so", PluginEnvVar)
	}
	setCUDADataDir(filepath.Dir(filepath.Dir(filepath.Dir(found[0]))))
	return found[0], nil
}

// sitePackages lists candidate Python site-packages folders, most specific first.
func sitePackages() []string {
	var roots []string
	for _, pattern := range []string{
		"/opt/*/.venv/lib/python3*/site-packages",
		"/usr/local/lib/python3*/dist-packages",
		"/usr/local/lib/python3*/site-packages",
		"/usr/lib/python3/dist-packages",
		os.Getenv("HOME") + "/.local/lib/python3*/site-packages",
	} {
		m, _ := filepath.Glob(pattern)
		sort.Sort(sort.Reverse(sort.StringSlice(m)))
		roots = append(roots, m...)
	}
	return roots
}

// setCUDADataDir sets --xla_gpu_cuda_data_dir to the nvidia wheels' CUDA folder
// next to the plugin unless XLA_FLAGS already names one (go-xla v0.1.4 may pick a wrong one).
func setCUDADataDir(sitePkgs string) {
	flags := os.Getenv("XLA_FLAGS")
	if strings.Contains(flags, "xla_gpu_cuda_data_dir") {
		return
	}
	for _, d := range []string{filepath.Join(sitePkgs, "nvidia", "cu13"), filepath.Join(sitePkgs, "nvidia", "cuda_nvcc"), "/usr/local/cuda"} {
		if _, err := os.Stat(d); err == nil {
			os.Setenv("XLA_FLAGS", strings.TrimSpace(flags+" --xla_gpu_cuda_data_dir="+d))
			// go-xla v0.1.4 otherwise overrides the data dir with a path of its author's machine.
			if os.Getenv("GOPJRT_CUDA_CHECKS") == "" {
				os.Setenv("GOPJRT_CUDA_CHECKS", "0")
			}
			return
		}
	}
}
