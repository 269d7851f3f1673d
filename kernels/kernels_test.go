package kernels

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

// rollout builds a random rollout of B rows and width L with left padding in
// the prompt region [0, start) and right padding after a random end.
func rollout(rng *rand.Rand, B, L, start int) (mask []float64) {
	mask = make([]float64, B*L)
	for i := range B {
		p := rng.IntN(start + 1)
		end := start + rng.IntN(L-start)
		for t := p; t <= end; t++ {
			mask[i*L+t] = 1
		}
	}
	return mask
}

func randn(rng *rand.Rand, n int, scale float64) []float64 {
	x := make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64() * scale
	}
	return x
}

func slice(x []float64, B, L, start int) []float64 {
	y := make([]float64, 0, B*(L-start))
	for i := range B {
		y = append(y, x[i*L+start:(i+1)*L]...)
	}
	return y
}

func TestMaskedMeanEmptyRows(t *testing.T) {
	x := []float64{1, 2, 3, 4, 5, 6}
	tests := []struct {
		name string
		mask []float64
		want float64
	}{
		{"all", []float64{1, 1, 1, 1, 1, 1}, (2 + 5) / 2.0},
		{"row1 empty", []float64{1, 1, 0, 0, 0, 0}, 1.5},
		{"all empty", []float64{0, 0, 0, 0, 0, 0}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MaskedMean(nil, x, tc.mask, 2, 3)
			if err != nil || got != tc.want {
				t.Fatalf("MaskedMean = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestNonFiniteNamesTensor(t *testing.T) {
	B, N := 2, 3
	ones := []float64{1, 1, 1, 1, 1, 1}
	bad := []float64{0, 0, 0, 0, math.NaN(), 0}
	z := make([]float64, B*N)
	_, err := ActorLossPPOLag(nil, ActorArgs[float64]{B: B, N: N, ClipRatio: 0.2, Lambda: 1, LogProbs: z, OldLogProbs: z,
		RewardAdv: z, CostAdv: bad, Mask: ones}, nil)
	if !errors.Is(err, ErrNonFinite) || !contains(err.Error(), "cost_advantages") {
		t.Errorf("actor: err = %v, want ErrNonFinite naming cost_advantages", err)
	}
	_, err = CriticLoss(nil, CriticArgs[float64]{B: B, N: N, ClipValue: 5, Values: z, OldValues: z, Returns: bad, Mask: ones}, nil)
	if !errors.Is(err, ErrNonFinite) || !contains(err.Error(), "returns") {
		t.Errorf("critic: err = %v", err)
	}
	err = GAE1(nil, B, N, 0, 1, 0.95, bad, z, ones, make([]float64, 6), make([]float64, 6))
	if !errors.Is(err, ErrNonFinite) || !contains(err.Error(), "reward_values") {
		t.Errorf("gae: err = %v", err)
	}
	_, err = KLShapedRewards(nil, KLArgs[float64]{B: B, L: N, KLCoeff: 0.1, ClipRangeScore: 5, Reward: []float64{0, math.Inf(1)},
		LogProbs: z, RefLogProbs: z, SeqMask: ones}, make([]float64, 6))
	if !errors.Is(err, ErrNonFinite) || !contains(err.Error(), "reward") {
		t.Errorf("kl: err = %v", err)
	}
	_, err = MaskedMean(nil, []float64{1, math.Inf(-1)}, []float64{1, 0}, 1, 2)
	if !errors.Is(err, ErrNonFinite) || !contains(err.Error(), `"x"`) {
		t.Errorf("masked mean: err = %v", err)
	}
	_, err = MaskedMean(nil, []float64{1, 2}, []float64{1}, 1, 2)
	if !errors.Is(err, ErrShape) {
		t.Errorf("masked mean shape: err = %v", err)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestParallelEqualsSerial runs every row kernel on a shape large enough to be
// split and checks bit equality with the single-threaded result.
func TestParallelEqualsSerial(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	B, L, S := 64, 1100, 100
	N := L - S
	m := rollout(rng, B, L, S)
	lp, ref, v, c := randn(rng, B*L, 1), randn(rng, B*L, 1), randn(rng, B*L, 1), randn(rng, B*L, 1)
	reward, cost := randn(rng, B, 1), randn(rng, B, 1)
	ws := NewWorkspace(4)
	defer ws.Close()
	run := func(ws *Workspace) []float64 {
		rw, cs := make([]float64, B*L), make([]float64, B*L)
		st, err := KLShapedRewardsCosts(ws, KLArgs[float64]{B: B, L: L, KLCoeff: 0.01, ClipRangeScore: 50, Start: S, Reward: reward, Cost: cost,
			LogProbs: lp, RefLogProbs: ref, SeqMask: m}, rw, cs)
		if err != nil {
			t.Fatal(err)
		}
		o := NewGAEOut[float64](B, N, true)
		if err := GAE(ws, GAEArgs[float64]{B: B, L: L, Start: S, Gamma: 1, Lambda: 0.95, RewardValues: v, Rewards: rw, CostValues: c, Costs: cs, SeqMask: m}, o); err != nil {
			t.Fatal(err)
		}
		g := make([]float64, B*N)
		ms := slice(m, B, L, S)
		ar, err := ActorLossPPOLag(ws, ActorArgs[float64]{B: B, N: N, ClipRatio: 0.2, Lambda: 0.7, LogProbs: slice(ref, B, L, S), OldLogProbs: slice(lp, B, L, S),
			RewardAdv: o.RewardAdv, CostAdv: o.CostAdv, Mask: ms}, g)
		if err != nil {
			t.Fatal(err)
		}
		gc := make([]float64, B*N)
		cl, err := CriticLoss(ws, CriticArgs[float64]{B: B, N: N, ClipValue: 0.5, Values: slice(c, B, L, S), OldValues: slice(v, B, L, S), Returns: o.RewardRet, Mask: ms}, gc)
		if err != nil {
			t.Fatal(err)
		}
		mm, err := MaskedMean(ws, o.CostRet, ms, B, N)
		if err != nil {
			t.Fatal(err)
		}
		out := append(append(append(append(append(rw, cs...), o.RewardAdv...), o.CostRet...), g...), gc...)
		return append(out, st.KL, st.RewardWithKLPenalty, ar.Loss, ar.ClipFrac, ar.ApproxKL, cl, mm)
	}
	a, b := run(nil), run(ws)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("element %d: serial %v parallel %v", i, a[i], b[i])
		}
	}
}

// TestGradients checks the analytic actor and critic gradients against central differences.
func TestGradients(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	B, N := 3, 7
	m := rollout(rng, B, N, 1)
	m[2*N+0], m[2*N+1] = 0, 0 // make sure rows differ in length
	lp, old := randn(rng, B*N, 0.3), randn(rng, B*N, 0.3)
	ar, ac := randn(rng, B*N, 1), randn(rng, B*N, 1)
	for _, lag := range []bool{true, false} {
		a := ActorArgs[float64]{B: B, N: N, ClipRatio: 0.2, Lambda: 0.6, LogProbs: lp, OldLogProbs: old, RewardAdv: ar, CostAdv: ac, Mask: m}
		f := ActorLossPPO[float64]
		if lag {
			f = ActorLossPPOLag[float64]
		} else {
			a.CostAdv = nil
		}
		g := make([]float64, B*N)
		if _, err := f(nil, a, g); err != nil {
			t.Fatal(err)
		}
		for i := range lp {
			x := lp[i]
			h := 1e-6
			lp[i] = x + h
			p, _ := f(nil, a, nil)
			lp[i] = x - h
			q, _ := f(nil, a, nil)
			lp[i] = x
			if num := (p.Loss - q.Loss) / (2 * h); math.Abs(num-g[i]) > 1e-6 {
				t.Errorf("actor lag=%v grad[%d] = %v, numeric %v", lag, i, g[i], num)
			}
		}
	}
	v, vo, ret := randn(rng, B*N, 1), randn(rng, B*N, 1), randn(rng, B*N, 1)
	a := CriticArgs[float64]{B: B, N: N, ClipValue: 0.5, Values: v, OldValues: vo, Returns: ret, Mask: m}
	g := make([]float64, B*N)
	if _, err := CriticLoss(nil, a, g); err != nil {
		t.Fatal(err)
	}
	for i := range v {
		x, h := v[i], 1e-6
		v[i] = x + h
		p, _ := CriticLoss(nil, a, nil)
		v[i] = x - h
		q, _ := CriticLoss(nil, a, nil)
		v[i] = x
		if num := (p - q) / (2 * h); math.Abs(num-g[i]) > 1e-6 {
			t.Errorf("critic grad[%d] = %v, numeric %v", i, g[i], num)
		}
	}
}

// TestNoAllocs checks that, with a warm Workspace, the float32 kernels allocate nothing, serial and parallel.
func TestNoAllocs(t *testing.T) {
	for _, shape := range []struct{ B, L int }{{4, 33}, {64, 1024}} {
		rng := rand.New(rand.NewPCG(5, 6))
		B, L, S := shape.B, shape.L, 8
		N := L - S
		f32 := func(x []float64) []float32 {
			y := make([]float32, len(x))
			for i, v := range x {
				y[i] = float32(v)
			}
			return y
		}
		m := f32(rollout(rng, B, L, S))
		lp, ref, v := f32(randn(rng, B*L, 1)), f32(randn(rng, B*L, 1)), f32(randn(rng, B*L, 1))
		reward := f32(randn(rng, B, 1))
		rw, cs := make([]float32, B*L), make([]float32, B*L)
		o := NewGAEOut[float32](B, N, true)
		g := make([]float32, B*N)
		ms, lps := make([]float32, B*N), make([]float32, B*N)
		ids1, ids2 := make([]int32, B*L), make([]int32, B*L)
		for i := range ids2 {
			ids2[i] = int32(i % L)
		}
		ends1, ends2 := make([]float32, B), make([]float32, B)
		ws := NewWorkspace(2)
		call := func() {
			if _, err := KLShapedRewardsCosts(ws, KLArgs[float32]{B: B, L: L, KLCoeff: 0.01, ClipRangeScore: 50, Start: S, Reward: reward, Cost: reward,
				LogProbs: lp, RefLogProbs: ref, SeqMask: m}, rw, cs); err != nil {
				t.Fatal(err)
			}
			if err := GAE(ws, GAEArgs[float32]{B: B, L: L, Start: S, Gamma: 1, Lambda: 0.95, RewardValues: v, Rewards: rw, CostValues: v, Costs: cs, SeqMask: m}, o); err != nil {
				t.Fatal(err)
			}
			if _, err := ActorLossPPOLag(ws, ActorArgs[float32]{B: B, N: N, ClipRatio: 0.2, Lambda: 1, LogProbs: lps, OldLogProbs: lps, RewardAdv: o.RewardAdv, CostAdv: o.CostAdv, Mask: ms}, g); err != nil {
				t.Fatal(err)
			}
			if _, err := CriticLoss(ws, CriticArgs[float32]{B: B, N: N, ClipValue: 5, Values: o.RewardRet, OldValues: o.CostRet, Returns: o.RewardAdv, Mask: ms}, g); err != nil {
				t.Fatal(err)
			}
			if _, err := MaskedMean(ws, o.RewardAdv, ms, B, N); err != nil {
				t.Fatal(err)
			}
			if _, err := CostLoss(ws, SafetyPreferenceArgs[float32]{B: B, T: L, LossType: TokenWise, Regularization: 0.1, SaferIDs: ids1, UnsaferIDs: ids2,
				SaferMask: m, UnsaferMask: m, SaferScores: lp, UnsaferScores: ref, SaferSign: reward, UnsaferSign: reward}, ends1, ends2); err != nil {
				t.Fatal(err)
			}
		}
		if n := testing.AllocsPerRun(20, call); n != 0 {
			t.Errorf("B=%d L=%d: %v allocations per call, want 0", B, L, n)
		}
		ws.Close()
	}
}

func TestEndScores(t *testing.T) {
	mask := []float32{1, 1, 0, 0, 0, 0, 1, 1, 1}
	s := []float32{1, 2, 3, 4, 5, 6, 7, 8, 9}
	c := []float32{-1, -2, -3, -4, -5, -6, -7, -8, -9}
	er, ec, idx := make([]float32, 3), make([]float32, 3), make([]int32, 3)
	if err := EndScores(3, 3, mask, s, c, er, ec, idx); err != nil {
		t.Fatal(err)
	}
	if er[0] != 2 || ec[0] != -2 || idx[0] != 1 || er[1] != 0 || idx[1] != -1 || er[2] != 9 || ec[2] != -9 || idx[2] != 2 {
		t.Errorf("EndScores = %v %v %v", er, ec, idx)
	}
}

func TestLagrangeNeverInf(t *testing.T) {
	l, err := NewLagrange(LagrangeConfig{LambdaInit: 1, LambdaLR: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.AddEpisodeCosts([]float64{10, 20, 30}); err != nil {
		t.Fatal(err)
	}
	for step := range 200 {
		s := l.Update(step)
		if math.IsInf(s.Lambda, 0) || math.IsNaN(s.Lambda) || s.LogLambdaAfter > MaxLogLambda {
			t.Fatalf("step %d: λ = %v, log λ = %v", step, s.Lambda, s.LogLambdaAfter)
		}
	}
	if l.LogLambda() != MaxLogLambda {
		t.Errorf("log λ = %v, want the cap %v", l.LogLambda(), MaxLogLambda)
	}
}

func TestLagrangeWindowDelayAndResume(t *testing.T) {
	cfg := LagrangeConfig{LambdaInit: 0.5, LambdaLR: 0.05, LambdaMax: 2, DelaySteps: 2, WindowSize: 3, Threshold: -1}
	a, _ := NewLagrange(cfg)
	_ = a.AddEpisodeCosts([]float64{1, 2, 3, 4, 5})
	if got := a.EpisodeCost(); got != 4 {
		t.Errorf("window mean = %v, want 4 (last 3 costs)", got)
	}
	if s := a.Update(1); s.Applied || a.Lambda() != 0.5 {
		t.Errorf("update before delay applied: %+v", s)
	}
	s := a.Update(2)
	want := math.Log(0.5) + 0.05*(4+1)*0.5
	if !s.Applied || math.Abs(s.LogLambdaAfter-want) > 1e-15 {
		t.Errorf("update = %+v, want log λ %v", s, want)
	}
	for range 50 {
		a.Update(3)
	}
	if math.Abs(a.Lambda()-2) > 1e-12 {
		t.Errorf("λ = %v, want λ_max 2", a.Lambda())
	}
	// Round-trip through JSON, then both must evolve identically.
	js, err := json.Marshal(a.State())
	if err != nil {
		t.Fatal(err)
	}
	var st LagrangeState
	if err := json.Unmarshal(js, &st); err != nil {
		t.Fatal(err)
	}
	b, _ := NewLagrange(cfg)
	if err := b.SetState(st); err != nil {
		t.Fatal(err)
	}
	for k := range 5 {
		_ = a.AddEpisodeCosts([]float64{-3 + float64(k)})
		_ = b.AddEpisodeCosts([]float64{-3 + float64(k)})
		if sa, sb := a.Update(10+k), b.Update(10+k); sa != sb {
			t.Fatalf("resumed multiplier diverged: %+v vs %+v", sa, sb)
		}
	}
}

func TestLagrangePID(t *testing.T) {
	cfg := LagrangeConfig{Method: LagrangePID, LambdaInit: 0, KP: 0.5, KI: 0.1, KD: 1, LambdaMax: 3, WindowSize: 4, Threshold: 1}
	l, err := NewLagrange(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_ = l.AddEpisodeCosts([]float64{3, 3, 3, 3}) // J_c = 3, e = 2
	s := l.Update(0)
	// First step: I = 2, no derivative yet: λ = 0.5·2 + 0.1·2 = 1.2.
	if math.Abs(s.Lambda-1.2) > 1e-12 {
		t.Errorf("λ = %v, want 1.2", s.Lambda)
	}
	_ = l.AddEpisodeCosts([]float64{7, 7, 7, 7}) // J_c = 7, e = 6, I = 8, D = 4
	if s := l.Update(1); s.Lambda != 3 {
		t.Errorf("λ = %v, want clamp at λ_max 3", s.Lambda)
	}
	_ = l.AddEpisodeCosts([]float64{-10, -10, -10, -10})
	for k := range 100 {
		l.Update(2 + k)
	}
	if st := l.State(); l.Lambda() != 0 || st.Integral != 0 {
		t.Errorf("after a long safe stretch λ = %v, I = %v; want 0, 0 (anti-windup)", l.Lambda(), st.Integral)
	}
	if _, err := json.Marshal(l.State()); err != nil {
		t.Errorf("PID state not JSON-able: %v", err)
	}
}

func TestNormalizerIdentity(t *testing.T) {
	n, err := NewNormalizer("None", Affine, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = n.Update([]float64{5, 6, 7})
	if n.Count != 3 || n.Mean != 0 || n.Var != 1 {
		t.Errorf("identity normalizer state %+v", n)
	}
	if got := n.Normalize(2); math.Abs(got-2/(1+1e-8)) > 1e-15 {
		t.Errorf("Normalize(2) = %v", got)
	}
}
