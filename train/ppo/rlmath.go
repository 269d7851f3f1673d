package ppo

import (
	"fmt"
	"sync"

	"github.com/gomlx/gomlx/backends"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"

	"github.com/saferlhf/saferlhf/kernels/ingraph"
)

// RL-math modes (--rl-math): where KL shaping, GAE and the logged means of an rl_step run.
const (
	// RLMathHost runs them with package kernels on the host in float64 (bit-exact resumable).
	RLMathHost = "host"
	// RLMathGraph runs them as one compiled GoMLX program (kernels/ingraph) on the backend.
	RLMathGraph = "graph"
)

// DefaultRLMath is the --rl-math default of a backend: graph on xla:*, host on go and native (so
// that CPU runs keep today's bit-exact float64 trajectory).
func DefaultRLMath(backendSpec string) string {
	if len(backendSpec) >= 3 && backendSpec[:3] == "xla" {
		return RLMathGraph
	}
	return RLMathHost
}

// RLMath runs an rl_step's no-gradient math (KL shaping, GAE of both streams, the logged masked
// means) as one GoMLX program, in float32 (GAE sums in float64, as ingraph.GAE does). The inputs
// are the scored rollout's slices; the outputs are the full-width advantages and returns the
// updates take, and the scalars the trainer logs. It counts the bytes it moves each way.
//
// The scoring outputs and the update inputs are host slices today (Nets), so the program's
// inputs go up and its advantages and returns come down once per rl_step; with device tensors in
// Nets the same program would run between them without either copy.
type RLMath struct {
	be    backends.Backend
	mu    sync.Mutex
	execs map[rlMathKey]*G.Exec
	// H2DBytes and D2HBytes count the bytes sent to and read from the device.
	H2DBytes, D2HBytes int64
}

type rlMathKey struct {
	start               int
	cost, costCritic    bool
	fixed               bool
	kl, clip, g, gl, l0 float64
}

// NewRLMath returns the graph RL math on be (a GoMLX backend: go or xla:*).
func NewRLMath(be backends.Backend) *RLMath {
	return &RLMath{be: be, execs: map[rlMathKey]*G.Exec{}}
}

// Close frees the compiled programs.
func (m *RLMath) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.execs {
		e.Finalize()
	}
	m.execs = map[rlMathKey]*G.Exec{}
}

// shapeAndGAE is the graph form of the package-level shapeAndGAE plus the logged means
// (shaped.means): Fixed subtracts λ₀·c from the reward in graph; PPO-Lag shapes and runs GAE on
// both streams.
func (m *RLMath) shapeAndGAE(cfg *Config, r *Rollout) (shaped, error) {
	B, L, start := r.B, r.L(), r.Start()
	k := rlMathKey{start: start, cost: cfg.UsesCost(), costCritic: cfg.UsesCostCritic(), fixed: cfg.Algorithm == Fixed,
		kl: cfg.KLCoeff, clip: cfg.ClipRangeScore, g: cfg.Gamma, gl: cfg.GAELambda, l0: cfg.LambdaInit}
	e, err := m.exec(k)
	if err != nil {
		return shaped{}, err
	}
	bl := func(x []float32) *tensors.Tensor { return tensors.FromFlatDataAndDimensions(x, B, L) }
	ins := []any{bl(r.LogProbs), bl(r.RefLogProbs), bl(r.SequenceMask()), tensors.FromFlatDataAndDimensions(r.Reward, B),
		bl(r.RewardValues)}
	n := int64(4*B*L + B)
	if k.cost {
		ins = append(ins, tensors.FromFlatDataAndDimensions(r.Cost, B))
		n += int64(B)
	}
	if k.costCritic {
		ins = append(ins, bl(r.CostValues))
		n += int64(B * L)
	}
	m.H2DBytes += 4 * n
	outs, err := e.Exec(ins...)
	if err != nil {
		return shaped{}, fmt.Errorf("rl math: %w", err)
	}
	var s shaped
	get := func(i int) []float64 {
		x := tensors.MustCopyFlatData[float32](outs[i])
		m.D2HBytes += int64(4 * len(x))
		return to64(x)
	}
	// Outputs: KL, reward_with_kl_penalty, rAdv, rRet, means(rAdv, rRet, rV) [, cAdv, cRet, means(cAdv, cRet, cV)].
	st := get(0)
	s.stats.KL, s.stats.RewardWithKLPenalty = st[0], st[1]
	s.rAdv, s.rRet = get(1), get(2)
	s.means = get(3)
	if k.costCritic {
		s.cAdv, s.cRet = get(4), get(5)
		s.means = append(s.means, get(6)...)
	}
	for _, o := range outs {
		o.FinalizeAll()
	}
	return s, nil
}

func (m *RLMath) exec(k rlMathKey) (*G.Exec, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.execs[k]; e != nil {
		return e, nil
	}
	e, err := G.NewExec(m.be, func(in []*G.Node) []*G.Node { return rlMathGraph(k, in) })
	if err != nil {
		return nil, fmt.Errorf("rl math: %w", err)
	}
	m.execs[k] = e
	return e, nil
}

// rlMathGraph builds the program of key k from its inputs (logProbs, refLogProbs, seqMask, reward,
// rewardValues [, cost] [, costValues]).
func rlMathGraph(k rlMathKey, in []*G.Node) []*G.Node {
	logp, ref, seqMask, reward, rV := in[0], in[1], in[2], in[3], in[4]
	var cost, cV *G.Node
	if k.cost {
		cost = in[5]
	}
	if k.costCritic {
		cV = in[6]
	}
	shapedCost := cost
	if k.fixed { // the reward-shaping baseline: r − λ₀·c, one stream (spec §2)
		reward = G.Sub(reward, G.MulScalar(cost, k.l0))
		shapedCost = nil
	}
	if !k.costCritic {
		shapedCost = nil
	}
	kl := ingraph.KLShaped(logp, ref, seqMask, reward, shapedCost, k.kl, k.clip, k.start)
	var gae ingraph.GAEOut
	if k.costCritic {
		gae = ingraph.GAEFullWidth(rV, kl.Rewards, cV, kl.Costs, seqMask, k.start, k.g, k.gl)
	} else {
		gae = ingraph.GAEFullWidth(rV, kl.Rewards, nil, nil, seqMask, k.start, k.g, k.gl)
	}
	rm := ingraph.ResponseMask(seqMask, k.start)
	// The host kernels leave returns 0 before start (fullWidth); so does this program.
	resp := ingraph.ResponseMask(G.OnesLike(seqMask), k.start)
	gae.RewardRet = G.Mul(gae.RewardRet, resp)
	if k.costCritic {
		gae.CostRet = G.Mul(gae.CostRet, resp)
	}
	means := func(xs ...*G.Node) *G.Node {
		ms := make([]*G.Node, len(xs))
		for i, x := range xs {
			ms[i] = G.Reshape(ingraph.MaskedMean(x, rm), 1)
		}
		return G.Concatenate(ms, 0)
	}
	stats := G.Concatenate([]*G.Node{G.Reshape(kl.KL, 1), G.Reshape(kl.RewardWithKLPenalty, 1)}, 0)
	out := []*G.Node{stats, gae.RewardAdv, gae.RewardRet, means(gae.RewardAdv, gae.RewardRet, rV)}
	if k.costCritic {
		out = append(out, gae.CostAdv, gae.CostRet, means(gae.CostAdv, gae.CostRet, cV))
	}
	return out
}
