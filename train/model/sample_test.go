package model

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
)

// refSample is sampleNext in float64 on the host: temperature, top-k (ties
// at the k-th value kept), top-p over the survivors by descending
// probability (ties to the lower id), then the draw u walking that order.
func refSample(logits []float32, u, temp, topP float64, k int) int32 {
	v := len(logits)
	z := make([]float64, v)
	for i, x := range logits {
		z[i] = float64(x)
	}
	if temp <= 0 {
		return int32(slices.Index(z, slices.Max(z)))
	}
	for i := range z {
		z[i] /= temp
	}
	sorted := slices.Clone(z)
	sort.Sort(sort.Reverse(sort.Float64Slice(sorted)))
	thr := sorted[min(k, v)-1]
	var idx []int
	for i := range z {
		if z[i] >= thr {
			idx = append(idx, i)
		}
	}
	sort.SliceStable(idx, func(a, b int) bool { return z[idx[a]] > z[idx[b]] })
	m, sum := z[idx[0]], 0.0
	p := make([]float64, len(idx))
	for j, i := range idx {
		p[j] = math.Exp(z[i] - m)
		sum += p[j]
	}
	keep, cum := len(idx), 0.0
	for j := range p {
		p[j] /= sum
		if cum >= topP {
			keep = j
			break
		}
		cum += p[j]
	}
	tot := 0.0
	for _, x := range p[:keep] {
		tot += x
	}
	acc := 0.0
	for j := 0; j < keep; j++ {
		acc += p[j]
		if acc > u*tot {
			return int32(idx[j])
		}
	}
	return int32(idx[keep-1])
}

// TestSampleNextMatchesHost draws with sampleNext (in graph) and refSample
// (float64) from the same logits and uniforms: greedy must agree exactly,
// and sampling on at least 99% of the draws (float32 vs float64 rounding
// moves draws that land within ~1e-6 of a boundary).
func TestSampleNextMatchesHost(t *testing.T) {
	be := getBackend(t)
	rng := rand.New(rand.NewPCG(11, 12))
	const b, v = 64, 300
	for _, c := range []struct {
		temp, topP float64
		k          int
	}{{0, 1, 50}, {1, 2, 50}, {0.7, 0.9, 50}, {1.3, 0.5, 5}, {1, 2, 1}, {0.8, 0.95, 300}} {
		logits := make([]float32, b*v)
		for i := range logits {
			logits[i] = float32(rng.NormFloat64() * 3)
		}
		u := make([]float32, b)
		for i := range u {
			u[i] = float32(rng.Float64())
		}
		out, err := G.ExecOnce(be, func(z, u, temp, topP *G.Node) *G.Node {
			return sampleNext(z, u, temp, topP, c.k)
		}, tensors.FromFlatDataAndDimensions(logits, b, v), tensors.FromFlatDataAndDimensions(u, b),
			tensors.FromScalar(float32(c.temp)), tensors.FromScalar(float32(c.topP)))
		if err != nil {
			t.Fatal(err)
		}
		got := tensors.MustCopyFlatData[int32](out)
		agree := 0
		for r := 0; r < b; r++ {
			want := refSample(logits[r*v:(r+1)*v], float64(u[r]), c.temp, c.topP, c.k)
			if got[r] == want {
				agree++
			} else if c.temp <= 0 {
				t.Fatalf("greedy row %d: got %d, want %d", r, got[r], want)
			}
		}
		if agree < b*99/100 {
			t.Errorf("temp %g top-p %g top-k %d: %d/%d draws agree with the host", c.temp, c.topP, c.k, agree, b)
		}
	}
}

// TestGenerateDeviceSampling: greedy decoding (with and without repetition
// penalty) sampled in graph gives exactly the host sampler's rollout, and a
// sampled rollout only emits tokens within the top-k.
func TestGenerateDeviceSampling(t *testing.T) {
	cfg, w := loadStories(t)
	host, err := NewGeneratorFromWeights(getBackend(t), cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := NewGeneratorFromWeights(getBackend(t), cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	dev.DeviceSampling = true
	prompts := [][]int32{{1, 403, 407}, {1, 9, 30, 60, 90, 120}, {1}}
	for _, rp := range []float64{1, 1.3} {
		opts := GenerateOptions{MaxNewTokens: 24, TopK: 50, RepetitionPenalty: rp, EOS: 2, Pad: 0, Unk: 0}
		a, err := host.Generate(prompts, opts)
		if err != nil {
			t.Fatal(err)
		}
		b, err := dev.Generate(prompts, opts)
		if err != nil {
			t.Fatal(err)
		}
		for r := range a.Seq {
			if !slices.Equal(a.Seq[r], b.Seq[r]) {
				t.Fatalf("rp %g row %d: device greedy %v, host %v", rp, r, b.Seq[r], a.Seq[r])
			}
		}
	}
	// Top-1 sampling at any temperature is greedy.
	a, err := host.Generate(prompts, GenerateOptions{MaxNewTokens: 16, EOS: -1, Pad: 0, Unk: -1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := dev.Generate(prompts, GenerateOptions{MaxNewTokens: 16, Temperature: 1, TopK: 1, Seed: 5, EOS: -1, Pad: 0, Unk: -1})
	if err != nil {
		t.Fatal(err)
	}
	for r := range a.Seq {
		if !slices.Equal(a.Seq[r], b.Seq[r]) {
			t.Fatalf("top-1 row %d: device %v, host greedy %v", r, b.Seq[r], a.Seq[r])
		}
	}
	// Seeded sampling is reproducible.
	opts := GenerateOptions{MaxNewTokens: 16, Temperature: 1, TopK: 50, TopP: 0.9, Seed: 9, EOS: -1, Pad: 0, Unk: -1}
	c1, err := dev.Generate(prompts, opts)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := dev.Generate(prompts, opts)
	if err != nil {
		t.Fatal(err)
	}
	for r := range c1.Seq {
		if !slices.Equal(c1.Seq[r], c2.Seq[r]) {
			t.Fatalf("row %d: two seeded device samplings differ", r)
		}
	}
}

// TestSamplerTopK: the host sampler with top-k only emits the k most likely
// tokens, and k-th largest handles repeats.
func TestSamplerTopK(t *testing.T) {
	var sc sampler
	if got := sc.kthLargest([]float64{1, 5, 3, 5, 2}, 2); got != 5 {
		t.Fatalf("2nd largest of {1,5,3,5,2} = %g, want 5", got)
	}
	if got := sc.kthLargest([]float64{1, 5, 3, 5, 2}, 3); got != 3 {
		t.Fatalf("3rd largest = %g, want 3", got)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	logits := make([]float32, 1000)
	for i := range logits {
		logits[i] = float32(rng.NormFloat64())
	}
	sorted := slices.Clone(logits)
	slices.Sort(sorted)
	kth := sorted[len(sorted)-10]
	opts := GenerateOptions{Temperature: 2, TopK: 10}
	for i := 0; i < 2000; i++ {
		if id := sc.sample(logits, nil, &opts, rng.Float64()); logits[id] < kth {
			t.Fatalf("sampled %d (logit %g) outside the top 10 (≥ %g)", id, logits[id], kth)
		}
	}
}

// TestMax64: max64 is math.Max on every pair of special and ordinary values,
// bit for bit (signed zeros, infinities, NaN).
func TestMax64(t *testing.T) {
	vals := []float64{math.Inf(-1), -3.5, -1, math.Copysign(0, -1), 0, 1e-300, 2, 7.25, math.MaxFloat64, math.Inf(1), math.NaN()}
	for _, x := range vals {
		for _, y := range vals {
			got, want := max64(x, y), math.Max(x, y)
			if math.Float64bits(got) != math.Float64bits(want) && !(math.IsNaN(got) && math.IsNaN(want)) {
				t.Errorf("max64(%v, %v) = %v, math.Max %v", x, y, got, want)
			}
		}
	}
}

// TestGenerateTransfers: Generate counts the bytes it moves between host and device, as the
// shapes say: 2 prompts padded to the 16-wide bucket, a 64-slot cache, 4 new tokens (3 decode
// steps after the prefill). Sampling on the host brings the B×V logits down per token; sampling
// in graph only the B ids (with B uniforms per token and 4 scalars once going up): V times less.
func TestGenerateTransfers(t *testing.T) {
	cfg, w := loadStories(t)
	const b, pw, s, g = 2, 16, 64, 4
	v := int64(cfg.VocabSize)
	prompts := [][]int32{{1, 403, 407}, {1, 9}}
	opts := GenerateOptions{MaxNewTokens: g, TopK: 50, Temperature: 1, Seed: 3, EOS: -1, Pad: 0, Unk: -1}
	for _, device := range []bool{false, true} {
		gen, err := NewGeneratorFromWeights(getBackend(t), cfg, w)
		if err != nil {
			t.Fatal(err)
		}
		gen.DeviceSampling, gen.Transfers = device, &Transfers{}
		if _, err := gen.Generate(prompts, opts); err != nil {
			t.Fatal(err)
		}
		ids := int64(4 * (b*pw + (g-1)*b))       // prompts, then the fed tokens
		up := int64(4 * (b*s + (g-1)*(b+1+b*s))) // key masks; positions, slot, key mask per step
		down := 4 * g * b * v                    // logits
		if device {
			up += 4 * (g*b + 4) // uniforms per token; temperature, top-p, repetition penalty, pad
			down = 4 * g * b    // sampled ids
		}
		x := gen.Transfers
		if x.IDsUp.Load() != ids || x.Up.Load() != up || x.Down.Load() != down {
			t.Errorf("device sampling %v: counted ids %d, up %d, down %d; want %d, %d, %d", device,
				x.IDsUp.Load(), x.Up.Load(), x.Down.Load(), ids, up, down)
		}
	}
}
