// Package refcheck runs the reference implementation's test vectors (the golden
// files of assets/golden, schema in its README) through every implementation
// path of the kernels and reports the largest relative error per file and path.
//
// Relative error of one output tensor (or scalar) g against the reference w:
//
//	err = max_i |g_i − w_i| / max(max_i |w_i|, 1e-6)
//
// i.e. the ∞-norm error relative to the ∞-norm of the expected tensor (a
// normwise error, robust to elements that are small only by cancellation); a
// file's error is the largest over its cases and outputs.
package refcheck

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/saferlhf/saferlhf/kernels"
)

// ErrFloor is the smallest denominator of the relative error.
const ErrFloor = 1e-6

// RelErr returns the normwise relative error of got against want (see the package comment).
func RelErr(got, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	num, den := 0.0, ErrFloor
	for i, w := range want {
		d := math.Abs(got[i] - w)
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		num = math.Max(num, d)
		den = math.Max(den, math.Abs(w))
	}
	return num / den
}

// FileResult is the outcome of one golden file.
type FileResult struct {
	File     string // base name
	Function string
	Cases    int
	// Skipped says why the file was not checked ("" if it was).
	Skipped string
	// MaxErr is the largest relative error per runner name; Worst names its output and case.
	MaxErr map[string]float64
	Worst  map[string]string
	// Tol is each runner's tolerance.
	Tol map[string]float64
}

// Failed reports whether any path of the file exceeds its tolerance.
func (f FileResult) Failed() bool {
	for k, e := range f.MaxErr {
		if !(e <= f.Tol[k]) {
			return true
		}
	}
	return false
}

// checker decodes one case and runs it through one runner, recording errors into rec.
type checker func(c fields, r Runner, rec func(output string, got, want []float64)) error

// functions maps the prefix of a file's "function" field to its checker, in
// match order (more specific prefixes first).
var functions = []struct {
	prefix string
	check  checker
}{
	{"safe_rlhf/utils.py:masked_mean", checkMaskedMean},
	{"safe_rlhf/trainers/rl_trainer.py:RLTrainer.get_advantages_and_returns", checkGAE},
	{"safe_rlhf/trainers/rl_trainer.py:RLTrainer.critic_loss_fn", checkCritic},
	{"safe_rlhf/algorithms/ppo_lag/trainer.py:PPOLagTrainer.actor_loss_fn", checkActor(true)},
	{"safe_rlhf/algorithms/ppo/trainer.py:PPOTrainer.actor_loss_fn", checkActor(false)},
	{"safe_rlhf/algorithms/ppo_lag/trainer.py:PPOLagTrainer.add_kl_divergence_regularization", checkKL(true)},
	{"safe_rlhf/algorithms/ppo/trainer.py:PPOTrainer.add_kl_divergence_regularization", checkKL(false)},
	{"safe_rlhf/algorithms/ppo_lag/trainer.py:PPOLagTrainer.__init__", checkLambda},
	{"safe_rlhf/values/reward/trainer.py:RewardTrainer.loss", checkRewardLoss},
	{"safe_rlhf/values/cost/trainer.py:CostTrainer.loss", checkCostLoss},
	{"safe_rlhf/models/normalizer.py", checkNormalizer},
	{"composition of PPOLagTrainer.add_kl_divergence_regularization", checkPPOLagStep},
}

func lookup(function string) checker {
	for _, f := range functions {
		if strings.HasPrefix(function, f.prefix) {
			return f.check
		}
	}
	return nil
}

// Run checks every *.json file directly in dir (subdirectories are skipped)
// with every runner. It returns an error, naming the file and the case, when a
// file is malformed or a kernel fails on a case; tolerance failures are
// reported through FileResult.Failed.
func Run(dir string, runners ...Runner) ([]FileResult, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("refcheck: no *.json files in %s", dir)
	}
	sort.Strings(paths)
	var out []FileResult
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return out, err
		}
		fr, err := CheckFile(filepath.Base(p), data, runners...)
		if err != nil {
			return out, err
		}
		out = append(out, fr)
	}
	return out, nil
}

// CheckFile checks one golden file's contents (name is used in messages).
func CheckFile(name string, data []byte, runners ...Runner) (FileResult, error) {
	fr := FileResult{File: name, MaxErr: map[string]float64{}, Worst: map[string]string{}, Tol: map[string]float64{}}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return fr, fmt.Errorf("%s: malformed JSON: %v", name, err)
	}
	fn, hasFn := top["function"]
	cs, hasCases := top["cases"]
	if !hasFn || !hasCases {
		fr.Skipped = "not a kernel vector file (no function/cases)"
		return fr, nil
	}
	if err := json.Unmarshal(fn, &fr.Function); err != nil {
		return fr, fmt.Errorf("%s: field \"function\": want a string: %v", name, err)
	}
	check := lookup(fr.Function)
	if check == nil {
		fr.Skipped = "no kernel for this function"
		return fr, nil
	}
	var cases []fields
	if err := json.Unmarshal(cs, &cases); err != nil {
		return fr, fmt.Errorf("%s: field \"cases\": want an array of objects: %v", name, err)
	}
	fr.Cases = len(cases)
	for _, r := range runners {
		fr.MaxErr[r.Name()] = 0
		fr.Tol[r.Name()] = r.Tol()
	}
	for i, c := range cases {
		if c == nil {
			return fr, fmt.Errorf("%s: case %d: not an object", name, i)
		}
		for _, r := range runners {
			rec := func(output string, got, want []float64) {
				e := RelErr(got, want)
				if e > fr.MaxErr[r.Name()] || math.IsNaN(e) {
					fr.MaxErr[r.Name()] = e
					fr.Worst[r.Name()] = fmt.Sprintf("case %d %s", i, output)
				}
			}
			if err := check(c, r, rec); err != nil {
				return fr, fmt.Errorf("%s: case %d: %s path: %w", name, i, r.Name(), err)
			}
		}
	}
	return fr, nil
}

func one(x float64) []float64 { return []float64{x} }

// asF32 rounds a fraction to float32: the reference computes its accuracies as
// (a > b).float().mean(), a float32 value even in the float64 vectors.
func asF32(x float64) float64 { return float64(float32(x)) }

func checkMaskedMean(c fields, r Runner, rec func(string, []float64, []float64)) error {
	rd := &reader{c: c}
	B, N := rd.int("B"), rd.int("N")
	x, m := rd.mat("x", B, N), rd.mask("mask", B, N)
	out, outNo := rd.float("out"), rd.float("out_no_mask")
	if rd.err != nil {
		return rd.err
	}
	got, err := r.MaskedMean(x, m, B, N)
	if err != nil {
		return err
	}
	rec("out", one(got), one(out))
	got, err = r.MaskedMean(x, nil, B, N)
	if err != nil {
		return err
	}
	rec("out_no_mask", one(got), one(outNo))
	return nil
}

// readAll reads each named field with read, stopping at the first error.
func readAll[T any](names []string, read func(name string) (T, error)) ([]T, error) {
	out := make([]T, len(names))
	for i, n := range names {
		v, err := read(n)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// dims reads the named non-negative integers.
func dims(c fields, names ...string) ([]int, error) { return readAll(names, c.int) }

// floats reads the named numbers.
func floats(c fields, names ...string) ([]float64, error) { return readAll(names, c.float) }

// mats reads the named [rows][cols] matrices.
func mats(c fields, rows, cols int, names ...string) ([][]float64, error) {
	return readAll(names, func(n string) ([]float64, error) { return c.mat(n, rows, cols) })
}

func checkGAE(c fields, r Runner, rec func(string, []float64, []float64)) error {
	rd := &reader{c: c}
	B, L, S := rd.int("B"), rd.int("L"), rd.int("start")
	if S > L {
		return fmt.Errorf("start %d > L %d", S, L)
	}
	f := rd.floats("gamma", "gae_lambda")
	in := rd.mats(B, L, "values", "rewards")
	m := rd.mask("sequence_mask", B, L)
	want := rd.mats(B, L-S, "advantages", "returns")
	if rd.err != nil {
		return rd.err
	}
	// The fused kernel runs both streams; the cost stream gets the same inputs.
	o, err := r.GAE(kernels.GAEArgs[float64]{B: B, L: L, Start: S, Gamma: f[0], Lambda: f[1],
		RewardValues: in[0], Rewards: in[1], CostValues: in[0], Costs: in[1], SeqMask: m})
	if err != nil {
		return err
	}
	rec("advantages", o.RewardAdv, want[0])
	rec("returns", o.RewardRet, want[1])
	rec("advantages(cost stream)", o.CostAdv, want[0])
	rec("returns(cost stream)", o.CostRet, want[1])
	return nil
}

func checkCritic(c fields, r Runner, rec func(string, []float64, []float64)) error {
	rd := &reader{c: c}
	B, N := rd.int("B"), rd.int("N")
	f := rd.floats("clip_range_value", "loss")
	in := rd.mats(B, N, "values", "old_values", "returns")
	m := rd.mask("mask", B, N)
	if rd.err != nil {
		return rd.err
	}
	got, err := r.Critic(kernels.CriticArgs[float64]{B: B, N: N, ClipValue: f[0], Values: in[0], OldValues: in[1], Returns: in[2], Mask: m})
	if err != nil {
		return err
	}
	rec("loss", one(got), one(f[1]))
	return nil
}

func checkActor(lag bool) checker {
	return func(c fields, r Runner, rec func(string, []float64, []float64)) error {
		rd := &reader{c: c}
		B, N := rd.int("B"), rd.int("N")
		f := rd.floats("clip_range_ratio", "loss")
		names := []string{"log_probs", "old_log_probs", "advantages"}
		if lag {
			names = []string{"log_probs", "old_log_probs", "reward_advantages", "cost_advantages"}
		}
		in := rd.mats(B, N, names...)
		m := rd.mask("mask", B, N)
		a := kernels.ActorArgs[float64]{B: B, N: N, ClipRatio: f[0], LogProbs: in[0], OldLogProbs: in[1], RewardAdv: in[2], Mask: m}
		if lag {
			// The reference reads λ = self.log_lambda.exp().item().
			a.Lambda, a.CostAdv = math.Exp(rd.float("log_lambda")), in[3]
		}
		if rd.err != nil {
			return rd.err
		}
		got, err := r.Actor(a, lag)
		if err != nil {
			return err
		}
		rec("loss", one(got.Loss), one(f[1]))
		return nil
	}
}

func checkKL(lag bool) checker {
	return func(c fields, r Runner, rec func(string, []float64, []float64)) error {
		rd := &reader{c: c}
		B, L := rd.int("B"), rd.int("L")
		f := rd.floats("kl_coeff", "clip_range_score")
		reward := rd.vec("reward", B)
		var cost []float64
		if lag {
			cost = rd.vec("cost", B)
		}
		in := rd.mats(B, L, "log_probs", "ref_log_probs")
		m := rd.mask("sequence_mask", B, L)
		wr := rd.mat("rewards", B, L)
		if rd.err != nil {
			return rd.err
		}
		rw, cs, _, err := r.KLShape(kernels.KLArgs[float64]{B: B, L: L, KLCoeff: f[0], ClipRangeScore: f[1],
			Reward: reward, Cost: cost, LogProbs: in[0], RefLogProbs: in[1], SeqMask: m}, lag)
		if err != nil {
			return err
		}
		rec("rewards", rw, wr)
		if lag {
			wc := rd.mat("costs", B, L)
			if rd.err != nil {
				return rd.err
			}
			rec("costs", cs, wc)
		}
		return nil
	}
}

func checkLambda(c fields, r Runner, rec func(string, []float64, []float64)) error {
	var cfgF fields
	if err := c.decode("config", "an object", &cfgF); err != nil {
		return err
	}
	f, err := floats(cfgF, "lambda_init", "lambda_lr", "threshold")
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	lmax, hasMax, err := cfgF.optFloat("lambda_max")
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	di, err := dims(cfgF, "lambda_update_delay_steps", "episode_cost_window_size")
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cfg := kernels.LagrangeConfig{LambdaInit: f[0], LambdaLR: f[1], Threshold: f[2], DelaySteps: di[0], WindowSize: di[1]}
	if hasMax {
		cfg.LambdaMax = lmax
	}
	init, err := c.float("initial_log_lambda")
	if err != nil {
		return err
	}
	var rounds []fields
	if err := c.decode("rounds", "an array of objects", &rounds); err != nil {
		return err
	}
	var rs []LambdaRound
	var wantLog, wantLam, wantJc []float64
	for k, rd := range rounds {
		var lr LambdaRound
		if err := rd.decode("rollout_costs", "arrays of numbers", &lr.Costs); err != nil {
			return fmt.Errorf("round %d: %w", k, err)
		}
		var steps []fields
		if err := rd.decode("rl_steps", "an array of objects", &steps); err != nil {
			return fmt.Errorf("round %d: %w", k, err)
		}
		for j, st := range steps {
			gs, err := st.int("global_step")
			if err != nil {
				return fmt.Errorf("round %d step %d: %w", k, j, err)
			}
			v, err := floats(st, "log_lambda_after", "lambda_after", "episode_cost")
			if err != nil {
				return fmt.Errorf("round %d step %d: %w", k, j, err)
			}
			lr.Steps = append(lr.Steps, gs)
			wantLog, wantLam, wantJc = append(wantLog, v[0]), append(wantLam, v[1]), append(wantJc, v[2])
		}
		rs = append(rs, lr)
	}
	got, jc, err := r.Lagrange(cfg, init, rs)
	if err != nil {
		return err
	}
	rec("episode_cost", jc, wantJc)
	if len(got) != len(wantLog) {
		return fmt.Errorf("runner returned %d steps, want %d", len(got), len(wantLog))
	}
	lam := make([]float64, len(got))
	for i, g := range got {
		lam[i] = math.Exp(g)
	}
	rec("log_lambda_after", got, wantLog)
	rec("lambda_after", lam, wantLam)
	return nil
}

// pairCommon reads the fields shared by the reward- and cost-model loss cases;
// hi and lo name the two sides of the pair.
func pairCommon(rd *reader, hi, lo string) (B, T int, lt kernels.LossType, reg float64, ids [2][]int32, masks, scores [2][]float64) {
	B, T = rd.int("B"), rd.int("L")
	s := rd.str("loss_type")
	lt = get(rd, func() (kernels.LossType, error) { return kernels.ParseLossType(s) })
	reg = rd.float("regularization")
	for k, n := range []string{hi, lo} {
		ids[k] = rd.imat(n+"_input_ids", B, T)
		masks[k] = rd.mask(n+"_attention_mask", B, T)
		scores[k] = rd.mat("scores_"+n, B, T)
	}
	return
}

func checkRewardLoss(c fields, r Runner, rec func(string, []float64, []float64)) error {
	rd := &reader{c: c}
	B, T, lt, reg, ids, masks, scores := pairCommon(rd, "better", "worse")
	f := rd.floats("loss", "accuracy")
	hi, lo := rd.vec("higher_end_reward", B), rd.vec("lower_end_reward", B)
	if rd.err != nil {
		return rd.err
	}
	res, be, we, err := r.RewardLoss(kernels.PreferenceArgs[float64]{B: B, T: T, LossType: lt, Regularization: reg,
		BetterIDs: ids[0], WorseIDs: ids[1], BetterMask: masks[0], WorseMask: masks[1], BetterScores: scores[0], WorseScores: scores[1]})
	if err != nil {
		return err
	}
	rec("loss", one(res.Loss), one(f[0]))
	rec("accuracy", one(asF32(res.Accuracy)), one(f[1]))
	rec("higher_end_reward", be, hi)
	rec("lower_end_reward", we, lo)
	return nil
}

func checkCostLoss(c fields, r Runner, rec func(string, []float64, []float64)) error {
	rd := &reader{c: c}
	B, T, lt, reg, ids, masks, scores := pairCommon(rd, "safer", "unsafer")
	f := rd.floats("loss", "accuracy", "accuracy_sign")
	ss, us := rd.vec("safer_safety_sign", B), rd.vec("unsafer_safety_sign", B)
	hi, lo := rd.vec("higher_end_cost", B), rd.vec("lower_end_cost", B)
	if rd.err != nil {
		return rd.err
	}
	res, se, ue, err := r.CostLoss(kernels.SafetyPreferenceArgs[float64]{B: B, T: T, LossType: lt, Regularization: reg,
		SaferIDs: ids[0], UnsaferIDs: ids[1], SaferMask: masks[0], UnsaferMask: masks[1], SaferScores: scores[0], UnsaferScores: scores[1],
		SaferSign: ss, UnsaferSign: us})
	if err != nil {
		return err
	}
	rec("loss", one(res.Loss), one(f[0]))
	rec("accuracy", one(asF32(res.Accuracy)), one(f[1]))
	rec("accuracy_sign", one(asF32(res.SignAccuracy)), one(f[2]))
	rec("higher_end_cost", ue, hi)
	rec("lower_end_cost", se, lo)
	return nil
}

func checkNormalizer(c fields, r Runner, rec func(string, []float64, []float64)) error {
	typ, err := c.optStr("normalizer_type")
	if err != nil {
		return err
	}
	fn, err := c.optStr("normalize_function")
	if err != nil {
		return err
	}
	if fn == "" {
		fn = string(kernels.Identity)
	}
	mom, _, err := c.optFloat("momentum")
	if err != nil {
		return err
	}
	n, err := kernels.NewNormalizer(kernels.NormalizerType(typ), kernels.NormalizeFunction(fn), mom)
	if err != nil {
		return err
	}
	if c.has("epsilon") {
		if n.Epsilon, err = c.float("epsilon"); err != nil {
			return err
		}
	}
	var steps []fields
	if err := c.decode("steps", "an array of objects", &steps); err != nil {
		return err
	}
	for k, st := range steps {
		batch, err := st.vec("batch", -1)
		if err != nil {
			return fmt.Errorf("step %d: %w", k, err)
		}
		probe, err := st.vec("probe", -1)
		if err != nil {
			return fmt.Errorf("step %d: %w", k, err)
		}
		want, err := st.vec("normalized_probe", len(probe))
		if err != nil {
			return fmt.Errorf("step %d: %w", k, err)
		}
		f, err := floats(st, "mean", "var", "count")
		if err != nil {
			return fmt.Errorf("step %d: %w", k, err)
		}
		got, err := r.Normalizer(n, batch, probe)
		if err != nil {
			return fmt.Errorf("step %d: %w", k, err)
		}
		rec(fmt.Sprintf("step %d mean", k), one(n.Mean), one(f[0]))
		rec(fmt.Sprintf("step %d var", k), one(n.Var), one(f[1]))
		rec(fmt.Sprintf("step %d count", k), one(float64(n.Count)), one(f[2]))
		rec(fmt.Sprintf("step %d normalized_probe", k), got, want)
	}
	return nil
}

func checkPPOLagStep(c fields, r Runner, rec func(string, []float64, []float64)) error {
	rd := &reader{c: c}
	B, L, S := rd.int("B"), rd.int("L"), rd.int("start")
	if S > L {
		return fmt.Errorf("start %d > L %d", S, L)
	}
	N := L - S
	f := rd.floats("lambda", "kl_coeff", "clip_range_score", "clip_range_ratio", "clip_range_value", "gamma", "gae_lambda")
	am := rd.mask("attention_mask", B, L+1)
	if rd.err != nil {
		return rd.err
	}
	m := make([]float64, 0, B*L)
	for i := range B {
		m = append(m, am[i*(L+1)+1:(i+1)*(L+1)]...)
	}
	reward, cost := rd.vec("reward", B), rd.vec("cost", B)
	in := rd.mats(B, L, "old_log_probs", "ref_log_probs", "log_probs", "old_reward_values", "old_cost_values", "reward_values", "cost_values", "old_rewards", "old_costs")
	oldLP, refLP, newLP, oldRV, oldCV, newRV, newCV := in[0], in[1], in[2], in[3], in[4], in[5], in[6]
	want := rd.mats(B, N, "reward_advantages", "reward_returns", "cost_advantages", "cost_returns")
	ws := rd.floats("actor_loss", "reward_critic_loss", "cost_critic_loss", "kl_divergence", "reward_with_kl_penalty")
	if rd.err != nil {
		return rd.err
	}
	rw, cs, st, err := r.KLShape(kernels.KLArgs[float64]{B: B, L: L, KLCoeff: f[1], ClipRangeScore: f[2], Start: S,
		Reward: reward, Cost: cost, LogProbs: oldLP, RefLogProbs: refLP, SeqMask: m}, true)
	if err != nil {
		return err
	}
	rec("old_rewards", rw, in[7])
	rec("old_costs", cs, in[8])
	rec("kl_divergence", one(st.KL), one(ws[3]))
	rec("reward_with_kl_penalty", one(st.RewardWithKLPenalty), one(ws[4]))
	o, err := r.GAE(kernels.GAEArgs[float64]{B: B, L: L, Start: S, Gamma: f[5], Lambda: f[6],
		RewardValues: oldRV, Rewards: rw, CostValues: oldCV, Costs: cs, SeqMask: m})
	if err != nil {
		return err
	}
	rec("reward_advantages", o.RewardAdv, want[0])
	rec("reward_returns", o.RewardRet, want[1])
	rec("cost_advantages", o.CostAdv, want[2])
	rec("cost_returns", o.CostRet, want[3])
	sl := func(x []float64) []float64 {
		y := make([]float64, 0, B*N)
		for i := range B {
			y = append(y, x[i*L+S:(i+1)*L]...)
		}
		return y
	}
	ms := sl(m)
	// Later stages consume the reference's own advantages so that each output is checked on its own.
	al, err := r.Actor(kernels.ActorArgs[float64]{B: B, N: N, ClipRatio: f[3], Lambda: f[0], LogProbs: sl(newLP), OldLogProbs: sl(oldLP),
		RewardAdv: want[0], CostAdv: want[2], Mask: ms}, true)
	if err != nil {
		return err
	}
	rec("actor_loss", one(al.Loss), one(ws[0]))
	rl, err := r.Critic(kernels.CriticArgs[float64]{B: B, N: N, ClipValue: f[4], Values: sl(newRV), OldValues: sl(oldRV), Returns: want[1], Mask: ms})
	if err != nil {
		return err
	}
	rec("reward_critic_loss", one(rl), one(ws[1]))
	cl, err := r.Critic(kernels.CriticArgs[float64]{B: B, N: N, ClipValue: f[4], Values: sl(newCV), OldValues: sl(oldCV), Returns: want[3], Mask: ms})
	if err != nil {
		return err
	}
	rec("cost_critic_loss", one(cl), one(ws[2]))
	return nil
}
