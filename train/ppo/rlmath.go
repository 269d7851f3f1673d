package ppo

import (
	"fmt"
	"sync"

	"github.com/gomlx/gomlx/backends"
	G "github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/shapes"
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
// means) as one GoMLX program, in float32 (GAE sums in float64, as ingraph.GAE does).
//
// When the nets scored the rollout on the device (GraphNets with Rollout.onDevice), the
// program's inputs are the scoring outputs and its advantages, returns and masks stay on the
// device for the actor and critic updates: only the end scores go up and the logged scalars come
// down. Otherwise (nets that score on the host) its inputs go up and its outputs come down.
type RLMath struct {
	be    backends.Backend
	mu    sync.Mutex
	execs map[rlMathKey]*G.Exec
	// Transfers counts the bytes it moves between host and device.
	Transfers Transfers
}

type rlMathKey struct {
	start               int
	cost, costCritic    bool
	fixed               bool
	kl, clip, g, gl, l0 float64
}

// rlDev are an rl_step's update inputs on the device: the actor's [B,L] advantages and response
// mask, and the critics' [B,T] old values, returns and response mask (a zero last column, as the
// critic loss takes them). The cost tensors are nil without a cost critic.
type rlDev struct {
	rAdv, cAdv, resp                   *tensors.Tensor
	rOld, rRet, cOld, cRet, criticMask *tensors.Tensor
}

// free releases the tensors.
func (d *rlDev) free() {
	if d != nil {
		freeTensors(d.rAdv, d.cAdv, d.resp, d.rOld, d.rRet, d.cOld, d.cRet, d.criticMask)
	}
}

// freeTensors finalizes the non-nil tensors.
func freeTensors(ts ...*tensors.Tensor) {
	for _, t := range ts {
		if t != nil {
			t.FinalizeAll()
		}
	}
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
// both streams. With r.dev (scored on the device) the advantages and returns stay there (the
// returned rlDev, shaped holding the scalars only); else they come back in shaped and rlDev is nil.
func (m *RLMath) shapeAndGAE(cfg *Config, r *Rollout) (shaped, *rlDev, error) {
	B, L, T, start := r.B, r.L(), r.T, r.Start()
	k := rlMathKey{start: start, cost: cfg.UsesCost(), costCritic: cfg.UsesCostCritic(), fixed: cfg.Algorithm == Fixed,
		kl: cfg.KLCoeff, clip: cfg.ClipRangeScore, g: cfg.Gamma, gl: cfg.GAELambda, l0: cfg.LambdaInit}
	e, err := m.exec(k)
	if err != nil {
		return shaped{}, nil, err
	}
	x := &m.Transfers
	var ins []any
	if d := r.dev; d != nil {
		ins = []any{d.mask, d.logp, d.ref, upload(x, r.Reward, B), d.rV}
		if k.cost {
			ins = append(ins, upload(x, r.Cost, B))
		}
		if k.costCritic {
			ins = append(ins, d.cV)
		}
	} else {
		ins = []any{upload(x, r.Mask, B, T), upload(x, r.LogProbs, B, L), upload(x, r.RefLogProbs, B, L),
			upload(x, r.Reward, B), upload(x, padLastCol(r.RewardValues, B, L), B, T)}
		if k.cost {
			ins = append(ins, upload(x, r.Cost, B))
		}
		if k.costCritic {
			ins = append(ins, upload(x, padLastCol(r.CostValues, B, L), B, T))
		}
	}
	outs, err := execGraph(e, ins...)
	if err != nil {
		return shaped{}, nil, fmt.Errorf("rl math: %w", err)
	}
	// Outputs: scalars (KL, reward_with_kl_penalty, means(rAdv, rRet, rV) [, means(cAdv, cRet, cV)]),
	// rAdv, resp, rOld, rRet, criticMask [, cAdv, cOld, cRet].
	var s shaped
	st, err := download[float32](x, outs[0])
	outs[0].FinalizeAll()
	if err != nil {
		freeTensors(outs[1:]...)
		return shaped{}, nil, fmt.Errorf("rl math: %w", err)
	}
	s.stats.KL, s.stats.RewardWithKLPenalty = float64(st[0]), float64(st[1])
	s.means = to64(st[2:])
	d := &rlDev{rAdv: outs[1], resp: outs[2], rOld: outs[3], rRet: outs[4], criticMask: outs[5]}
	if k.costCritic {
		d.cAdv, d.cOld, d.cRet = outs[6], outs[7], outs[8]
	}
	if r.dev != nil {
		return s, d, nil
	}
	defer d.free()
	get := func(t *tensors.Tensor, w int) ([]float64, error) {
		v, err := download[float32](x, t)
		if err != nil {
			return nil, fmt.Errorf("rl math: %w", err)
		}
		if w == T {
			v = dropLastCol(v, B, T)
		}
		return to64(v), nil
	}
	if s.rAdv, err = get(d.rAdv, L); err == nil {
		s.rRet, err = get(d.rRet, T)
	}
	if err == nil && k.costCritic {
		if s.cAdv, err = get(d.cAdv, L); err == nil {
			s.cRet, err = get(d.cRet, T)
		}
	}
	return s, nil, err
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

// execGraph runs a program, turning GoMLX panics into errors.
func execGraph(e *G.Exec, args ...any) (out []*tensors.Tensor, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return e.Exec(args...)
}

// rlMathGraph builds the program of key k from its inputs (attention mask [B,T], logProbs [B,L],
// refLogProbs [B,L], reward [B], reward critic scores [B,T] [, cost [B]] [, cost critic scores
// [B,T]]); the critic scores' last column is not read.
func rlMathGraph(k rlMathKey, in []*G.Node) []*G.Node {
	mask, logp, ref, reward, rVT := in[0], in[1], in[2], in[3], in[4]
	T := mask.Shape().Dimensions[1]
	cols := func(x *G.Node, lo, hi int) *G.Node { return G.Slice(x, G.AxisRange(), G.AxisRange(lo, hi)) }
	// pad appends a zero column: [B,L] → [B,T], the critics' input width.
	pad := func(x *G.Node) *G.Node {
		z := G.Zeros(x.Graph(), shapes.Make(x.DType(), x.Shape().Dimensions[0], 1))
		return G.Concatenate([]*G.Node{x, z}, 1)
	}
	seqMask, rV := cols(mask, 1, T), cols(rVT, 0, T-1)
	var cost, cV *G.Node
	if k.cost {
		cost = in[5]
	}
	if k.costCritic {
		cV = cols(in[6], 0, T-1)
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
	scalars := []*G.Node{G.Reshape(kl.KL, 1), G.Reshape(kl.RewardWithKLPenalty, 1)}
	means := func(xs ...*G.Node) {
		for _, x := range xs {
			scalars = append(scalars, G.Reshape(ingraph.MaskedMean(x, rm), 1))
		}
	}
	means(gae.RewardAdv, gae.RewardRet, rV)
	if k.costCritic {
		means(gae.CostAdv, gae.CostRet, cV)
	}
	out := []*G.Node{G.Concatenate(scalars, 0), gae.RewardAdv, rm, pad(rV), pad(gae.RewardRet), pad(rm)}
	if k.costCritic {
		out = append(out, gae.CostAdv, pad(cV), pad(gae.CostRet))
	}
	return out
}
