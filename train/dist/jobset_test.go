package dist

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// jobSet is the part of a JobSet (jobset.x-k8s.io/v1alpha2) that places saferlhf's ranks.
type jobSet struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string
	Metadata   struct{ Name string }
	Spec       struct {
		ReplicatedJobs []struct {
			Name     string
			Replicas int
			Template struct {
				Spec struct {
					Parallelism, Completions int
					CompletionMode           string `yaml:"completionMode"`
					Template                 struct {
						Spec struct {
							Containers []struct {
								Command, Args []string
								Ports         []struct {
									ContainerPort int `yaml:"containerPort"`
								}
								Resources struct {
									Limits map[string]string
								}
							}
						}
					}
				}
			} `yaml:"template"`
		} `yaml:"replicatedJobs"`
	}
}

// TestJobSetYAML checks deploy/jobset.yaml against what FromEnv reads (no cluster here:
// the wiring is checked, not run). Every pod of the Indexed Job runs torchrun with
// --node_rank from JOB_COMPLETION_INDEX; the test gives FromEnv the variables torchrun's
// static rendezvous sets in each of its processes (as recorded in
// testdata/launchers/torchrun-1.13.1-*.env) and requires distinct ranks covering the
// world, one rendezvous at the first pod's DNS name on a port the pod spec opens, and a
// global batch that divides by the world size.
func TestJobSetYAML(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "jobset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var js jobSet
	if err := yaml.Unmarshal(raw, &js); err != nil {
		t.Fatalf("deploy/jobset.yaml: %v", err)
	}
	if js.APIVersion != "jobset.x-k8s.io/v1alpha2" || js.Kind != "JobSet" || js.Metadata.Name == "" {
		t.Fatalf("apiVersion %q, kind %q, name %q", js.APIVersion, js.Kind, js.Metadata.Name)
	}
	if len(js.Spec.ReplicatedJobs) != 1 {
		t.Fatalf("%d replicated jobs, want 1", len(js.Spec.ReplicatedJobs))
	}
	rj := js.Spec.ReplicatedJobs[0]
	job := rj.Template.Spec
	if rj.Replicas != 1 || job.CompletionMode != "Indexed" || job.Parallelism < 1 || job.Parallelism != job.Completions {
		t.Fatalf("replicas %d, completionMode %q, parallelism %d, completions %d: want one Indexed job whose pods all run at once",
			rj.Replicas, job.CompletionMode, job.Parallelism, job.Completions)
	}
	if n := len(job.Template.Spec.Containers); n != 1 {
		t.Fatalf("%d containers, want 1", n)
	}
	c := job.Template.Spec.Containers[0]
	if !slices.Equal(c.Command, []string{"torchrun"}) {
		t.Fatalf("command %q, want torchrun", c.Command)
	}
	flags := map[string]string{}
	i := 0
	for ; i < len(c.Args) && strings.HasPrefix(c.Args[i], "--"); i++ {
		k, v, _ := strings.Cut(strings.TrimPrefix(c.Args[i], "--"), "=")
		flags[k] = v
	}
	if i+1 >= len(c.Args) || c.Args[i] != "saferlhf" {
		t.Fatalf("torchrun's program is %q, want saferlhf and a command", c.Args[i:])
	}
	prog := c.Args[i+1:]
	num := func(k string) int {
		n, err := strconv.Atoi(flags[k])
		if err != nil {
			t.Fatalf("torchrun --%s=%q: %v", k, flags[k], err)
		}
		return n
	}
	if _, ok := flags["no_python"]; !ok {
		t.Error("torchrun needs --no_python to start the saferlhf binary")
	}
	nodes, perNode, port := num("nnodes"), num("nproc_per_node"), num("master_port")
	if nodes != job.Parallelism {
		t.Errorf("--nnodes=%d but %d pods", nodes, job.Parallelism)
	}
	if gpus := c.Resources.Limits["nvidia.com/gpu"]; gpus != strconv.Itoa(perNode) {
		t.Errorf("--nproc_per_node=%d but nvidia.com/gpu: %q (one process per GPU)", perNode, gpus)
	}
	if flags["node_rank"] != "$(JOB_COMPLETION_INDEX)" {
		t.Errorf("--node_rank=%q, want $(JOB_COMPLETION_INDEX) (the pod's index)", flags["node_rank"])
	}
	// JobSet names pod i of job j of replicated job r "<jobset>-<r>-<j>-<i>", under the headless service <jobset>.
	if want := fmt.Sprintf("%s-%s-0-0.%s", js.Metadata.Name, rj.Name, js.Metadata.Name); flags["master_addr"] != want {
		t.Errorf("--master_addr=%q, want the first pod %q", flags["master_addr"], want)
	}
	var ports []int
	for _, p := range c.Ports {
		ports = append(ports, p.ContainerPort)
	}
	world := nodes * perNode
	seen := map[int]bool{}
	for node := range nodes {
		for local := range perNode {
			env := map[string]string{ // torchrun's static rendezvous, per process
				"RANK": strconv.Itoa(node*perNode + local), "WORLD_SIZE": strconv.Itoa(world),
				"LOCAL_RANK": strconv.Itoa(local), "LOCAL_WORLD_SIZE": strconv.Itoa(perNode),
				"GROUP_RANK": strconv.Itoa(node), "GROUP_WORLD_SIZE": strconv.Itoa(nodes),
				"MASTER_ADDR": flags["master_addr"], "MASTER_PORT": strconv.Itoa(port),
				"TORCHELASTIC_USE_AGENT_STORE": "True", "JOB_COMPLETION_INDEX": strconv.Itoa(node),
			}
			e, err := FromEnv(func(k string) string { return env[k] })
			if err != nil {
				t.Fatalf("node %d, local rank %d: %v", node, local, err)
			}
			if e.Launcher != "torchrun" || e.WorldSize != world || seen[e.Rank] {
				t.Fatalf("node %d, local rank %d: %s", node, local, e)
			}
			seen[e.Rank] = true
			host, p, _ := strings.Cut(e.Addr, ":")
			pn, _ := strconv.Atoi(p)
			if host != flags["master_addr"] || !slices.Contains(ports, pn) || !slices.Contains(ports, port) {
				t.Fatalf("rendezvous %s (torchrun's store on %d): the pod opens ports %v", e.Addr, port, ports)
			}
		}
	}
	for _, a := range prog {
		if b, ok := strings.CutPrefix(a, "--batch-size="); ok {
			if n, err := strconv.Atoi(b); err != nil || n%world != 0 {
				t.Errorf("--batch-size=%s is global and must divide by the world size %d", b, world)
			}
		}
	}
	t.Logf("%d pods x %d processes; %s %s; rendezvous %s:%d", nodes, perNode, c.Args[i], prog[0], flags["master_addr"], port+1)
}
