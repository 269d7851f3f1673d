package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// netnsScript is the script that makes the "nodes" (network namespaces) of TestMultiNodeNetns.
const netnsScript = "bench/launch/netns.sh"

// netnsPrefix names this test process's namespaces (slt<pid>-0, slt<pid>-1, slt<pid>-sw), so that
// concurrent runs on one machine do not meet; netnsStale matches them.
var netnsStale = regexp.MustCompile(`^slt([0-9]+)-(sw|[0-9]+)$`)

// netnsNodes starts two nodes with bench/launch/netns.sh, n0 (10.77.0.1) and n1 (10.77.0.2),
// and removes them (and what still runs on them) when the test ends, failed or not. It skips
// when network namespaces cannot be made here (not root, no iproute2, a sandbox without them),
// and first removes the namespaces of earlier test processes that died without cleaning up.
func netnsNodes(t *testing.T) (env []string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make network namespaces (ip netns add)")
	}
	for _, c := range []string{"ip", "bash", "timeout"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s is not on PATH (apt-get install -y iproute2)", c)
		}
	}
	script, err := filepath.Abs(filepath.Join("..", "..", netnsScript))
	if err != nil {
		t.Fatal(err)
	}
	stop := func(prefix string) {
		cmd := exec.Command("bash", script, "stop")
		cmd.Env = append(os.Environ(), netnsVars(prefix)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s stop (NETNS_PREFIX=%s): %v\n%s", netnsScript, prefix, err, out)
		}
		os.RemoveAll(netnsSlurmDir(prefix))
	}
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		stale := map[int]bool{}
		for _, e := range entries {
			if m := netnsStale.FindStringSubmatch(e.Name()); m != nil {
				if pid, _ := strconv.Atoi(m[1]); pid != os.Getpid() && syscall.Kill(pid, 0) == syscall.ESRCH {
					stale[pid] = true
				}
			}
		}
		for pid := range stale {
			t.Logf("removing the namespaces slt%d-*, left by test process %d", pid, pid)
			stop(fmt.Sprintf("slt%d-", pid))
		}
	}
	prefix := fmt.Sprintf("slt%d-", os.Getpid())
	probe := prefix + "probe"
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("network namespaces do not work here: ip netns add: %v: %s", err, bytes.TrimSpace(out))
	}
	// The nodes also need a bridge and veth pairs, which a kernel or sandbox may lack while
	// allowing namespaces: probe both inside the probe namespace, so that only a broken
	// netns.sh fails the test.
	var missing error
	for _, link := range [][]string{{"pbr", "type", "bridge"}, {"pv0", "type", "veth", "peer", "name", "pv1"}} {
		if out, err := exec.Command("ip", append([]string{"-n", probe, "link", "add"}, link...)...).CombinedOutput(); err != nil && missing == nil {
			missing = fmt.Errorf("ip link add %s: %v: %s", strings.Join(link, " "), err, bytes.TrimSpace(out))
		}
	}
	if out, err := exec.Command("ip", "netns", "del", probe).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", probe, err, out)
	}
	if missing != nil {
		t.Skipf("network namespaces work here but their links do not: %v", missing)
	}
	env = append(launcherFreeEnv(), netnsVars(prefix)...)
	t.Cleanup(func() {
		stop(prefix)
		for _, n := range []string{"0", "1", "sw"} {
			if _, err := os.Stat("/run/netns/" + prefix + n); err == nil {
				t.Errorf("namespace %s%s left behind", prefix, n)
			}
		}
	})
	cmd := exec.Command("bash", script, "start")
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s start: %v\n%s", netnsScript, err, out)
	}
	return env
}

// netnsVars are the variables of netns.sh for the nodes of prefix.
func netnsVars(prefix string) []string {
	return []string{"NETNS_PREFIX=" + prefix, "NETNS_SLURM_DIR=" + netnsSlurmDir(prefix), "SLURM_CONF=" + filepath.Join(netnsSlurmDir(prefix), "slurm.conf")}
}

// netnsSlurmDir holds what the Slurm daemons on the nodes of prefix write (netns.sh slurm-start).
func netnsSlurmDir(prefix string) string { return filepath.Join(os.TempDir(), prefix+"slurm") }

// startNodes starts rank r of bin on node r (netns.sh run r), with the launcher variables vars(r).
func startNodes(t *testing.T, env []string, bin string, vars func(r int) []string, args []string) ([]*exec.Cmd, []*bytes.Buffer) {
	t.Helper()
	cmds := make([]*exec.Cmd, 2)
	logs := make([]*bytes.Buffer, 2)
	for r := range 2 {
		cmd := exec.Command("bash", append([]string{netnsScript, "run", strconv.Itoa(r), bin}, args...)...)
		cmd.Dir = "../.."
		logs[r] = new(bytes.Buffer)
		cmd.Stdout, cmd.Stderr = logs[r], logs[r]
		cmd.Env = append(append([]string{}, env...), vars(r)...)
		cmd.WaitDelay = time.Second // a child holding the output open does not keep Wait waiting
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[r] = cmd
		// Process.Wait, not cmd.Wait: a test may be in cmd.Wait already (awaitRecords), and a
		// second cmd.Wait would wait forever for output copies the first has collected.
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Process.Wait() })
	}
	return cmds, logs
}

// nodeRunLimit bounds each run across the nodes, so that a rank that never meets the other
// (which waits for it for the 10-minute rendezvous timeout) fails the test instead of hanging it.
const nodeRunLimit = 5 * time.Minute

// waitNodes waits for both ranks. When one fails, the other is killed at once (it would wait for
// the failed one until the rendezvous or --dist-timeout gives up), and both logs are shown.
func waitNodes(t *testing.T, what string, cmds []*exec.Cmd, logs []*bytes.Buffer) {
	t.Helper()
	type exit struct {
		rank int
		err  error
	}
	done := make(chan exit, len(cmds))
	for r, cmd := range cmds {
		go func() { done <- exit{r, cmd.Wait()} }()
	}
	limit := time.After(nodeRunLimit)
	for range cmds {
		select {
		case e := <-done:
			if e.err != nil {
				for _, cmd := range cmds {
					cmd.Process.Kill()
				}
				t.Fatalf("%s: rank %d on node n%d: %v\n%s\nrank %d:\n%s", what, e.rank, e.rank, e.err, logs[e.rank], 1-e.rank, logs[1-e.rank])
			}
		case <-limit:
			for _, cmd := range cmds {
				cmd.Process.Kill()
			}
			t.Fatalf("%s: still running after %s:\nrank 0:\n%s\nrank 1:\n%s", what, nodeRunLimit, logs[0], logs[1])
		}
	}
}

// nodeCommand is bash running args from the repository's root with env, killed after
// nodeRunLimit (and its output given up a second after, should a child still hold it).
func nodeCommand(t *testing.T, env []string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), nodeRunLimit)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, "bash", args...)
	cmd.Dir, cmd.Env, cmd.WaitDelay = "../..", env, time.Second
	return cmd
}

// torchrunNodeVars are the variables torchrun gives the one worker of each of two nodes
// (torchrun --nnodes 2 --node_rank r --nproc_per_node 1 --master_addr 10.77.0.1), without its
// agent store: saferlhf meets on MASTER_PORT itself.
func torchrunNodeVars(r int) []string {
	return []string{"RANK=" + strconv.Itoa(r), "WORLD_SIZE=2", "LOCAL_RANK=0", "LOCAL_WORLD_SIZE=1",
		"GROUP_RANK=" + strconv.Itoa(r), "ROLE_RANK=" + strconv.Itoa(r), "GROUP_WORLD_SIZE=2",
		"MASTER_ADDR=10.77.0.1", "MASTER_PORT=29500"}
}

// slurmNodeVars are the variables srun --nodes 2 --ntasks-per-node 1 gives task r: no MASTER_ADDR,
// so the rendezvous host is the first of SLURM_STEP_NODELIST, a host name that resolves only
// inside the nodes (their /etc/hosts).
func slurmNodeVars(r int) []string {
	return []string{"SLURM_PROCID=" + strconv.Itoa(r), "SLURM_NTASKS=2", "SLURM_LOCALID=0", "SLURM_NODEID=" + strconv.Itoa(r),
		"SLURM_NNODES=2", "SLURM_STEP_NODELIST=n[0-1]", "SLURM_JOB_NODELIST=n[0-1]", "SLURM_STEP_TASKS_PER_NODE=1(x2)",
		"SLURMD_NODENAME=n" + strconv.Itoa(r), "SLURM_JOB_ID=4242"}
}

// TestMultiNodeNetns runs data-parallel jobs across two "hosts": network namespaces n0 (10.77.0.1)
// and n1 (10.77.0.2) on a bridge (bench/launch/netns.sh), rank r on node r with the variables a
// multi-node launcher gives (local rank 0 of 1 on each). train-rm with torchrun's variables
// (MASTER_ADDR=10.77.0.1) and with Slurm's (rank 0's host n0 taken from SLURM_STEP_NODELIST=n[0-1]
// and resolved through the nodes' /etc/hosts), then placed by a real srun (slurmctld on n0 and a
// slurmd on each node, when Slurm is installed) and by a real mpirun -H n0,n1 (with -x MASTER_ADDR=n0;
// without it the ranks refuse, saying to pass it), and ppo-lag with torchrun's give the one-process
// records within 2e-5 and 1e-4 relative. Then a network partition (node 1's link deleted mid-run,
// both processes alive) ends both ranks after --dist-timeout with errors saying so.
func TestMultiNodeNetns(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI and trains across network namespaces")
	}
	env := netnsNodes(t)
	bin := buildCLIBinary(t)
	dir := t.TempDir()

	one := filepath.Join(dir, "one")
	if o, e, code := runCLI(t, bin, rmArgs(one, 4)...); code != 0 {
		t.Fatalf("one process: exit %d\n%s%s", code, o, e)
	}
	a := readRecords(t, filepath.Join(one, "metrics.jsonl"))
	for _, l := range []struct {
		name, rendezvous string
		vars             func(int) []string
	}{
		{"torchrun", "10.77.0.1:29500", torchrunNodeVars},
		{"slurm", "n0:29742", slurmNodeVars},
	} {
		out := filepath.Join(dir, l.name)
		start := time.Now()
		cmds, logs := startNodes(t, env, bin, l.vars, rmArgs(out, 4))
		waitNodes(t, l.name, cmds, logs)
		for r := range 2 {
			if want := fmt.Sprintf("dist: rank %d/2 (local 0/1) via %s, rendezvous %s", r, l.name, l.rendezvous); !strings.Contains(logs[r].String(), want) {
				t.Errorf("no %q in rank %d's output:\n%s", want, r, logs[r])
			}
		}
		worst := compareRecords(t, a, readRecords(t, filepath.Join(out, "metrics.jsonl")))
		t.Logf("train-rm, 1 process vs ranks on n0 and n1 via %s's variables: largest relative difference %.3g over %d records (%.1f s)",
			l.name, worst, len(a), time.Since(start).Seconds())
		if worst > 2e-5 {
			t.Errorf("%s: largest relative difference %.3g > 2e-5", l.name, worst)
		}
	}

	// Real srun across the nodes: slurmctld on n0, a slurmd on each node (skipped without Slurm).
	t.Run("srun", func(t *testing.T) {
		for _, c := range []string{"slurmctld", "slurmd", "srun", "munged", "nsenter", "unshare"} {
			if _, err := exec.LookPath(c); err != nil {
				t.Skipf("%s is not on PATH (apt-get install -y slurmctld slurmd slurm-client)", c)
			}
		}
		up := nodeCommand(t, env, netnsScript, "slurm-start")
		if out, err := up.CombinedOutput(); err != nil {
			t.Fatalf("%s slurm-start: %v\n%s", netnsScript, err, out)
		}
		out := filepath.Join(dir, "srun")
		start := time.Now()
		cmd := nodeCommand(t, env, append([]string{netnsScript, "run", "0", "srun", "--nodes", "2", "--ntasks-per-node", "1", "--time", "5", bin}, rmArgs(out, 4)...)...)
		log, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("srun: %v\n%s", err, log)
		}
		for r := range 2 {
			if want := fmt.Sprintf("dist: rank %d/2 (local 0/1) via slurm, rendezvous n0:", r); !strings.Contains(string(log), want) {
				t.Errorf("no %q in srun's output:\n%s", want, log)
			}
		}
		worst := compareRecords(t, a, readRecords(t, filepath.Join(out, "metrics.jsonl")))
		t.Logf("train-rm, 1 process vs srun --nodes 2 on n0 and n1: largest relative difference %.3g over %d records (%.1f s)",
			worst, len(a), time.Since(start).Seconds())
		if worst > 2e-5 {
			t.Errorf("srun: largest relative difference %.3g > 2e-5", worst)
		}
	})

	// Real mpirun across the nodes (netns.sh rsh as its remote shell): with -x MASTER_ADDR=n0 the
	// one-process records; without it, every rank refuses, saying to pass it (skipped without Open MPI).
	t.Run("mpirun", func(t *testing.T) {
		if _, err := exec.LookPath("mpirun"); err != nil {
			t.Skip("mpirun is not on PATH (apt-get install -y openmpi-bin)")
		}
		script, err := filepath.Abs(filepath.Join("..", "..", netnsScript))
		if err != nil {
			t.Fatal(err)
		}
		mpirun := func(out string, extra ...string) (string, error) {
			argv := append([]string{netnsScript, "run", "0", "mpirun", "--allow-run-as-root", "-H", "n0,n1", "-np", "2",
				"--mca", "plm_rsh_agent", script + " rsh"}, extra...)
			cmd := nodeCommand(t, env, append(append(argv, bin), rmArgs(out, 4)...)...)
			log, err := cmd.CombinedOutput()
			return string(log), err
		}
		out := filepath.Join(dir, "mpirun")
		start := time.Now()
		log, err := mpirun(out, "-x", "MASTER_ADDR=n0")
		if err != nil {
			t.Fatalf("mpirun: %v\n%s", err, log)
		}
		for r := range 2 {
			if want := fmt.Sprintf("dist: rank %d/2 (local 0/1) via openmpi, rendezvous n0:29500", r); !strings.Contains(log, want) {
				t.Errorf("no %q in mpirun's output:\n%s", want, log)
			}
		}
		worst := compareRecords(t, a, readRecords(t, filepath.Join(out, "metrics.jsonl")))
		t.Logf("train-rm, 1 process vs mpirun -H n0,n1: largest relative difference %.3g over %d records (%.1f s)",
			worst, len(a), time.Since(start).Seconds())
		if worst > 2e-5 {
			t.Errorf("mpirun: largest relative difference %.3g > 2e-5", worst)
		}
		log, err = mpirun(filepath.Join(dir, "mpirun-no-addr"))
		if want := "MASTER_ADDR is not set and not every rank is on this node"; err == nil || !strings.Contains(log, want) {
			t.Errorf("mpirun across nodes without MASTER_ADDR: %v, want an error with %q\n%s", err, want, log)
		}
	})

	// ppo-lag (sampling, both critics, λ): the same records and held-out summary across the nodes.
	rm, cm := tinyScoreModels(t, dir)
	ppoArgs := func(out string) []string {
		a := "assets/data"
		return []string{"ppo-lag", "--model", a + "/models/stories260K.bin", "--tokenizer", a + "/models/tok512.bin",
			"--reward-model", rm, "--cost-model", cm, "--data", a + "/pku-saferlhf/align-anything-preference-sample.json",
			"--max-prompt-tokens", "64", "--max-new-tokens", "8", "--prompt-batch-size", "4", "--train-batch-size", "4",
			"--top-k", "50", "--temperature", "1", "--threshold", "-2", "--lambda-lr", "0.5", "--max-steps", "2",
			"--eval-max", "4", "--eval-batch-size", "2", "--actor-lr", "1e-3", "--critic-lr", "1e-3", "--out", out}
	}
	onePPO, twoPPO := filepath.Join(dir, "ppo-one"), filepath.Join(dir, "ppo-two")
	if o, e, code := runCLI(t, bin, ppoArgs(onePPO)...); code != 0 {
		t.Fatalf("ppo-lag, one process: exit %d\n%s%s", code, o, e)
	}
	cmds, logs := startNodes(t, env, bin, torchrunNodeVars, ppoArgs(twoPPO))
	waitNodes(t, "ppo-lag", cmds, logs)
	worst := relDiff(t, readRecords(t, filepath.Join(onePPO, "metrics.jsonl")), readRecords(t, filepath.Join(twoPPO, "metrics.jsonl")))
	var sum [2]struct{ Before, After map[string]any }
	for i, d := range []string{onePPO, twoPPO} {
		raw, err := os.ReadFile(filepath.Join(d, "summary.json"))
		if err == nil {
			err = json.Unmarshal(raw, &sum[i])
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	worst = max(worst, relDiff(t, []map[string]any{sum[0].Before, sum[0].After}, []map[string]any{sum[1].Before, sum[1].After}))
	t.Logf("ppo-lag, 1 process vs ranks on n0 and n1: largest relative difference %.3g (metrics and held-out summary)", worst)
	if worst > 1e-4 {
		t.Errorf("ppo-lag: largest relative difference %.3g > 1e-4", worst)
	}

	// A partition: node 1's link is deleted mid-run; both processes live on, and each ends
	// after --dist-timeout with an error that says so (rank 0 names rank 1).
	part := filepath.Join(dir, "partition")
	cmds, logs = startNodes(t, env, bin, torchrunNodeVars, append(rmArgs(part, 100000), "--dist-timeout", "10s"))
	exited := awaitRecords(t, cmds, logs, filepath.Join(part, "metrics.jsonl"), 3)
	cut := nodeCommand(t, env, netnsScript, "cut", "1")
	if out, err := cut.CombinedOutput(); err != nil {
		t.Fatalf("%s cut 1: %v\n%s", netnsScript, err, out)
	}
	cutAt := time.Now()
	for r, want := range []string{"rank 1 did not arrive within 10s (stuck, or its host is down)", "no result from rank 0 (10.77.0.1:29500) within 10s"} {
		awaitFailure(t, exited[r], r, logs[r], want, "the partition", cutAt)
	}
}

// relDiff returns the largest relative difference (to max(1, |x|)) between the numbers of two
// runs' records, failing when a record or number of a is missing from b.
func relDiff(t *testing.T, a, b []map[string]any) float64 {
	t.Helper()
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("%d records vs %d", len(a), len(b))
	}
	worst := 0.0
	for i := range a {
		for k, v := range a[i] {
			x, ok := v.(float64)
			if !ok {
				continue
			}
			y, ok := b[i][k].(float64)
			if !ok {
				t.Fatalf("record %d: %s = %v vs %v", i, k, v, b[i][k])
			}
			worst = max(worst, math.Abs(x-y)/max(1, math.Abs(x)))
		}
	}
	return worst
}
