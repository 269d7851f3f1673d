package llama

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/model"
)

func loadStories(t testing.TB) (*model.Config, model.Weights) {
	cfg, w, err := model.LoadLlama2C(filepath.Join("..", "..", "assets", "data", "models", "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg, w
}

// TestGoldenGenerate: greedy generation with the KV cache, all golden prompts
// in one left-padded batch, equals llama2.c token for token.
func TestGoldenGenerate(t *testing.T) {
	skipNoEngine(t)
	data, err := os.ReadFile(filepath.Join("..", "..", "assets", "golden", "llama2c", "stories260k_greedy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Cases []struct {
			Name         string  `json:"name"`
			PromptIDs    []int32 `json:"prompt_ids"`
			GeneratedIDs []int32 `json:"generated_ids"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	if len(g.Cases) == 0 {
		t.Fatal("no golden cases")
	}
	cfg, w := loadStories(t)
	m, err := New(cfg, w, 1)
	if err != nil {
		t.Fatal(err)
	}
	var prompts [][]int32
	maxNew := 0
	for _, c := range g.Cases {
		prompts = append(prompts, c.PromptIDs)
		maxNew = max(maxNew, len(c.GeneratedIDs))
	}
	ro, err := m.Generate(prompts, model.GenerateOptions{MaxNewTokens: maxNew, EOS: -1, Pad: 0, Unk: -1})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range g.Cases {
		got := ro.Seq[i][ro.PromptWidth : ro.PromptWidth+len(c.GeneratedIDs)]
		if !slices.Equal(got, c.GeneratedIDs) {
			t.Fatalf("%s: got %v, llama2.c %v", c.Name, got, c.GeneratedIDs)
		}
	}
}

// TestGenerateMatchesGraph: seeded sampling (temperature, top-p, repetition
// penalty, EOS, unk masking) gives the GoMLX generator's rollout.
func TestGenerateMatchesGraph(t *testing.T) {
	skipNoEngine(t)
	cfg, w := loadStories(t)
	be, err := backend.New("go")
	if err != nil {
		t.Fatal(err)
	}
	gen, err := model.NewGeneratorFromWeights(be, cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(cfg, w, 1)
	if err != nil {
		t.Fatal(err)
	}
	prompts := [][]int32{{1, 403, 407}, {1}, {1, 261, 378, 432, 383}}
	for _, opts := range []model.GenerateOptions{
		{MaxNewTokens: 40, Temperature: 1, TopP: 0.9, RepetitionPenalty: 1.2, Seed: 42, EOS: 2, Pad: 0, Unk: 0},
		{MaxNewTokens: 30, Temperature: 0.7, Seed: 7, EOS: 2, Pad: 0, Unk: -1},
	} {
		want, err := gen.Generate(prompts, opts)
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.Generate(prompts, opts)
		if err != nil {
			t.Fatal(err)
		}
		if got.PromptWidth != want.PromptWidth || !slices.Equal(got.ResponseLen, want.ResponseLen) {
			t.Fatalf("rollout layout: prompt width %d, lengths %v; graph %d, %v", got.PromptWidth, got.ResponseLen, want.PromptWidth, want.ResponseLen)
		}
		for r := range prompts {
			if !slices.Equal(got.Seq[r], want.Seq[r]) || !slices.Equal(got.AttentionMask[r], want.AttentionMask[r]) {
				t.Fatalf("row %d: %v, graph %v", r, got.Seq[r], want.Seq[r])
			}
		}
	}
}

// TestGenerateDecodeMatchesForward: every greedy token of the batched KV-cache
// decode (packed transposed weights, LoRA merged, fused engine.DecodeLayer)
// is the argmax of the full forward pass (unmerged adapters) over the
// generated rows, on models with GQA, MQA, biases and LoRA, left-padded
// prompts of several lengths (one longer than a 16-key lane group), at
// batch 1 and a batch with a ragged last chunk of rows.
func TestGenerateDecodeMatchesForward(t *testing.T) {
	skipNoEngine(t)
	for _, pc := range parityCases() {
		if pc.scores {
			continue
		}
		t.Run(pc.name, func(t *testing.T) {
			cfg := pc.cfg
			w := model.RandomWeights(&cfg, 5)
			rng := rand.New(rand.NewPCG(3, 4))
			for name, tt := range w {
				for i := range tt.Data {
					tt.Data[i] *= 4 // sharp distributions: argmax margins far above rounding
					if strings.HasSuffix(name, ".bias") {
						tt.Data[i] += float32(rng.NormFloat64()) // biases start at 0
					}
				}
			}
			scale := 1.0
			if pc.lora != nil {
				scale = pc.lora.Alpha / float64(pc.lora.Rank)
				for name, tt := range w {
					for _, tg := range pc.lora.Targets {
						if strings.HasSuffix(name, tg+".weight") {
							stem := strings.TrimSuffix(name, ".weight")
							a, b := model.NewTensor(pc.lora.Rank, tt.Shape[1]), model.NewTensor(tt.Shape[0], pc.lora.Rank)
							for i := range a.Data {
								a.Data[i] = float32(rng.NormFloat64())
							}
							for i := range b.Data {
								b.Data[i] = float32(rng.NormFloat64())
							}
							w[stem+".lora_A.weight"], w[stem+".lora_B.weight"] = a, b
						}
					}
				}
			}
			m, err := New(&cfg, w, scale)
			if err != nil {
				t.Fatal(err)
			}
			prev := engine.ISA()
			defer engine.SetISA(prev)
			for _, isa := range []string{"c", "avx2", "avx512"} {
				if got, _ := engine.SetISA(isa); got == isa {
					t.Run(isa, func(t *testing.T) { checkDecodeMatchesForward(t, m) })
				}
			}
		})
	}
}

// checkDecodeMatchesForward is TestGenerateDecodeMatchesForward on one model.
func checkDecodeMatchesForward(t *testing.T, m *Model) {
	cfg := m.Cfg
	all := [][]int32{{1, 5}, {1, 7, 9, 11, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18}, {1}, {1, 20, 21},
		{1, 30}, {1, 31}, {1, 32}, {1, 33}, {1, 34, 35}, {1, 36}}
	for _, prompts := range [][][]int32{all[:1], all} {
		ro, err := m.Generate(prompts, model.GenerateOptions{MaxNewTokens: 12, EOS: -1, Unk: -1})
		if err != nil {
			t.Fatal(err)
		}
		b, tt := len(ro.Seq), len(ro.Seq[0])
		ids, mask := make([]int32, b*tt), make([]float32, b*tt)
		for r := range ro.Seq {
			copy(ids[r*tt:], ro.Seq[r])
			for i, a := range ro.AttentionMask[r][:ro.PromptWidth] {
				mask[r*tt+i] = float32(a)
			}
			for i := 0; i < ro.ResponseLen[r]; i++ { // a sampled pad id is still a real key
				mask[r*tt+ro.PromptWidth+i] = 1
			}
		}
		tp, err := m.Forward(b, tt, ids, mask)
		if err != nil {
			t.Fatal(err)
		}
		logits, err := m.Logits(tp)
		if err != nil {
			t.Fatal(err)
		}
		v, checked := cfg.VocabSize, 0
		for r := 0; r < b; r++ {
			for i := ro.PromptWidth - 1; i+1 < tt; i++ {
				row := logits[(r*tt+i)*v : (r*tt+i+1)*v]
				best, second := 0, -1
				for j := 1; j < v; j++ {
					if row[j] > row[best] {
						best, second = j, best
					} else if second < 0 || row[j] > row[second] {
						second = j
					}
				}
				if row[best]-row[second] < 1e-3*(1+abs32(row[best])) {
					continue // a near tie: either token is right
				}
				checked++
				if got := ro.Seq[r][i+1]; int(got) != best {
					t.Fatalf("batch %d row %d position %d: decoded %d, forward argmax %d (%g vs %g)", b, r, i+1, got, best, row[got], row[best])
				}
			}
		}
		if checked < b*12*3/4 {
			t.Fatalf("batch %d: only %d of %d tokens had a clear argmax", b, checked, b*12)
		}
	}
}

func abs32(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}

// TestGenerateThreadIndependent: a seeded sampled batch is the same rollout
// at 1, 2 and 3 pool threads (decode chunks rows independently of the pool).
func TestGenerateThreadIndependent(t *testing.T) {
	skipNoEngine(t)
	cfg, w := loadStories(t)
	m, err := New(cfg, w, 1)
	if err != nil {
		t.Fatal(err)
	}
	prev := engine.Threads()
	defer engine.SetThreads(prev)
	prompts := make([][]int32, 11)
	for i := range prompts {
		prompts[i] = []int32{1, int32(300 + i)}
	}
	var first *model.Rollout
	for _, n := range []int{1, 2, 3} {
		engine.SetThreads(n)
		ro, err := m.Generate(prompts, model.GenerateOptions{MaxNewTokens: 40, Temperature: 1, TopP: 0.9, Seed: 3, EOS: 2, Unk: -1})
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = ro
			continue
		}
		for r := range prompts {
			if !slices.Equal(ro.Seq[r], first.Seq[r]) {
				t.Fatalf("%d threads, row %d: %v; 1 thread: %v", n, r, ro.Seq[r], first.Seq[r])
			}
		}
	}
}
