package kernels

// GAEArgs are the inputs of the fused generalised advantage estimation
// (spec §1.4, reference RLTrainer.get_advantages_and_returns). Per-token tensors
// are [B,L]; the cost stream (CostValues, Costs) is optional: leave both nil for
// a single stream (plain PPO).
type GAEArgs[F Float] struct {
	B, L, Start int
	// Gamma is γ (1.0 in the reference), Lambda is λ_GAE (0.95).
	Gamma, Lambda         float64
	RewardValues, Rewards []F
	CostValues, Costs     []F
	SeqMask               []F
}

// GAEOut receives advantages and returns, each [B, L−Start]; the cost fields
// are required exactly when the cost inputs are given.
type GAEOut[F Float] struct {
	RewardAdv, RewardRet []F
	CostAdv, CostRet     []F
}

// GAE computes, in one backward sweep per row over t = L−1 … Start, for the
// reward and the cost stream at once: V ← V·m, r ← r·m, δ_t = r_t + γV_{t+1} − V_t
// (V_L = 0), A_t = δ_t + γλA_{t+1}, R_t = A_t + V_t. Rows with an all-zero mask
// get A = R = 0 (as in the reference).
func GAE[F Float](ws *Workspace, a GAEArgs[F], out GAEOut[F]) error {
	const k = "GAE"
	B, L := a.B, a.L
	if B < 0 || L < 0 || a.Start < 0 || a.Start > L {
		return badSize(k, "B=%d L=%d start=%d", B, L, a.Start)
	}
	if err := checkScalars(k, "Gamma", a.Gamma, "Lambda", a.Lambda); err != nil {
		return err
	}
	N := L - a.Start
	noCost := a.CostValues == nil && a.Costs == nil && out.CostAdv == nil && out.CostRet == nil
	ts := []tensorRef[F]{{"reward_values", a.RewardValues, B * L, false}, {"rewards", a.Rewards, B * L, false},
		{"cost_values", a.CostValues, B * L, noCost}, {"costs", a.Costs, B * L, noCost},
		{"sequence_mask", a.SeqMask, B * L, false}}
	if err := checkShapes(k, ts...); err != nil {
		return err
	}
	if err := checkShapes(k, tensorRef[F]{"reward_advantages", out.RewardAdv, B * N, false}, tensorRef[F]{"reward_returns", out.RewardRet, B * N, false},
		tensorRef[F]{"cost_advantages", out.CostAdv, B * N, noCost}, tensorRef[F]{"cost_returns", out.CostRet, B * N, noCost}); err != nil {
		return err
	}
	ws = ws.orNew()
	t := taskFor[gaeTask[F]](ws)
	*t = gaeTask[F]{a: a, o: out, cost: !noCost, chk: ws.scratch(0, B)}
	parallelRows(ws, B, L, t)
	chk := 0.0
	for _, c := range t.chk {
		chk += c
	}
	if !finite(chk) {
		return nonFiniteError(k, ts...)
	}
	return nil
}

// GAE1 is GAE for a single stream (plain PPO): values and rewards [B,L] to advantages and returns [B,L−start].
func GAE1[F Float](ws *Workspace, B, L, start int, gamma, lambda float64, values, rewards, seqMask, adv, ret []F) error {
	return GAE(ws, GAEArgs[F]{B: B, L: L, Start: start, Gamma: gamma, Lambda: lambda,
		RewardValues: values, Rewards: rewards, SeqMask: seqMask}, GAEOut[F]{RewardAdv: adv, RewardRet: ret})
}

type gaeTask[F Float] struct {
	a    GAEArgs[F]
	o    GAEOut[F]
	cost bool
	chk  []float64
}

func (t *gaeTask[F]) rows(lo, hi int) {
	a := t.a
	L, S := a.L, a.Start
	N := L - S
	g, gl := a.Gamma, a.Gamma*a.Lambda
	for i := lo; i < hi; i++ {
		m := a.SeqMask[i*L : (i+1)*L]
		vr, rr := a.RewardValues[i*L:(i+1)*L], a.Rewards[i*L:(i+1)*L]
		adv, ret := t.o.RewardAdv[i*N:(i+1)*N], t.o.RewardRet[i*N:(i+1)*N]
		if !t.cost {
			nv, last := 0.0, 0.0
			for j := L - 1; j >= S; j-- {
				mv := float64(m[j])
				v := float64(vr[j]) * mv
				last = float64(rr[j])*mv + g*nv - v + gl*last
				adv[j-S], ret[j-S] = F(last), F(last+v)
				nv = v
			}
			t.chk[i] = last + nv
			continue
		}
		vc, rc := a.CostValues[i*L:(i+1)*L], a.Costs[i*L:(i+1)*L]
		cadv, cret := t.o.CostAdv[i*N:(i+1)*N], t.o.CostRet[i*N:(i+1)*N]
		nvr, lastr, nvc, lastc := 0.0, 0.0, 0.0, 0.0
		for j := L - 1; j >= S; j-- {
			mv := float64(m[j])
			v := float64(vr[j]) * mv
			// Same evaluation order as the reference: ((r + γ·V_{t+1}) − V_t) + (γλ)·A_{t+1}.
			lastr = float64(rr[j])*mv + g*nvr - v + gl*lastr
			adv[j-S], ret[j-S] = F(lastr), F(lastr+v)
			nvr = v
			w := float64(vc[j]) * mv
			lastc = float64(rc[j])*mv + g*nvc - w + gl*lastc
			cadv[j-S], cret[j-S] = F(lastc), F(lastc+w)
			nvc = w
		}
		t.chk[i] = lastr + nvr + lastc + nvc
	}
}

// NewGAEOut allocates the outputs of GAE for B rows of width n = L − start
// (the cost pair only if cost is true).
func NewGAEOut[F Float](B, n int, cost bool) GAEOut[F] {
	o := GAEOut[F]{RewardAdv: make([]F, B*n), RewardRet: make([]F, B*n)}
	if cost {
		o.CostAdv, o.CostRet = make([]F, B*n), make([]F, B*n)
	}
	return o
}
