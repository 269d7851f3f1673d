package llama

import (
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
// log-probs, backward, clipped update) on a B16×T256 batch, as
// train/model's BenchmarkModel does on the GoMLX backends. Metrics: seconds
// and CPU seconds per step.
func BenchmarkStep(b *testing.B) {
	skipNoEngine(b)
	for _, name := range []string{"stories260K", "stories15M"} {
		cfg := benchConfigs()[name]
		b.Run(name+"/B16xT256/adamw", func(b *testing.B) {
			const bsz, tt = 16, 256
			m, err := New(cfg, model.RandomWeights(cfg, 1), 1)
			if err != nil {
				b.Fatal(err)
			}
			opt, err := NewAdamW(optim.AdamWConfig{WeightDecay: 0.1})
			if err != nil {
				b.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			ids, mask := make([]int32, bsz*tt), make([]float32, bsz*tt)
			for i := range ids {
				ids[i] = int32(rng.IntN(cfg.VocabSize))
				mask[i] = 1
			}
			dl := make([]float32, bsz*(tt-1))
			for i := range dl {
				dl[i] = -1 / float32(len(dl))
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
		})
	}
}

// BenchmarkGenerate times greedy KV-cache generation of 256 new tokens per
// row for stories260K-shaped random weights at batch 1 and 32. Metric:
// generated tokens per second (all rows).
func BenchmarkGenerate(b *testing.B) {
	skipNoEngine(b)
	cfg, w := loadStories(b)
	m, err := New(cfg, w, 1)
	if err != nil {
		b.Fatal(err)
	}
	for _, bsz := range []int{1, 32} {
		b.Run(map[int]string{1: "stories260K/batch1", 32: "stories260K/batch32"}[bsz], func(b *testing.B) {
			prompts := make([][]int32, bsz)
			for i := range prompts {
				prompts[i] = []int32{1, int32(300 + i)}
			}
			const newTok = 256
			c0 := cpuTime()
			for i := 0; i < b.N; i++ {
				if _, err := m.Generate(prompts, model.GenerateOptions{MaxNewTokens: newTok, EOS: -1, Unk: -1}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(bsz*newTok*b.N)/b.Elapsed().Seconds(), "tok/s")
			b.ReportMetric(float64(bsz*newTok*b.N)/(cpuTime()-c0).Seconds(), "tok/cpu-s")
		})
	}
}
