package main

import (
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// launcher starts a 2-rank run of a command through a real launcher.
type launcher struct {
	name string // the launcher's name in dist.Env ("openmpi", ...)
	// argv is the launcher's command line that starts two ranks of bin with args.
	argv func(t *testing.T, bin string, args []string) []string
	// usable returns why the launcher cannot run here ("" when it can).
	usable func() string
}

// launchers are the real launchers the README documents, each tried when present
// (README.md, "Several processes", says how each was installed and run here):
//   - mpirun (Debian's openmpi-bin; .ci/run installs it): one node, no MASTER_ADDR;
//   - torchrun (Debian's python3-torch 1.13.1): static rendezvous; --redirects and --tee
//     are given as a mapping for a local rank that does not exist, the workaround for
//     torch 1.13 on Python 3.11, whose Std.from_str turns "0" into None;
//   - srun against a running Slurm (bench/launch/slurm-local.sh start; SLURM_CONF).
var launchers = []launcher{
	{name: "openmpi", usable: mpirunWorks, argv: func(t *testing.T, bin string, args []string) []string {
		return append([]string{"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", bin}, args...)
	}},
	{name: "torchrun", usable: onPath("torchrun"), argv: func(t *testing.T, bin string, args []string) []string {
		return append([]string{"torchrun", "--no_python", "--nproc_per_node", "2", "--redirects", "9:0", "--tee", "9:0",
			"--master_addr", "127.0.0.1", "--master_port", strconv.Itoa(freePort(t)), bin}, args...)
	}},
	{name: "slurm", usable: slurmUp, argv: func(t *testing.T, bin string, args []string) []string {
		return append([]string{"srun", "--ntasks", "2", "--nodes", "1", "--time", "10", bin}, args...)
	}},
}

func onPath(cmd string) func() string {
	return func() string {
		if _, err := exec.LookPath(cmd); err != nil {
			return cmd + " is not on PATH"
		}
		return ""
	}
}

// mpirunWorks reports whether mpirun can start two processes of true here (a machine
// whose Open MPI cannot start anything, a container without shared memory say, skips).
func mpirunWorks() string {
	if why := onPath("mpirun")(); why != "" {
		return why
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "true").CombinedOutput(); err != nil {
		return fmt.Sprintf("mpirun -np 2 true: %v\n%s", err, out)
	}
	return ""
}

// slurmUp reports whether srun can reach a Slurm controller with an idle node.
func slurmUp() string {
	if why := onPath("srun")(); why != "" {
		return why
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sinfo", "-h", "-o", "%T").Output()
	if err != nil || !strings.Contains(string(out), "idle") {
		return fmt.Sprintf("no idle Slurm node (sinfo: %v %q; bench/launch/slurm-local.sh starts one)", err, out)
	}
	return ""
}

// freePort returns a port p with p and p+1 free a moment ago (torchrun's store and saferlhf's rendezvous).
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		next, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		ln.Close()
		if err == nil {
			next.Close()
			return p
		}
	}
	t.Fatal("no two consecutive free ports")
	return 0
}

// launcherFreeEnv is the test's environment without any launcher's variables, so that
// only the launcher under test places the ranks (SLURM_CONF, which names the cluster, stays).
func launcherFreeEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "SLURM_CONF":
		case strings.HasPrefix(k, "SLURM_"), strings.HasPrefix(k, "OMPI_"), strings.HasPrefix(k, "PMIX_"),
			strings.HasPrefix(k, "TORCHELASTIC_"), strings.HasPrefix(k, "MASTER_"):
			continue
		}
		switch k {
		case "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "JOB_COMPLETION_INDEX", "SAFERLHF_DIST_PORT":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// runLaunched runs args as two ranks through l and returns the combined output.
func runLaunched(t *testing.T, l launcher, bin string, args []string) string {
	t.Helper()
	argv := l.argv(t, bin, args)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = "../.."
	cmd.Env = launcherFreeEnv()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	t.Logf("%s ... (%.1f s)", strings.Join(argv[:len(argv)-len(args)], " "), time.Since(start).Seconds())
	for r := range 2 {
		if want := fmt.Sprintf("dist: rank %d/2 (local %d/2) via %s", r, r, l.name); !strings.Contains(string(out), want) {
			t.Errorf("no %q in the output:\n%s", want, out)
		}
	}
	return string(out)
}

// compareRecords returns the largest relative difference (to max(1, |x|)) between the
// numbers of two runs' records, failing on any other difference.
func compareRecords(t *testing.T, a, b []map[string]any) float64 {
	t.Helper()
	if len(a) != len(b) || len(a) < 5 {
		t.Fatalf("%d records vs %d", len(a), len(b))
	}
	worst := 0.0
	for i := range a {
		for k, v := range a[i] {
			x, ok := v.(float64)
			if !ok {
				if v != b[i][k] {
					t.Errorf("record %d: %s = %v vs %v", i, k, v, b[i][k])
				}
				continue
			}
			y, ok := b[i][k].(float64)
			if !ok {
				t.Errorf("record %d: %s = %v vs %v", i, k, v, b[i][k])
				continue
			}
			worst = max(worst, math.Abs(x-y)/max(1, math.Abs(x)))
		}
	}
	return worst
}

// testLaunchers runs the train-rm run of one (args with --out replaced) under each real
// launcher present and compares its records with the one-process run's.
func testLaunchers(t *testing.T, bin string, one []map[string]any, args func(out string) []string) {
	for _, l := range launchers {
		t.Run(l.name, func(t *testing.T) {
			if why := l.usable(); why != "" {
				t.Skip(why)
			}
			out := filepath.Join(t.TempDir(), "run")
			runLaunched(t, l, bin, args(out))
			worst := compareRecords(t, one, readRecords(t, filepath.Join(out, "metrics.jsonl")))
			t.Logf("train-rm, 1 process vs 2 ranks via %s: largest relative difference %.3g over %d records", l.name, worst, len(one))
			if worst > 2e-5 {
				t.Errorf("largest relative difference %.3g > 2e-5", worst)
			}
		})
	}
}
