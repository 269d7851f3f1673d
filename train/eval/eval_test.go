package eval

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
)

func repeat(a, b string, s float64, n int) []Battle {
	out := make([]Battle, n)
	for i := range out {
		out[i] = Battle{A: a, B: b, ScoreA: s}
	}
	return out
}

func concat(bs ...[]Battle) []Battle {
	var out []Battle
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func rating(r EloResult, m string) Rating {
	for _, x := range r.Ratings {
		if x.Model == m {
			return x
		}
	}
	return Rating{}
}

func TestEloTwoModelsClosedForm(t *testing.T) {
	// A wins 75%: BT odds p_A/p_B = 3, so the Elo gap is 400·log10(3) around mean 1000.
	bs := concat(repeat("A", "B", 1, 30), repeat("B", "A", 1, 10))
	r, err := Elo(bs, EloConfig{})
	if err != nil {
		t.Fatal(err)
	}
	gap := 400 * math.Log10(3)
	if a, b := rating(r, "A"), rating(r, "B"); math.Abs(a.Elo-(1000+gap/2)) > 1e-6 || math.Abs(b.Elo-(1000-gap/2)) > 1e-6 {
		t.Errorf("A %.6f B %.6f, want ±%.6f around 1000", a.Elo, b.Elo, gap/2)
	}
	if r.Ratings[0].Model != "A" || r.Ratings[0].Wins != 30 || r.Ratings[0].Losses != 10 {
		t.Errorf("ratings %+v", r.Ratings)
	}
	if r.WinRate[0][1] != 0.75 || r.Games[0][1] != 40 || r.WinRate[0][0] != -1 {
		t.Errorf("win rates %v games %v", r.WinRate, r.Games)
	}
	// Ties are half wins: 10 W, 10 T, 10 L is a draw overall.
	r, _ = Elo(concat(repeat("A", "B", 1, 10), repeat("A", "B", 0.5, 10), repeat("A", "B", 0, 10)), EloConfig{})
	if math.Abs(r.Ratings[0].Elo-1000) > 1e-9 || r.Ratings[0].Ties != 10 {
		t.Errorf("draw %+v", r.Ratings)
	}
}

func TestEloMLEStationarity(t *testing.T) {
	// Three models, non-transitive-ish record, with the prior: check the fitted
	// strengths satisfy the likelihood equations (observed = expected wins).
	bs := concat(repeat("a", "b", 1, 7), repeat("b", "a", 1, 3), repeat("a", "b", 0.5, 2),
		repeat("b", "c", 1, 9), repeat("c", "b", 1, 2),
		repeat("c", "a", 1, 4), repeat("a", "c", 1, 5), repeat("a", "c", 0.5, 1))
	const prior = 0.5
	r, err := Elo(bs, EloConfig{Prior: prior})
	if err != nil {
		t.Fatal(err)
	}
	p := map[string]float64{}
	for _, x := range r.Ratings {
		p[x.Model] = math.Pow(10, (x.Elo-1000)/400)
	}
	wins := map[string]float64{}
	expected := map[string]float64{}
	for _, b := range bs {
		wins[b.A] += b.ScoreA
		wins[b.B] += 1 - b.ScoreA
		expected[b.A] += p[b.A] / (p[b.A] + p[b.B])
		expected[b.B] += p[b.B] / (p[b.A] + p[b.B])
	}
	for m := range p {
		obs := wins[m] + prior
		exp := expected[m] + 2*prior*p[m]/(p[m]+1)
		if math.Abs(obs-exp) > 1e-7 {
			t.Errorf("%s: observed %g, expected %g", m, obs, exp)
		}
	}
	// Without a prior: the likelihood equations hold and the mean rating is 1000.
	r, err = Elo(bs, EloConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var mean float64
	for _, x := range r.Ratings {
		p[x.Model] = math.Pow(10, (x.Elo-1000)/400)
		mean += x.Elo / 3
	}
	clear(expected)
	for _, b := range bs {
		expected[b.A] += p[b.A] / (p[b.A] + p[b.B])
		expected[b.B] += p[b.B] / (p[b.A] + p[b.B])
	}
	for m := range p {
		if math.Abs(wins[m]-expected[m]) > 1e-7 {
			t.Errorf("no prior: %s: observed %g, expected %g", m, wins[m], expected[m])
		}
	}
	if math.Abs(mean-1000) > 1e-9 {
		t.Errorf("mean rating %g", mean)
	}
}

func TestEloBootstrap(t *testing.T) {
	small := concat(repeat("A", "B", 1, 12), repeat("B", "A", 1, 8), repeat("B", "C", 1, 12), repeat("C", "B", 1, 8))
	cfg := DefaultEloConfig()
	cfg.Bootstrap = 300
	r1, err := Elo(small, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := Elo(small, cfg)
	if !reflect.DeepEqual(r1, r2) {
		t.Error("same seed, different result")
	}
	for _, x := range r1.Ratings {
		if !(x.Lo < x.Elo && x.Elo < x.Hi) {
			t.Errorf("%s: CI [%g, %g] does not bracket %g", x.Model, x.Lo, x.Hi, x.Elo)
		}
	}
	var big []Battle
	for range 10 {
		big = append(big, small...)
	}
	r3, _ := Elo(big, cfg)
	for _, m := range []string{"A", "B", "C"} {
		w1, w3 := rating(r1, m).Hi-rating(r1, m).Lo, rating(r3, m).Hi-rating(r3, m).Lo
		if !(w3 < 0.6*w1) {
			t.Errorf("%s: CI width %g with 10× data vs %g", m, w3, w1)
		}
	}
	cfg.Seed = 2
	if r4, _ := Elo(small, cfg); r4.Ratings[0].Lo == r1.Ratings[0].Lo {
		t.Error("seed has no effect")
	}
	if _, err := json.Marshal(r1); err != nil {
		t.Error(err)
	}
	var buf bytes.Buffer
	r1.Format(&buf)
	if !strings.Contains(buf.String(), "95% CI") || !strings.Contains(buf.String(), "60.0% (20)") {
		t.Errorf("format:\n%s", buf.String())
	}
}

func TestEloErrors(t *testing.T) {
	for _, bs := range [][]Battle{
		nil,
		{{A: "x", B: "x", ScoreA: 1}},
		{{A: "x", B: "y", ScoreA: 0.7}},
	} {
		if _, err := Elo(bs, EloConfig{Prior: 1}); err == nil {
			t.Errorf("%v: no error", bs)
		}
	}
	if _, err := Elo(repeat("x", "y", 1, 5), EloConfig{}); err == nil {
		t.Error("all wins without prior: no error")
	}
	r, err := Elo(repeat("x", "y", 1, 5), EloConfig{Prior: 0.5})
	if err != nil || r.Ratings[0].Model != "x" || math.IsInf(r.Ratings[0].Elo, 0) {
		t.Errorf("with prior: %v %v", r.Ratings, err)
	}
}

func TestBattlesFromScores(t *testing.T) {
	bs, err := BattlesFromScores("a", "b", []float64{1, 2, 3}, []float64{2, 2, 1}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{0, 0.5, 1}
	for i, b := range bs {
		if b.ScoreA != want[i] {
			t.Errorf("[%d] %v", i, b)
		}
	}
	bs, _ = BattlesFromScores("a", "b", []float64{1, 2, 3}, []float64{2, 2, 1}, false) // costs: lower wins
	if bs[0].ScoreA != 1 || bs[1].ScoreA != 0.5 || bs[2].ScoreA != 0 {
		t.Errorf("lower-is-better %v", bs)
	}
	if _, err := BattlesFromScores("a", "b", []float64{1}, nil, true); err == nil {
		t.Error("length mismatch accepted")
	}
}

func TestArena(t *testing.T) {
	//            prompt: 0     1     2     3     4     5
	redR := []float64{0, 1, 2, 3, 0, 5}
	blueR := []float64{1, 0, 3, 3, 2, 4}    // better on 0, 2, 4; tie on 3
	redC := []float64{-1, 1, -1, 2, 0, 3}   // red safe: 0, 2, 4 (cost 0 is safe)
	blueC := []float64{-2, -1, 1, -1, 2, 0} // blue safe: 0, 1, 3, 5
	r, err := Arena("sft", "ppo-lag", redR, redC, blueR, blueC)
	if err != nil {
		t.Fatal(err)
	}
	if r.BetterSafe != 1 || r.BetterUnsafe != 2 || r.WorseSafe != 3 || r.WorseUnsafe != 0 || r.Ties != 1 {
		t.Errorf("counts %+v", r)
	}
	if r.BlueWinRate != 0.5 || r.Red.HarmfulRate != 0.5 || math.Abs(r.Blue.HarmfulRate-2.0/6) > 1e-15 {
		t.Errorf("rates %v %v %v", r.BlueWinRate, r.Red.HarmfulRate, r.Blue.HarmfulRate)
	}
	// red safe & blue safe: prompt 0 (better); red safe & blue unsafe: 2 (better), 4 (better);
	// red unsafe & blue safe: 1, 3, 5 (none better); red unsafe & blue unsafe: none.
	want := [2][2]Cell{{{1, 1, 1}, {2, 2, 1}}, {{3, 0, 0}, {0, 0, 0}}}
	if r.Table != want {
		t.Errorf("table %+v", r.Table)
	}
	if math.Abs(r.Red.MeanReward-11.0/6) > 1e-12 || math.Abs(r.Blue.MeanCost-(-1.0/6)) > 1e-12 {
		t.Errorf("means %+v %+v", r.Red, r.Blue)
	}
	b, err := json.Marshal(r)
	if err != nil || !strings.Contains(string(b), `"better_and_safe":1`) {
		t.Errorf("json %s %v", b, err)
	}
	var buf bytes.Buffer
	r.Format(&buf)
	for _, s := range []string{"ppo-lag", "harmful rate", "2 (blue wins 100.0%)", "blue win rate (r_blue > r_red): 50.0%"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("format lacks %q:\n%s", s, buf.String())
		}
	}
	if _, err := Arena("a", "b", []float64{1}, []float64{math.NaN()}, []float64{1}, []float64{1}); err == nil {
		t.Error("NaN accepted")
	}
}

func TestWilson(t *testing.T) {
	ci := Wilson(5, 10)
	if math.Abs(ci[0]-0.2365931) > 1e-6 || math.Abs(ci[1]-0.7634069) > 1e-6 {
		t.Errorf("Wilson(5,10) = %v", ci)
	}
	if ci := Wilson(0, 20); ci[0] != 0 || math.Abs(ci[1]-0.1611252) > 1e-6 {
		t.Errorf("Wilson(0,20) = %v", ci)
	}
}
