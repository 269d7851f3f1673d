package checkpoint_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/metrics"
	"github.com/saferlhf/saferlhf/train/optim"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// tinyTrain is a complete miniature trainer built from optim, metrics and
// checkpoint: linear regression on a fixed pool of examples, batches drawn by
// a host PCG (its state is the data position), AdamW with weight decay,
// clipping, accumulation 2 and a cosine schedule, metrics every step and a
// checkpoint every 2 steps. It resumes from the latest checkpoint in dir.
func tinyTrain(dir string, total int, onStep func(step int)) error {
	be, err := backend.New("")
	if err != nil {
		return err
	}
	const nIn, pool, batch = 4, 64, 8
	xs := make([]float32, pool*nIn)
	ys := make([]float32, pool)
	for i := range pool {
		for j := range nIn {
			xs[i*nIn+j] = float32((i*7+j*3)%11) - 5
			ys[i] += xs[i*nIn+j] * float32(j+1)
		}
		ys[i] += 3
	}
	ctx := context.New()
	ctx.InAbsPath("/model/lin").VariableWithValue("weight", tensors.FromFlatDataAndDimensions([]float32{0.1, -0.2, 0.3, 0}, nIn, 1))
	ctx.InAbsPath("/model/lin").VariableWithValue("bias", []float32{0})
	hfName := map[string]string{"/model/lin/weight": "lin.weight", "/model/lin/bias": "lin.bias"}

	opt, err := optim.NewAdamW(optim.AdamWConfig{WeightDecay: 0.1, Accumulation: 2})
	if err != nil {
		return err
	}
	sched, err := optim.NewSchedule(optim.Cosine, 0.05, optim.WarmupSteps(0.2, total), total)
	if err != nil {
		return err
	}
	mgr, err := checkpoint.NewManager(filepath.Join(dir, "checkpoints"), 2)
	if err != nil {
		return err
	}
	mgr.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	pcg := rand.NewPCG(1, 2)
	rng := rand.New(pcg)
	start := 0
	var mw *metrics.Writer
	metricsPath := filepath.Join(dir, "metrics.jsonl")
	if l, err := mgr.Latest(); err == nil {
		ws, err := l.WeightsMap()
		if err != nil {
			return err
		}
		for path, hf := range hfName {
			scope, name := path[:strings.LastIndex(path, "/")], path[strings.LastIndex(path, "/")+1:]
			a := ws[hf]
			if err := ctx.GetVariableByScopeAndName(scope, name).SetValue(tensors.FromFlatDataAndDimensions(a.Data, a.Shape...)); err != nil {
				return err
			}
		}
		if err := checkpoint.RestoreContext(ctx, l.TrainState); err != nil {
			return err
		}
		var rs []byte
		if err := json.Unmarshal(l.State.RNG, &rs); err != nil {
			return err
		}
		if err := pcg.UnmarshalBinary(rs); err != nil {
			return err
		}
		start = l.State.Step
		mw, err = metrics.Resume(metricsPath, start)
		l.Close()
		if err != nil {
			return err
		}
	} else if errors.Is(err, checkpoint.ErrNoCheckpoint) {
		if mw, err = metrics.Create(metricsPath); err != nil {
			return err
		}
	} else {
		return err
	}
	defer mw.Close()

	var vars []*context.Variable
	accum, err := context.NewExec(be, ctx, func(ctx *context.Context, x, y *graph.Node) *graph.Node {
		g := x.Graph()
		w := ctx.GetVariableByScopeAndName("/model/lin", "weight").ValueGraph(g)
		b := ctx.GetVariableByScopeAndName("/model/lin", "bias").ValueGraph(g)
		pred := graph.Add(graph.Reshape(graph.Dot(x, w), batch), b)
		loss := graph.ReduceAllMean(graph.Square(graph.Sub(pred, y)))
		vars = optim.TrainableVariables(ctx, g, "/model")
		opt.Accumulate(ctx, vars, optim.Gradients(loss, vars))
		return loss
	})
	if err != nil {
		return err
	}
	apply, err := context.NewExec(be, ctx, func(ctx *context.Context, lr *graph.Node) []*graph.Node {
		norm, step := opt.ApplyAccumulated(ctx, lr, vars)
		return []*graph.Node{norm, step}
	})
	if err != nil {
		return err
	}
	for step := start; step < total; step++ {
		var loss float64
		for range 2 { // micro-batches
			x := make([]float32, batch*nIn)
			y := make([]float32, batch)
			for i := range batch {
				k := rng.IntN(pool)
				copy(x[i*nIn:], xs[k*nIn:(k+1)*nIn])
				y[i] = ys[k]
			}
			out, err := accum.Exec(tensors.FromFlatDataAndDimensions(x, batch, nIn), y)
			if err != nil {
				return err
			}
			loss += float64(out[0].Value().(float32)) / 2
		}
		lr := sched.LR(step)
		out, err := apply.Exec(float32(lr))
		if err != nil {
			return err
		}
		vals := map[string]float64{"loss": loss, "grad_norm": float64(out[0].Value().(float32)), "lr": lr}
		if err := checkpoint.CheckFinite(step+1, vals); err != nil {
			return err
		}
		if err := mw.Write(step+1, vals); err != nil {
			return err
		}
		onStep(step + 1)
		if (step+1)%2 == 0 || step+1 == total {
			rs, _ := pcg.MarshalBinary()
			rj, _ := json.Marshal(rs)
			var weights []safetensors.Tensor
			for path, hf := range hfName {
				scope, name := path[:strings.LastIndex(path, "/")], path[strings.LastIndex(path, "/")+1:]
				t := ctx.GetVariableByScopeAndName(scope, name).MustValue()
				weights = append(weights, safetensors.Tensor{Name: hf, Shape: t.Shape().Dimensions, F32: flat(t)})
			}
			ts, err := checkpoint.ContextTensors(ctx, func(v *context.Variable) bool { return !strings.HasPrefix(v.Scope(), "/model") })
			if err != nil {
				return err
			}
			if _, err := mgr.Save(&checkpoint.Checkpoint{
				State:   checkpoint.State{Step: step + 1, RNG: rj, Metrics: vals},
				Weights: weights, TrainState: ts, TrainStateMeta: checkpoint.TrainableMetadata(ctx, ts),
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

func flat(t *tensors.Tensor) []float32 {
	var out []float32
	t.ConstFlatData(func(f any) { out = append(out, f.([]float32)...) })
	return out
}

// TestResumeChild is the child process of TestResumeAfterSIGKILL.
func TestResumeChild(t *testing.T) {
	dir := os.Getenv("RESUME_CHILD_DIR")
	if dir == "" {
		t.Skip("child process of TestResumeAfterSIGKILL")
	}
	err := tinyTrain(dir, 12, func(step int) { fmt.Printf("STEP %d\n", step) })
	if err != nil {
		t.Fatal(err)
	}
}

// TestResumeAfterSIGKILL kills a training process mid-run and checks that the
// resumed run ends with metrics.jsonl and weights bit-identical to an
// uninterrupted run's.
func TestResumeAfterSIGKILL(t *testing.T) {
	const total = 12
	ref := t.TempDir()
	if err := tinyTrain(ref, total, func(int) {}); err != nil {
		t.Fatal(err)
	}
	for _, killAt := range []int{3, 8} {
		t.Run(fmt.Sprint("kill-after-step-", killAt), func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestResumeChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "RESUME_CHILD_DIR="+dir)
			out, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if sc.Text() == fmt.Sprint("STEP ", killAt) {
					break
				}
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child was not killed mid-run: %v", cmd.ProcessState)
			}
			if err := tinyTrain(dir, total, func(int) {}); err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(filepath.Join(ref, "metrics.jsonl"))
			got, _ := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
			if !bytes.Equal(want, got) || len(want) == 0 {
				t.Fatalf("metrics differ:\n%s\n---\n%s", want, got)
			}
			for _, d := range []string{ref, dir} {
				b, err := os.ReadFile(filepath.Join(d, "checkpoints", fmt.Sprintf("step-%08d", total), "model.safetensors"))
				if err != nil {
					t.Fatal(err)
				}
				if d == ref {
					want = b
				} else if !bytes.Equal(b, want) {
					t.Fatal("final weights differ")
				}
			}
		})
	}
}
