package dist

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"strconv"
	"strings"
)

// Env is this process's place in a distributed run, read from the variables
// its launcher sets (see FromEnv).
type Env struct {
	// Rank is this process's index in [0, WorldSize); rank 0 hosts the rendezvous
	// and writes checkpoints and metrics.
	Rank int
	// WorldSize is the number of processes (one per GPU).
	WorldSize int
	// LocalRank is the index of this process on its node (the GPU it drives);
	// LocalWorldSize the number of processes on the node (0 when the launcher does not say).
	LocalRank, LocalWorldSize int
	// Addr is the rendezvous address "host:port" (rank 0 listens there); empty when WorldSize is 1.
	Addr string
	// Launcher names where the values came from: "torchrun", "openmpi", "slurm", "jobset" or "single".
	Launcher string
}

// Single is the environment of a run without a launcher: rank 0 of 1.
var Single = Env{WorldSize: 1, LocalWorldSize: 1, Launcher: "single"}

// IsDistributed reports whether more than one process takes part.
func (e Env) IsDistributed() bool { return e.WorldSize > 1 }

// String describes the environment in one line, e.g. "rank 1/4 (local 1/2) via torchrun, rendezvous 10.0.0.1:29500".
func (e Env) String() string {
	s := fmt.Sprintf("rank %d/%d (local %d/%d) via %s", e.Rank, e.WorldSize, e.LocalRank, e.LocalWorldSize, e.Launcher)
	if e.Addr != "" {
		s += ", rendezvous " + e.Addr
	}
	return s
}

// DefaultPort is the rendezvous port when the launcher names a host but no port
// (torchrun's default, 29500); under Slurm without MASTER_PORT the port is
// DefaultPort + SLURM_JOB_ID mod 1000, so two jobs sharing a node do not collide.
const DefaultPort = 29500

// PortEnvVar, when set, chooses the rendezvous port whatever the launcher says.
// Under torchrun's static rendezvous (TORCHELASTIC_USE_AGENT_STORE=True, whose
// store holds MASTER_PORT) the default is MASTER_PORT+1.
const PortEnvVar = "SAFERLHF_DIST_PORT"

// FromEnv reads the process's rank, world size, local rank and rendezvous
// address from the environment (getenv; os.Getenv when nil). The first launcher
// whose variables are present wins, most specific first (a JobSet pod's
// JOB_COMPLETION_INDEX counts only with MASTER_ADDR and without torchrun's RANK):
//
//   - torchrun (also inside a JobSet or under srun): RANK, WORLD_SIZE, LOCAL_RANK,
//     LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
//   - OpenMPI's mpirun: OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE,
//     OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_SIZE; mpirun names no
//     rendezvous, so across nodes MASTER_ADDR (and MASTER_PORT) must be passed
//     through (mpirun -x MASTER_ADDR=node1); when every rank is on one node
//     (local size = world size) the host defaults to 127.0.0.1 and the port to
//     DefaultPort + a hash of PMIX_NAMESPACE (the job's name, the same on every
//     rank) mod 1000, so two jobs sharing a node do not collide;
//   - Slurm's srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE or
//     SLURM_STEP_TASKS_PER_NODE; the rendezvous host is MASTER_ADDR or else the
//     first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST;
//   - a Kubernetes JobSet (Indexed Job, one process per pod): JOB_COMPLETION_INDEX as
//     the rank, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the pod spec.
//
// With none of them the run is Single. Inconsistent values (a rank outside the
// world, half of torchrun's variables, a multi-process run without a rendezvous
// host, a malformed number or port) are errors naming the variable.
func FromEnv(getenv func(string) string) (Env, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	r := envReader{get: getenv}
	var e Env
	switch {
	case r.has("JOB_COMPLETION_INDEX") && r.has("MASTER_ADDR") && !r.has("RANK"):
		e = Env{Launcher: "jobset", Rank: r.int("JOB_COMPLETION_INDEX", -1), WorldSize: r.int("WORLD_SIZE", -1),
			LocalRank: 0, LocalWorldSize: 1}
		r.require("WORLD_SIZE")
	case r.has("RANK") || r.has("WORLD_SIZE") || r.has("LOCAL_RANK"):
		e = Env{Launcher: "torchrun",
			Rank: r.int("RANK", -1), WorldSize: r.int("WORLD_SIZE", -1),
			LocalRank: r.int("LOCAL_RANK", 0), LocalWorldSize: r.int("LOCAL_WORLD_SIZE", 0)}
		r.require("RANK", "WORLD_SIZE")
	case r.has("OMPI_COMM_WORLD_RANK") || r.has("OMPI_COMM_WORLD_SIZE"):
		e = Env{Launcher: "openmpi",
			Rank: r.int("OMPI_COMM_WORLD_RANK", -1), WorldSize: r.int("OMPI_COMM_WORLD_SIZE", -1),
			LocalRank: r.int("OMPI_COMM_WORLD_LOCAL_RANK", 0), LocalWorldSize: r.int("OMPI_COMM_WORLD_LOCAL_SIZE", 0)}
		r.require("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")
	case r.has("SLURM_PROCID"):
		e = Env{Launcher: "slurm",
			Rank: r.int("SLURM_PROCID", -1), WorldSize: r.int("SLURM_NTASKS", -1),
			LocalRank: r.int("SLURM_LOCALID", 0), LocalWorldSize: slurmTasksPerNode(&r)}
		r.require("SLURM_PROCID", "SLURM_NTASKS")
	default:
		return Single, nil
	}
	if r.err != nil {
		return Env{}, fmt.Errorf("dist: %s environment: %w", e.Launcher, r.err)
	}
	if e.WorldSize == 1 && e.LocalWorldSize == 0 {
		e.LocalWorldSize = 1
	}
	switch {
	case e.WorldSize < 1:
		return Env{}, fmt.Errorf("dist: %s environment: world size %d must be >= 1", e.Launcher, e.WorldSize)
	case e.Rank < 0 || e.Rank >= e.WorldSize:
		return Env{}, fmt.Errorf("dist: %s environment: rank %d is outside the world of %d processes", e.Launcher, e.Rank, e.WorldSize)
	case e.LocalRank < 0 || (e.LocalWorldSize > 0 && e.LocalRank >= e.LocalWorldSize):
		return Env{}, fmt.Errorf("dist: %s environment: local rank %d is outside the %d processes of this node", e.Launcher, e.LocalRank, e.LocalWorldSize)
	case e.LocalWorldSize < 0 || e.LocalWorldSize > e.WorldSize:
		return Env{}, fmt.Errorf("dist: %s environment: %d processes on this node but only %d in the world", e.Launcher, e.LocalWorldSize, e.WorldSize)
	}
	if e.WorldSize == 1 {
		return e, nil
	}
	addr, err := rendezvous(&r, e.Launcher)
	if err != nil {
		return Env{}, fmt.Errorf("dist: %s environment (rank %d of %d): %w", e.Launcher, e.Rank, e.WorldSize, err)
	}
	e.Addr = addr
	return e, nil
}

// rendezvous returns host:port from MASTER_ADDR/MASTER_PORT, falling back to the
// first Slurm node and a port derived from the job id under Slurm, and to this
// host and a port derived from the job's PMIx namespace under a one-node mpirun.
func rendezvous(r *envReader, launcher string) (string, error) {
	host := r.get("MASTER_ADDR")
	port := DefaultPort
	if launcher == "openmpi" && host == "" {
		if world, local := r.get("OMPI_COMM_WORLD_SIZE"), r.get("OMPI_COMM_WORLD_LOCAL_SIZE"); local != world {
			return "", fmt.Errorf("MASTER_ADDR is not set and not every rank is on this node (OMPI_COMM_WORLD_LOCAL_SIZE=%q, OMPI_COMM_WORLD_SIZE=%q): "+
				"pass rank 0's host through (mpirun -x MASTER_ADDR=host -x MASTER_PORT=port)", local, world)
		}
		host = "127.0.0.1"
		if ns := r.get("PMIX_NAMESPACE"); ns != "" {
			h := fnv.New32a()
			h.Write([]byte(ns))
			port = DefaultPort + int(h.Sum32()%1000)
		}
	}
	if launcher == "slurm" {
		if host == "" {
			list := r.get("SLURM_STEP_NODELIST")
			if list == "" {
				list = r.get("SLURM_JOB_NODELIST")
			}
			if list == "" {
				return "", errors.New("no rendezvous host: set MASTER_ADDR or run under srun (SLURM_JOB_NODELIST is empty)")
			}
			hosts, err := ExpandHostlist(list)
			if err != nil {
				return "", fmt.Errorf("SLURM_JOB_NODELIST: %w", err)
			}
			host = hosts[0]
		}
		if id := r.get("SLURM_JOB_ID"); id != "" {
			if n, err := strconv.Atoi(id); err == nil {
				port = DefaultPort + n%1000
			}
		}
	}
	if host == "" {
		return "", errors.New("MASTER_ADDR is not set (the host of rank 0, where every rank meets)")
	}
	if p := r.get("MASTER_PORT"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("MASTER_PORT=%q is not a port number (1-65535)", p)
		}
		port = n
		// torchrun's static rendezvous (--master_addr/--master_port) keeps its own
		// store listening on MASTER_PORT and expects workers to join it as clients;
		// we meet on the next port instead.
		if launcher == "torchrun" && strings.EqualFold(r.get("TORCHELASTIC_USE_AGENT_STORE"), "true") && n < 65535 {
			port = n + 1
		}
	}
	if p := r.get(PortEnvVar); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("%s=%q is not a port number (1-65535)", PortEnvVar, p)
		}
		port = n
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// slurmTasksPerNode reads SLURM_NTASKS_PER_NODE or the first count of
// SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE ("4(x2),2" → 4).
func slurmTasksPerNode(r *envReader) int {
	if r.has("SLURM_NTASKS_PER_NODE") {
		return r.int("SLURM_NTASKS_PER_NODE", 0)
	}
	for _, k := range []string{"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"} {
		v := r.get(k)
		if v == "" {
			continue
		}
		first, _, _ := strings.Cut(v, ",")
		first, _, _ = strings.Cut(first, "(")
		n, err := strconv.Atoi(first)
		if err != nil || n < 1 {
			r.fail(fmt.Errorf("%s=%q is not a Slurm task count", k, v))
			return 0
		}
		return n
	}
	return 0
}

// ExpandHostlist expands a Slurm hostlist such as "gpu[01-03,07],login1" into
// its host names in order.
func ExpandHostlist(list string) ([]string, error) {
	var out []string
	for len(list) > 0 {
		// The next item ends at a comma outside brackets.
		depth, end := 0, len(list)
		for i, c := range list {
			if c == '[' {
				depth++
			} else if c == ']' {
				depth--
			} else if c == ',' && depth == 0 {
				end = i
				break
			}
		}
		item := list[:end]
		list = strings.TrimPrefix(list[end:], ",")
		if item == "" {
			return nil, fmt.Errorf("empty host in hostlist")
		}
		open := strings.IndexByte(item, '[')
		if open < 0 {
			if strings.ContainsRune(item, ']') {
				return nil, fmt.Errorf("unbalanced ']' in %q", item)
			}
			out = append(out, item)
			continue
		}
		close := strings.IndexByte(item, ']')
		if close < open || close != len(item)-1 && strings.ContainsAny(item[close+1:], "[]") {
			return nil, fmt.Errorf("unsupported hostlist item %q", item)
		}
		prefix, suffix := item[:open], item[close+1:]
		for _, rg := range strings.Split(item[open+1:close], ",") {
			lo, hi, isRange := strings.Cut(rg, "-")
			if !isRange {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil || b < a || lo == "" {
				return nil, fmt.Errorf("bad range %q in %q", rg, item)
			}
			if b-a > 1<<16 {
				return nil, fmt.Errorf("range %q in %q is too long", rg, item)
			}
			for n := a; n <= b; n++ {
				out = append(out, fmt.Sprintf("%s%0*d%s", prefix, len(lo), n, suffix))
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("empty hostlist")
	}
	return out, nil
}

// envReader reads integers from the environment, keeping the first error.
type envReader struct {
	get func(string) string
	err error
}

func (r *envReader) has(k string) bool { return r.get(k) != "" }

func (r *envReader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *envReader) int(k string, def int) int {
	v := strings.TrimSpace(r.get(k))
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.fail(fmt.Errorf("%s=%q is not an integer", k, v))
		return def
	}
	return n
}

func (r *envReader) require(keys ...string) {
	var missing []string
	for _, k := range keys {
		if !r.has(k) {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		r.fail(fmt.Errorf("%s not set (the launcher set only some of its variables)", strings.Join(missing, " and ")))
	}
}

// RequireSingle returns an error naming command when the process was started
// as one of several ranks: for commands that do not run data-parallel yet, so
// that N copies never race on one output directory.
func RequireSingle(command string) error {
	env, err := FromEnv(nil)
	if err != nil {
		return err
	}
	if env.IsDistributed() {
		return fmt.Errorf("%s does not run data-parallel yet (started as %s): run it as one process", command, env)
	}
	return nil
}
