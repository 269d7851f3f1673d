package ppo

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/model"
)

// generator samples responses from the actor.
type generator interface {
	generate(prompts [][]int32, seed uint64) (*Rollout, error)
}

// Generate implements Nets: prompts are truncated to MaxPromptTokens (keeping their end, where
// the "ASSISTANT:" cue is), left padded to a width rounded up to 8 (few distinct graph shapes), and
// MaxNewTokens are sampled; the response is right padded to exactly MaxNewTokens.
func (n *GraphNets) Generate(prompts [][]int32, seed uint64) (*Rollout, error) {
	return n.gen.generate(prompts, seed)
}

// layoutPrompts builds the left-padded rollout frame [B, S+G] for prompts.
func layoutPrompts(prompts [][]int32, maxPrompt, maxNew int, pad int32) *Rollout {
	S := 0
	for _, p := range prompts {
		S = max(S, min(len(p), maxPrompt))
	}
	S = min(maxPrompt, (S+7)/8*8)
	B, T := len(prompts), S+maxNew
	r := &Rollout{B: B, T: T, S: S, Seq: make([]int32, B*T), Mask: make([]float32, B*T)}
	for i, p := range prompts {
		if len(p) > S {
			p = p[len(p)-S:]
		}
		for k, id := range p {
			j := i*T + S - len(p) + k
			r.Seq[j] = id
			if id != pad {
				r.Mask[j] = 1
			}
		}
		for j := i*T + S; j < (i+1)*T; j++ {
			r.Seq[j] = pad
		}
	}
	return r
}

// sampler draws one token from logits as HF's sampling does: repetition penalty over the tokens
// already in the row, temperature, then nucleus (top-p) filtering. Token pad is never drawn when
// it is also <unk> (the attention mask would hide it; see the package docs).
type sampler struct {
	temp, topP, rep float64
	pad             int32
	probs           []float64
	idx             []int
}

func (s *sampler) sample(logits []float32, seen []int32, rng *rand.Rand) int32 {
	V := len(logits)
	if len(s.probs) != V {
		s.probs, s.idx = make([]float64, V), make([]int, V)
	}
	l := s.probs
	for v := range l {
		l[v] = float64(logits[v])
	}
	if s.rep != 1 {
		for _, id := range seen {
			if int(id) < V && id != s.pad {
				if l[id] < 0 {
					l[id] *= s.rep
				} else {
					l[id] /= s.rep
				}
			}
		}
	}
	if s.pad >= 0 && int(s.pad) < V {
		l[s.pad] = math.Inf(-1)
	}
	mx := math.Inf(-1)
	for _, x := range l {
		mx = math.Max(mx, x)
	}
	sum := 0.0
	for v := range l {
		l[v] = math.Exp((l[v] - mx) / s.temp)
		sum += l[v]
	}
	for v := range l {
		l[v] /= sum
	}
	cands := s.idx[:0]
	for v := 0; v < V; v++ {
		cands = append(cands, v)
	}
	if s.topP < 1 {
		sort.SliceStable(cands, func(a, b int) bool { return l[cands[a]] > l[cands[b]] })
		acc, k := 0.0, 0
		for k < len(cands) {
			acc += l[cands[k]]
			k++
			if acc >= s.topP {
				break
			}
		}
		cands = cands[:k]
		acc = 0
		for _, v := range cands {
			acc += l[v]
		}
		sum = acc
	} else {
		sum = 1
	}
	u := rng.Float64() * sum
	for _, v := range cands {
		u -= l[v]
		if u < 0 {
			return int32(v)
		}
	}
	return int32(cands[len(cands)-1])
}

// recomputeGenerator samples by re-running the actor over the whole frame for every new token (no
// KV cache): one compiled graph per frame shape returning the logits at a chosen position.
type recomputeGenerator struct {
	n    *GraphNets
	exec *context.Exec
	smp  sampler
}

func newGenerator(n *GraphNets) (generator, error) {
	g := &recomputeGenerator{n: n, smp: sampler{temp: n.cfg.Temperature, topP: n.cfg.TopP, rep: n.cfg.RepPenalty, pad: n.cfg.Pad}}
	if g.smp.temp <= 0 {
		g.smp.temp = 1
	}
	if g.smp.topP <= 0 {
		g.smp.topP = 1
	}
	if g.smp.rep <= 0 {
		g.smp.rep = 1
	}
	var err error
	g.exec, err = context.NewExec(n.cfg.Backend, n.ctx.Reuse(), func(ctx *context.Context, ids, mask, sel *G.Node) *G.Node {
		logits := model.Logits(ctx.InAbsPath(ScopeActor), n.actorCfg, ids, mask) // [B, T, V]
		return G.StopGradient(G.DotGeneral(logits, []int{1}, nil, sel, []int{0}, nil))
	})
	if err != nil {
		return nil, fmt.Errorf("ppo: generator: %w", err)
	}
	g.exec.SetMaxCache(-1)
	return g, nil
}

func (g *recomputeGenerator) generate(prompts [][]int32, seed uint64) (*Rollout, error) {
	c := g.n.cfg
	r := layoutPrompts(prompts, c.MaxPromptTokens, c.MaxNewTokens, c.Pad)
	rng := rand.New(rand.NewPCG(seed, 0x6e6))
	done := make([]bool, r.B)
	V := g.n.actorCfg.VocabSize
	for k := 0; k < c.MaxNewTokens; k++ {
		pos := r.S + k - 1 // logits at pos predict token pos+1
		sel := make([]float32, r.T)
		sel[pos] = 1
		out, err := execSafe(g.exec, tensors.FromFlatDataAndDimensions(r.Seq, r.B, r.T),
			tensors.FromFlatDataAndDimensions(r.Mask, r.B, r.T), tensors.FromFlatDataAndDimensions(sel, r.T))
		if err != nil {
			return nil, fmt.Errorf("generate step %d: %w", k, err)
		}
		logits := tensors.MustCopyFlatData[float32](out[0])
		all := true
		for i := 0; i < r.B; i++ {
			if done[i] {
				continue
			}
			tok := g.smp.sample(logits[i*V:(i+1)*V], r.Seq[i*r.T:i*r.T+pos+1], rng)
			r.Seq[i*r.T+pos+1], r.Mask[i*r.T+pos+1] = tok, 1
			if tok == c.EOS {
				done[i] = true
			} else {
				all = false
			}
		}
		if all {
			break
		}
	}
	return r, nil
}
