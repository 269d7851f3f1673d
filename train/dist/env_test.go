package dist

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want Env
		err  string // substring of the error, "" for none
	}{
		{name: "none", env: nil, want: Single},
		{name: "torchrun", env: map[string]string{"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
			"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"},
			want: Env{Rank: 3, WorldSize: 8, LocalRank: 1, LocalWorldSize: 4, Addr: "10.0.0.1:29400", Launcher: "torchrun"}},
		{name: "torchrun default port", env: map[string]string{"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "host-a"},
			want: Env{Rank: 0, WorldSize: 2, Addr: "host-a:29500", Launcher: "torchrun"}},
		{name: "torchrun ipv6", env: map[string]string{"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "::1", "MASTER_PORT": "1234"},
			want: Env{Rank: 1, WorldSize: 2, Addr: "[::1]:1234", Launcher: "torchrun"}},
		{name: "torchrun world 1 needs no address", env: map[string]string{"RANK": "0", "WORLD_SIZE": "1"},
			want: Env{WorldSize: 1, LocalWorldSize: 1, Launcher: "torchrun"}},
		{name: "torchrun wins over slurm", env: map[string]string{"RANK": "5", "WORLD_SIZE": "8", "MASTER_ADDR": "n1",
			"SLURM_PROCID": "1", "SLURM_NTASKS": "2"},
			want: Env{Rank: 5, WorldSize: 8, Addr: "n1:29500", Launcher: "torchrun"}},
		{name: "torchrun agent store", env: map[string]string{"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "29500",
			"TORCHELASTIC_USE_AGENT_STORE": "True"},
			want: Env{Rank: 1, WorldSize: 2, Addr: "h:29501", Launcher: "torchrun"}},
		{name: "port override", env: map[string]string{"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "29500",
			"TORCHELASTIC_USE_AGENT_STORE": "True", "SAFERLHF_DIST_PORT": "4000"},
			want: Env{Rank: 1, WorldSize: 2, Addr: "h:4000", Launcher: "torchrun"}},
		{name: "bad port override", env: map[string]string{"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "SAFERLHF_DIST_PORT": "x"},
			err: `SAFERLHF_DIST_PORT="x" is not a port`},
		{name: "torchrun half set", env: map[string]string{"RANK": "1"}, err: "WORLD_SIZE not set"},
		{name: "torchrun rank outside", env: map[string]string{"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, err: "rank 2 is outside the world of 2"},
		{name: "torchrun negative rank", env: map[string]string{"RANK": "-1", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, err: "rank -1 is outside"},
		{name: "torchrun not a number", env: map[string]string{"RANK": "one", "WORLD_SIZE": "2"}, err: `RANK="one" is not an integer`},
		{name: "torchrun zero world", env: map[string]string{"RANK": "0", "WORLD_SIZE": "0"}, err: "world size 0"},
		{name: "torchrun local rank outside", env: map[string]string{"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h"},
			err: "local rank 2 is outside the 2 processes"},
		{name: "torchrun local world above world", env: map[string]string{"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "h"},
			err: "4 processes on this node but only 2"},
		{name: "torchrun no master", env: map[string]string{"RANK": "0", "WORLD_SIZE": "2"}, err: "MASTER_ADDR is not set"},
		{name: "torchrun bad port", env: map[string]string{"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "70000"},
			err: `MASTER_PORT="70000" is not a port`},
		{name: "openmpi", env: map[string]string{"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4",
			"OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_ADDR": "head", "MASTER_PORT": "5000",
			"SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
			want: Env{Rank: 2, WorldSize: 4, LocalRank: 0, LocalWorldSize: 2, Addr: "head:5000", Launcher: "openmpi"}},
		{name: "openmpi without master", env: map[string]string{"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"},
			err: "openmpi environment (rank 0 of 2): MASTER_ADDR is not set and not every rank is on this node"},
		{name: "openmpi two nodes without master", env: map[string]string{"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4",
			"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "PMIX_NAMESPACE": "7"}, err: "mpirun -x MASTER_ADDR=host"},
		{name: "openmpi one node", env: map[string]string{"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
			"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "PMIX_NAMESPACE": "prterun-vm-1234@1"},
			want: Env{Rank: 1, WorldSize: 2, LocalRank: 1, LocalWorldSize: 2, Addr: "127.0.0.1:29559", Launcher: "openmpi"}},
		{name: "openmpi one node, master port", env: map[string]string{"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2",
			"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "PMIX_NAMESPACE": "prterun-vm-1234@1", "MASTER_PORT": "6000"},
			want: Env{Rank: 0, WorldSize: 2, LocalWorldSize: 2, Addr: "127.0.0.1:6000", Launcher: "openmpi"}},
		{name: "openmpi one node, no namespace", env: map[string]string{"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2",
			"OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
			want: Env{Rank: 0, WorldSize: 2, LocalWorldSize: 2, Addr: "127.0.0.1:29500", Launcher: "openmpi"}},
		{name: "slurm nodelist", env: map[string]string{"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
			"SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"},
			want: Env{Rank: 5, WorldSize: 8, LocalRank: 1, LocalWorldSize: 4, Addr: "gpu07:29956", Launcher: "slurm"}},
		{name: "slurm step nodelist and master port", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "2",
			"SLURM_NTASKS_PER_NODE": "1", "SLURM_STEP_NODELIST": "a1,b2", "SLURM_JOB_NODELIST": "z[1-9]", "MASTER_PORT": "7000"},
			want: Env{Rank: 0, WorldSize: 2, LocalWorldSize: 1, Addr: "a1:7000", Launcher: "slurm"}},
		{name: "slurm master addr wins", env: map[string]string{"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "MASTER_ADDR": "m",
			"SLURM_JOB_NODELIST": "x1"},
			want: Env{Rank: 1, WorldSize: 2, Addr: "m:29500", Launcher: "slurm"}},
		{name: "slurm no ntasks", env: map[string]string{"SLURM_PROCID": "0"}, err: "SLURM_NTASKS not set"},
		{name: "slurm bad nodelist", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[3-1]"},
			err: "SLURM_JOB_NODELIST: bad range"},
		{name: "slurm no nodelist", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, err: "no rendezvous host"},
		{name: "jobset", env: map[string]string{"JOB_COMPLETION_INDEX": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "train-workers-0-0.train", "MASTER_PORT": "29500"},
			want: Env{Rank: 3, WorldSize: 4, LocalWorldSize: 1, Addr: "train-workers-0-0.train:29500", Launcher: "jobset"}},
		{name: "jobset no world size", env: map[string]string{"JOB_COMPLETION_INDEX": "0", "MASTER_ADDR": "h"}, err: "jobset environment: WORLD_SIZE not set"},
		{name: "plain indexed job is single", env: map[string]string{"JOB_COMPLETION_INDEX": "2"}, want: Single},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromEnv(func(k string) string { return tc.env[k] })
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q (got %+v)", err, tc.err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestFromLauncherEnv reads the variables that real launchers set on this machine
// (testdata/launchers: `env` inside each rank of a 2-process launch, filtered to the
// launchers' names; see the README's launcher section for the commands).
func TestFromLauncherEnv(t *testing.T) {
	for _, tc := range []struct {
		file string
		want Env
	}{
		// mpirun --allow-run-as-root --oversubscribe -np 2 (Open MPI 4.1.4, Debian 12): no MASTER_ADDR.
		{"openmpi-4.1.4-np2.rank0.env", Env{Rank: 0, WorldSize: 2, LocalRank: 0, LocalWorldSize: 2, Addr: "127.0.0.1:30396", Launcher: "openmpi"}},
		{"openmpi-4.1.4-np2.rank1.env", Env{Rank: 1, WorldSize: 2, LocalRank: 1, LocalWorldSize: 2, Addr: "127.0.0.1:30396", Launcher: "openmpi"}},
		// torchrun --no_python --nproc_per_node 2 (PyTorch 1.13.1, Debian 12): static rendezvous, agent store on 29500.
		{"torchrun-1.13.1-nproc2.rank0.env", Env{Rank: 0, WorldSize: 2, LocalRank: 0, LocalWorldSize: 2, Addr: "127.0.0.1:29501", Launcher: "torchrun"}},
		{"torchrun-1.13.1-nproc2.rank1.env", Env{Rank: 1, WorldSize: 2, LocalRank: 1, LocalWorldSize: 2, Addr: "127.0.0.1:29501", Launcher: "torchrun"}},
		// torchrun --standalone (c10d rendezvous on localhost:29400): MASTER_PORT is a free port for the workers.
		{"torchrun-1.13.1-standalone-nproc2.rank0.env", Env{Rank: 0, WorldSize: 2, LocalRank: 0, LocalWorldSize: 2, Addr: "localhost:36859", Launcher: "torchrun"}},
		{"torchrun-1.13.1-standalone-nproc2.rank1.env", Env{Rank: 1, WorldSize: 2, LocalRank: 1, LocalWorldSize: 2, Addr: "localhost:36859", Launcher: "torchrun"}},
		// srun -n 2 (Slurm 22.05.8, bench/launch/slurm-local.sh): job 4 on node "vm".
		{"slurm-22.05.8-srun-n2.rank0.env", Env{Rank: 0, WorldSize: 2, LocalRank: 0, LocalWorldSize: 2, Addr: "vm:29504", Launcher: "slurm"}},
		{"slurm-22.05.8-srun-n2.rank1.env", Env{Rank: 1, WorldSize: 2, LocalRank: 1, LocalWorldSize: 2, Addr: "vm:29504", Launcher: "slurm"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			env := readEnvFile(t, filepath.Join("testdata", "launchers", tc.file))
			got, err := FromEnv(func(k string) string { return env[k] })
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// readEnvFile reads NAME=value lines.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			t.Fatalf("%s: %q is not NAME=value", path, sc.Text())
		}
		env[k] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return env
}

func TestExpandHostlist(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  bool
	}{
		{in: "node1", want: []string{"node1"}},
		{in: "gpu[01-03,07],login1", want: []string{"gpu01", "gpu02", "gpu03", "gpu07", "login1"}},
		{in: "a[8-10]-ib", want: []string{"a8-ib", "a9-ib", "a10-ib"}},
		{in: "r[009-010]", want: []string{"r009", "r010"}},
		{in: "x[1,3],y[2]", want: []string{"x1", "x3", "y2"}},
		{in: "", err: true},
		{in: "n[1-", err: true},
		{in: "n[a-b]", err: true},
		{in: "n1,,n2", err: true},
		{in: "n]1", err: true},
	} {
		got, err := ExpandHostlist(tc.in)
		if tc.err {
			if err == nil {
				t.Errorf("ExpandHostlist(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ExpandHostlist(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// TestParseTimeout: --dist-timeout takes a positive Go duration; "" is the default.
func TestParseTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", DefaultTimeout, true}, {"90s", 90 * time.Second, true}, {"1h30m", 90 * time.Minute, true},
		{"0s", 0, false}, {"-3m", 0, false}, {"10", 0, false}, {"soon", 0, false},
	} {
		got, err := ParseTimeout(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseTimeout(%q) = %v, %v", tc.in, got, err)
		}
		if err != nil && !strings.Contains(err.Error(), "--dist-timeout") {
			t.Errorf("ParseTimeout(%q): error %q does not name the flag", tc.in, err)
		}
	}
}
