package model

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/optim"
)

// Benchmark configs: stories260K's shape and llama2.c's stories15M shape.
func benchConfigs() []struct {
	name string
	cfg  *Config
	b, t int
} {
	s260 := &Config{HiddenSize: 64, IntermediateSize: 172, NumLayers: 5, NumHeads: 8, NumKVHeads: 4, VocabSize: 512,
		MaxPositions: 512, RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true, BOS: 1, EOS: 2}
	s15 := &Config{HiddenSize: 288, IntermediateSize: 768, NumLayers: 6, NumHeads: 6, NumKVHeads: 6, VocabSize: 32000,
		MaxPositions: 256, RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true, BOS: 1, EOS: 2}
	return []struct {
		name string
		cfg  *Config
		b, t int
	}{{"stories260K", s260, 16, 256}, {"15M", s15, 4, 256}}
}

func benchBatch(cfg *Config, b, t int) (*tensors.Tensor, *tensors.Tensor) {
	ids := make([]int32, b*t)
	mask := make([]float32, b*t)
	for i := range ids {
		ids[i] = int32((i*7919 + 13) % cfg.VocabSize)
		mask[i] = 1
	}
	for r := 0; r < b; r++ { // some left padding
		for i := 0; i < r%4; i++ {
			mask[r*t+i] = 0
		}
	}
	return tensors.FromFlatDataAndDimensions(ids, b, t), tensors.FromFlatDataAndDimensions(mask, b, t)
}

// sftLoss is the mean negative log-likelihood of the real next tokens.
func sftLoss(ctx *context.Context, cfg *Config, ids, mask *G.Node) *G.Node {
	lp := TokenLogProbs(ctx, cfg, ids, mask)
	m := dropLast(mask)
	return G.Neg(G.Div(G.ReduceAllSum(G.Mul(lp, m)), G.ReduceAllSum(m)))
}

// cpuSeconds is the process's user+system CPU time: with the 2 cores
// shared, CPU time per step is steadier than wall time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func maxRSSMiB() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Maxrss) / 1024
}

// BenchmarkModel measures forward (loss), forward+backward (loss and all
// weight gradients) and a full AdamW step on the pure-Go backend.
func BenchmarkModel(b *testing.B) {
	if err := EnableFastGradients(); err != nil {
		b.Fatal(err)
	}
	be := getBackend(b)
	for _, bc := range benchConfigs() {
		cfg := bc.cfg
		w := RandomWeights(cfg, 1)
		ids, mask := benchBatch(cfg, bc.b, bc.t)
		tokens := float64(bc.b * bc.t)
		modes := map[string]func(ctx *context.Context, ids, mask *G.Node) []*G.Node{
			"fwd": func(ctx *context.Context, ids, mask *G.Node) []*G.Node {
				return []*G.Node{sftLoss(ctx, cfg, ids, mask)}
			},
			"fwdbwd": func(ctx *context.Context, ids, mask *G.Node) []*G.Node {
				loss := sftLoss(ctx, cfg, ids, mask)
				return append([]*G.Node{loss}, ctx.BuildTrainableVariablesGradientsGraph(loss)...)
			},
			"adamw": func(ctx *context.Context, ids, mask *G.Node) []*G.Node {
				opt, err := optim.NewAdamW(optim.AdamWConfig{WeightDecay: 0.01})
				if err != nil {
					panic(err)
				}
				loss := sftLoss(ctx, cfg, ids, mask)
				vars := optim.TrainableVariables(ctx, ids.Graph(), ctx.Scope())
				gn, _ := opt.Update(ctx, G.Const(ids.Graph(), float32(1e-4)), loss, vars)
				return []*G.Node{loss, gn}
			},
		}
		modes["fwdbwd-stockgrad"] = modes["fwdbwd"]
		for _, mode := range []string{"fwd", "fwdbwd", "adamw", "fwdbwd-stockgrad"} {
			if mode == "fwdbwd-stockgrad" && bc.name != "stories260K" {
				continue
			}
			b.Run(fmt.Sprintf("%s/B%dxT%d/%s", bc.name, bc.b, bc.t, mode), func(b *testing.B) {
				ctx := context.New().In("m")
				if err := SetWeights(ctx, cfg, w); err != nil {
					b.Fatal(err)
				}
				e, err := context.NewExec(be, ctx.Checked(false), modes[mode])
				if err != nil {
					b.Fatal(err)
				}
				if mode == "fwdbwd-stockgrad" {
					// GoMLX's own DotGeneral gradient, for comparison: the
					// graph is built (on the first Exec) while it is installed.
					G.VJPRegistration[G.NodeTypeDotGeneral] = stockDotVJP
					defer func() { G.VJPRegistration[G.NodeTypeDotGeneral] = dotGeneralVJP }()
				}
				run := func() {
					out, err := e.Exec(ids, mask)
					if err != nil {
						b.Fatal(err)
					}
					for _, o := range out {
						o.FinalizeAll()
					}
				}
				run() // compile
				b.ResetTimer()
				start, cpu0 := time.Now(), cpuSeconds()
				for i := 0; i < b.N; i++ {
					run()
				}
				sec := time.Since(start).Seconds() / float64(b.N)
				b.ReportMetric((cpuSeconds()-cpu0)/float64(b.N)*1000, "cpu-ms/step")
				b.ReportMetric(sec*1000, "ms/step")
				b.ReportMetric(tokens/sec, "tokens/s")
				b.ReportMetric(maxRSSMiB(), "maxRSS-MiB")
			})
		}
	}
}

// BenchmarkGenerate measures KV-cache sampling throughput (new tokens per
// second over the batch), prompt 16 tokens, 128 new tokens, no early stop.
func BenchmarkGenerate(b *testing.B) {
	be := getBackend(b)
	for _, bc := range benchConfigs() {
		w := RandomWeights(bc.cfg, 1)
		gen, err := NewGeneratorFromWeights(be, bc.cfg, w)
		if err != nil {
			b.Fatal(err)
		}
		for _, batch := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/B%d", bc.name, batch), func(b *testing.B) {
				prompts := make([][]int32, batch)
				for r := range prompts {
					prompts[r] = make([]int32, 16)
					for i := range prompts[r] {
						prompts[r][i] = int32((r*31 + i*7 + 1) % bc.cfg.VocabSize)
					}
				}
				opts := GenerateOptions{MaxNewTokens: 128, Temperature: 1, TopP: 0.9, EOS: -1, Pad: 0, Unk: -1}
				if _, err := gen.Generate(prompts, opts); err != nil { // compile
					b.Fatal(err)
				}
				b.ResetTimer()
				start, cpu0 := time.Now(), cpuSeconds()
				for i := 0; i < b.N; i++ {
					opts.Seed = uint64(i)
					if _, err := gen.Generate(prompts, opts); err != nil {
						b.Fatal(err)
					}
				}
				sec := time.Since(start).Seconds() / float64(b.N)
				b.ReportMetric(float64(batch*128)/sec, "tokens/s")
				b.ReportMetric(float64(batch*128)/((cpuSeconds()-cpu0)/float64(b.N)), "tokens/cpu-s")
				b.ReportMetric(maxRSSMiB(), "maxRSS-MiB")
			})
		}
	}
}

// BenchmarkCompileDepth measures, per model depth, the graph of one LM forward (TokenLogProbs)
// and of its forward+backward (gradients of every weight) built whole, against model.Layerwise's
// programs (embedding, one layer, head; and for the backward the loss and layer-backward
// programs): node counts and the first call's time (graph building plus the backend's compile,
// plus one tiny run), on the pure-Go backend — a proxy for XLA's compile time, which follows
// the node count. Run: go test -tags noxla -run - -bench CompileDepth ./train/model/
func BenchmarkCompileDepth(b *testing.B) {
	be := getBackend(b)
	for _, layers := range []int{4, 16, 32} {
		cfg := &Config{HiddenSize: 64, IntermediateSize: 172, NumLayers: layers, NumHeads: 8, NumKVHeads: 4, VocabSize: 512,
			MaxPositions: 64, RMSNormEps: 1e-5, RopeTheta: 10000, BOS: 1, EOS: 2}
		b.Run(fmt.Sprintf("layers=%d", layers), func(b *testing.B) {
			ctx := context.New()
			if err := SetWeights(ctx, cfg, RandomWeights(cfg, 1)); err != nil {
				b.Fatal(err)
			}
			SetTrainable(ctx, true)
			ids, mask := benchBatch(cfg, 1, 8)
			var wholeF, wholeB, lwF, lwB int
			var tWholeF, tWholeB, tLwF, tLwB time.Duration
			for i := 0; i < b.N; i++ {
				for k, bwd := range []bool{false, true} {
					t0 := time.Now()
					ex, err := context.NewExec(be, ctx.Reuse(), func(ctx *context.Context, ids, mask *G.Node) []*G.Node {
						lp := TokenLogProbs(ctx, cfg, ids, mask)
						out := []*G.Node{G.ReduceAllSum(lp)}
						if bwd {
							vars := optim.TrainableVariables(ctx, ids.Graph(), "/")
							out = append(out, optim.Gradients(out[0], vars)...)
						}
						return out
					})
					if err != nil {
						b.Fatal(err)
					}
					_, g, err := ex.ExecWithGraph(ids, mask)
					if err != nil {
						b.Fatal(err)
					}
					if k == 0 {
						wholeF, tWholeF = len(g.Nodes()), time.Since(t0)
					} else {
						wholeB, tWholeB = len(g.Nodes()), time.Since(t0)
					}
				}
				lw := NewLayerwise(be)
				m := ScopeModel(ctx, cfg)
				idsH, maskH := tensors.MustCopyFlatData[int32](ids), tensors.MustCopyFlatData[float32](mask)
				t0 := time.Now()
				if _, err := lw.TokenLogProbs(m, idsH, maskH, 1, 8); err != nil {
					b.Fatal(err)
				}
				tLwF = time.Since(t0)
				tr := Train{Accum: map[string]*context.Variable{}, Scale: 1}
				acc := context.New()
				ctx.EnumerateVariables(func(v *context.Variable) {
					tr.Accum[v.Name()] = acc.Checked(false).VariableWithValue(v.Name(), tensors.FromShape(v.Shape()))
				})
				t0 = time.Now()
				if _, _, err := lw.Backward(m, tr, "sum", func(ctx *context.Context, cfg *Config, h *G.Node, in []*G.Node) (*G.Node, []*G.Node) {
					return G.ReduceAllSum(HeadTokenLogProbs(ctx, cfg, h, in[0])), nil
				}, ids, mask, ids); err != nil {
					b.Fatal(err)
				}
				tLwB = time.Since(t0)
				lwF, lwB = 0, 0
				for _, p := range lw.Programs() {
					switch strings.SplitN(p.Program, "/", 2)[0] {
					case "embed", "layer", "lm_head":
						lwF += p.Nodes
					default:
						lwB += p.Nodes
					}
				}
			}
			b.ReportMetric(float64(wholeF), "whole-fwd-nodes")
			b.ReportMetric(tWholeF.Seconds()*1e3, "whole-fwd-first-ms")
			b.ReportMetric(float64(wholeB), "whole-fwdbwd-nodes")
			b.ReportMetric(tWholeB.Seconds()*1e3, "whole-fwdbwd-first-ms")
			b.ReportMetric(float64(lwF), "layerwise-fwd-nodes")
			b.ReportMetric(tLwF.Seconds()*1e3, "layerwise-fwd-first-ms")
			b.ReportMetric(float64(lwB), "layerwise-bwd-nodes")
			b.ReportMetric(tLwB.Seconds()*1e3, "layerwise-bwd-first-ms")
		})
	}
}
