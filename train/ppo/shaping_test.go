package ppo

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func goldenPath(name string) string { return filepath.Join("..", "..", "assets", "golden", name) }

func readGolden(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(goldenPath(name))
	if err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
}

func flat32(x [][]float64) []float32 {
	var out []float32
	for _, r := range x {
		for _, v := range r {
			out = append(out, float32(v))
		}
	}
	return out
}

func close64(a, b, tol float64) bool { return math.Abs(a-b) <= tol*(1+math.Abs(b)) }

// TestStepComposition checks KL shaping, both GAEs and the logged statistics against the reference's
// rl_step composition (ppo_lag_step.json), through the same host functions the trainer calls.
func TestStepComposition(t *testing.T) {
	var g struct {
		Cases []struct {
			B, L                int
			S                   int `json:"prompt_width_S"`
			Start               int
			KLCoeff             float64 `json:"kl_coeff"`
			ClipRangeScore      float64 `json:"clip_range_score"`
			Gamma               float64
			GAELambda           float64     `json:"gae_lambda"`
			AttentionMask       [][]float64 `json:"attention_mask"`
			Reward, Cost        []float64
			OldLogProbs         [][]float64 `json:"old_log_probs"`
			RefLogProbs         [][]float64 `json:"ref_log_probs"`
			OldRewardValues     [][]float64 `json:"old_reward_values"`
			OldCostValues       [][]float64 `json:"old_cost_values"`
			OldRewards          [][]float64 `json:"old_rewards"`
			OldCosts            [][]float64 `json:"old_costs"`
			RewardAdvantages    [][]float64 `json:"reward_advantages"`
			RewardReturns       [][]float64 `json:"reward_returns"`
			CostAdvantages      [][]float64 `json:"cost_advantages"`
			CostReturns         [][]float64 `json:"cost_returns"`
			KLDivergence        float64     `json:"kl_divergence"`
			RewardWithKLPenalty float64     `json:"reward_with_kl_penalty"`
		}
	}
	readGolden(t, "ppo_lag_step.json", &g)
	for ci, c := range g.Cases {
		r := &Rollout{B: c.B, T: c.L + 1, S: c.S, Mask: flat32(c.AttentionMask), LogProbs: flat32(c.OldLogProbs),
			RefLogProbs: flat32(c.RefLogProbs), RewardValues: flat32(c.OldRewardValues), CostValues: flat32(c.OldCostValues)}
		for i := range c.Reward {
			r.Reward = append(r.Reward, float32(c.Reward[i]))
			r.Cost = append(r.Cost, float32(c.Cost[i]))
		}
		if r.Start() != c.Start {
			t.Fatalf("case %d: start %d, golden %d", ci, r.Start(), c.Start)
		}
		L, start := r.L(), r.Start()
		cfg := DefaultConfig(PPOLag)
		cfg.KLCoeff, cfg.ClipRangeScore, cfg.Gamma, cfg.GAELambda = c.KLCoeff, c.ClipRangeScore, c.Gamma, c.GAELambda
		sh, err := shapeAndGAE(nil, &cfg, r)
		if err != nil {
			t.Fatal(err)
		}
		rw, cs, ra, rr, ca, cr := sh.rewards, sh.costs, sh.rAdv, sh.rRet, sh.cAdv, sh.cRet
		const tol = 1e-5 // inputs went through float32
		for i := 0; i < r.B; i++ {
			for tt := 0; tt < L; tt++ {
				if !close64(rw[i*L+tt], c.OldRewards[i][tt], tol) || !close64(cs[i*L+tt], c.OldCosts[i][tt], tol) {
					t.Fatalf("case %d [%d,%d]: rewards/costs %g/%g, golden %g/%g", ci, i, tt, rw[i*L+tt], cs[i*L+tt], c.OldRewards[i][tt], c.OldCosts[i][tt])
				}
			}
			for tt := start; tt < L; tt++ {
				j := tt - start
				got := []float64{ra[i*L+tt], rr[i*L+tt], ca[i*L+tt], cr[i*L+tt]}
				want := []float64{c.RewardAdvantages[i][j], c.RewardReturns[i][j], c.CostAdvantages[i][j], c.CostReturns[i][j]}
				for k := range got {
					if !close64(got[k], want[k], 1e-4) {
						t.Fatalf("case %d [%d,%d] quantity %d: %g, golden %g", ci, i, tt, k, got[k], want[k])
					}
				}
			}
		}
		if !close64(sh.stats.KL, c.KLDivergence, 1e-4) {
			t.Errorf("case %d: kl_divergence %g, golden %g", ci, sh.stats.KL, c.KLDivergence)
		}
		if !close64(sh.stats.RewardWithKLPenalty, c.RewardWithKLPenalty, 1e-4) {
			t.Errorf("case %d: reward_with_kl_penalty %g, golden %g", ci, sh.stats.RewardWithKLPenalty, c.RewardWithKLPenalty)
		}
	}
}

// TestLambdaUpdate replays lambda_update.json through the trainer's multiplier.
func TestLambdaUpdate(t *testing.T) {
	var g struct {
		Cases []struct {
			Config struct {
				LambdaInit             float64  `json:"lambda_init"`
				LambdaLR               float64  `json:"lambda_lr"`
				LambdaMax              *float64 `json:"lambda_max"`
				LambdaUpdateDelaySteps int      `json:"lambda_update_delay_steps"`
				EpisodeCostWindowSize  int      `json:"episode_cost_window_size"`
				Threshold              float64
			}
			InitialLogLambda float64 `json:"initial_log_lambda"`
			UpdateIters      int     `json:"update_iters"`
			Rounds           []struct {
				RolloutCosts [][]float64 `json:"rollout_costs"`
				RLSteps      []struct {
					GlobalStep  int     `json:"global_step"`
					EpisodeCost float64 `json:"episode_cost"`
					After       float64 `json:"log_lambda_after"`
				} `json:"rl_steps"`
			}
		}
	}
	readGolden(t, "lambda_update.json", &g)
	for ci, c := range g.Cases {
		cfg := DefaultConfig(PPOLag)
		cfg.LambdaInit, cfg.LambdaLR, cfg.LambdaMax = c.Config.LambdaInit, c.Config.LambdaLR, 0
		if c.Config.LambdaMax != nil {
			cfg.LambdaMax = *c.Config.LambdaMax
		}
		cfg.LambdaUpdateDelaySteps, cfg.EpisodeCostWindowSize, cfg.Threshold = c.Config.LambdaUpdateDelaySteps, c.Config.EpisodeCostWindowSize, c.Config.Threshold
		l, err := newLagrange(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !close64(l.k.LogLambda(), c.InitialLogLambda, 1e-15) {
			t.Fatalf("case %d: initial log λ %g, golden %g", ci, l.k.LogLambda(), c.InitialLogLambda)
		}
		n := 0
		for _, rd := range c.Rounds {
			for _, costs := range rd.RolloutCosts {
				if err := l.AddCosts(flat32([][]float64{costs})); err != nil {
					t.Fatal(err)
				}
			}
			for _, st := range rd.RLSteps {
				if !close64(l.Jc(), st.EpisodeCost, 1e-6) {
					t.Fatalf("case %d step %d: J_c %g, golden %g", ci, st.GlobalStep, l.Jc(), st.EpisodeCost)
				}
				l.k.Update(st.GlobalStep)
				if !close64(l.k.LogLambda(), st.After, 1e-6) {
					t.Fatalf("case %d step %d: log λ %g, golden %g", ci, st.GlobalStep, l.k.LogLambda(), st.After)
				}
				n++
			}
		}
		if n == 0 {
			t.Fatalf("case %d: no steps", ci)
		}
	}
}
