package llama

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/optim"
)

// cpuTime returns the process's user+system CPU time (all threads).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// maxRSSMiB returns the process's peak resident set size.
func maxRSSMiB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Maxrss) / 1024
}

// benchConfigs are llama2.c's stories260K and stories15M shapes.
func benchConfigs() map[string]*model.Config {
	return map[string]*model.Config{
		"stories260K": {HiddenSize: 64, IntermediateSize: 172, NumLayers: 5, NumHeads: 8, NumKVHeads: 4, VocabSize: 512,
			MaxPositions: 512, RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true, BOS: 1, EOS: 2},
		"stories15M": {HiddenSize: 288, IntermediateSize: 768, NumLayers: 6, NumHeads: 6, NumKVHeads: 6, VocabSize: 32000,
			MaxPositions: 256, RMSNormEps: 1e-5, RopeTheta: 10000, TieWordEmbeddings: true, BOS: 1, EOS: 2},
	}
}

// BenchmarkStep times one full-parameter AdamW step (forward, fused LM-head
// log-probs, mean NLL of the real next tokens, backward, clipped update; wd
// 0.01) on train/model's BenchmarkModel batches: stories260K B16×T256 and the
// stories15M shape B4×T256, left-padded rows. Metrics: seconds and CPU
// seconds per step.
func BenchmarkStep(b *testing.B) {
	skipNoEngine(b)
	for _, c := range []struct {
		name string
		bsz  int
	}{{"stories260K", 16}, {"stories15M", 4}} {
		cfg := benchConfigs()[c.name]
		bsz, tt := c.bsz, 256
		b.Run(fmt.Sprintf("%s/B%dxT%d/adamw", c.name, bsz, tt), func(b *testing.B) {
			m, err := New(cfg, model.RandomWeights(cfg, 1), 1)
			if err != nil {
				b.Fatal(err)
			}
			opt, err := NewAdamW(optim.AdamWConfig{WeightDecay: 0.01})
			if err != nil {
				b.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			ids, mask := make([]int32, bsz*tt), make([]float32, bsz*tt)
			for r := 0; r < bsz; r++ {
				pad := r * 7 % 64 // left padding as BenchmarkModel's batches
				for i := pad; i < tt; i++ {
					ids[r*tt+i] = int32(rng.IntN(cfg.VocabSize))
					mask[r*tt+i] = 1
				}
			}
			// d(mean NLL of the real next tokens)/d logp.
			dl, real := make([]float32, bsz*(tt-1)), 0
			for r := 0; r < bsz; r++ {
				for i := 0; i+1 < tt; i++ {
					if mask[r*tt+i] != 0 && mask[r*tt+i+1] != 0 {
						real++
					}
				}
			}
			for r := 0; r < bsz; r++ {
				for i := 0; i+1 < tt; i++ {
					if mask[r*tt+i] != 0 && mask[r*tt+i+1] != 0 {
						dl[r*(tt-1)+i] = -1 / float32(real)
					}
				}
			}
			g := m.NewGrads()
			step := func() {
				tp, err := m.Forward(bsz, tt, ids, mask)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := m.TokenLogProbs(tp); err != nil {
					b.Fatal(err)
				}
				dh, err := m.TokenLogProbsBackward(tp, dl, g)
				if err != nil {
					b.Fatal(err)
				}
				if err := m.Backward(tp, dh, g); err != nil {
					b.Fatal(err)
				}
				if _, err := opt.Apply(m, g, 1e-4); err != nil {
					b.Fatal(err)
				}
			}
			step() // warm-up: thread pool, scratch buffers
			b.ResetTimer()
			c0 := cpuTime()
			for i := 0; i < b.N; i++ {
				step()
			}
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/step")
			b.ReportMetric((cpuTime()-c0).Seconds()/float64(b.N), "cpu-s/step")
			b.ReportMetric(float64(engine.Threads()), "threads")
			b.ReportMetric(maxRSSMiB(), "maxRSS-MiB")
		})
	}
}

// BenchmarkGenerate times KV-cache generation with the bundled stories260K
// at batch 1 and 32: greedy, 2-token prompts, 256 new tokens per row; and
// "topp", bench/torch_model.py's workload (16-token prompts, 128 new tokens,
// temperature 1, top-p 0.9). Metrics: generated tokens (all rows) per second
// and per CPU-second.
func BenchmarkGenerate(b *testing.B) {
	skipNoEngine(b)
	cfg, w := loadStories(b)
	m, err := New(cfg, w, 1)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name            string
		prompt, newTok  int
		temperature, tp float64
	}{{"greedy", 2, 256, 0, 0}, {"topp", 16, 128, 1, 0.9}} {
		for _, bsz := range []int{1, 32} {
			b.Run(fmt.Sprintf("stories260K/batch%d/%s", bsz, c.name), func(b *testing.B) {
				prompts := make([][]int32, bsz)
				for i := range prompts {
					prompts[i] = []int32{1}
					for j := 1; j < c.prompt; j++ {
						prompts[i] = append(prompts[i], int32((i*31+j*7+1)%cfg.VocabSize))
					}
				}
				opts := model.GenerateOptions{MaxNewTokens: c.newTok, Temperature: c.temperature, TopP: c.tp, Seed: 1, EOS: -1, Unk: -1}
				c0 := cpuTime()
				for i := 0; i < b.N; i++ {
					if _, err := m.Generate(prompts, opts); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(bsz*c.newTok*b.N)/b.Elapsed().Seconds(), "tok/s")
				b.ReportMetric(float64(bsz*c.newTok*b.N)/(cpuTime()-c0).Seconds(), "tok/cpu-s")
			})
		}
	}
}

// BenchmarkGenerateContext times greedy generation of the bundled stories260K
// at batch 1 and 32 from 16-token prompts for 16, 64, 128 and 256 new tokens,
// so the share of attention (which grows with the context and reads each
// row's own KV cache) can be told from the per-token matmuls (which batch).
// Metrics as BenchmarkGenerate.
func BenchmarkGenerateContext(b *testing.B) {
	skipNoEngine(b)
	cfg, w := loadStories(b)
	m, err := New(cfg, w, 1)
	if err != nil {
		b.Fatal(err)
	}
	for _, newTok := range []int{16, 64, 128, 256} {
		for _, bsz := range []int{1, 32} {
			b.Run(fmt.Sprintf("stories260K/new%d/batch%d", newTok, bsz), func(b *testing.B) {
				benchGenerate(b, m, cfg.VocabSize, bsz, newTok, false)
			})
		}
	}
}

// BenchmarkGenerateShape times greedy generation at batch 1 and 32 on random
// weights of the stories15M shape (16-token prompts, 32 and 96 new tokens:
// the difference between the two is the cost per token without the prompt and
// the weight packing of each Generate call), where a batch-1 step streams every
// weight (60 MB) from L3 and batching amortises that. Metrics as
// BenchmarkGenerate.
func BenchmarkGenerateShape(b *testing.B) {
	skipNoEngine(b)
	cfg := benchConfigs()["stories15M"]
	var m *Model
	for _, newTok := range []int{32, 96} {
		for _, bsz := range []int{1, 32} {
			b.Run(fmt.Sprintf("stories15M/new%d/batch%d", newTok, bsz), func(b *testing.B) {
				if m == nil { // only when a sub-benchmark runs
					var err error
					if m, err = New(cfg, model.RandomWeights(cfg, 1), 1); err != nil {
						b.Fatal(err)
					}
				}
				benchGenerate(b, m, cfg.VocabSize, bsz, newTok, true)
			})
		}
	}
}

// benchGenerate times greedy generation of newTok tokens after bsz 16-token prompts and reports
// tokens per second of wall and of CPU time (and CPU seconds per call when perOp).
func benchGenerate(b *testing.B, m *Model, vocab, bsz, newTok int, perOp bool) {
	prompts := make([][]int32, bsz)
	for i := range prompts {
		prompts[i] = []int32{1}
		for j := 1; j < 16; j++ {
			prompts[i] = append(prompts[i], int32((i*31+j*7+1)%vocab))
		}
	}
	opts := model.GenerateOptions{MaxNewTokens: newTok, Seed: 1, EOS: -1, Unk: -1}
	c0 := cpuTime()
	for i := 0; i < b.N; i++ {
		if _, err := m.Generate(prompts, opts); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(bsz*newTok*b.N)/b.Elapsed().Seconds(), "tok/s")
	b.ReportMetric(float64(bsz*newTok*b.N)/(cpuTime()-c0).Seconds(), "tok/cpu-s")
	if perOp {
		b.ReportMetric((cpuTime()-c0).Seconds()/float64(b.N), "cpu-s/op")
	}
}
