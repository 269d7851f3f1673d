package stages

import (
	"bytes"
	stdctx "context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/saferlhf/saferlhf/native/engine"
	"github.com/saferlhf/saferlhf/train/metrics"
	"github.com/saferlhf/saferlhf/train/model"
)

// Parity of the native engine's training (--backend native) with the GoMLX
// graph (--backend go, the oracle): the same few steps of every supervised
// stage give the same loss trajectory, held-out metrics and final weights.
const (
	// nativeLossTol bounds |m_native − m_go| / max(|m_go|, 1e-2) for the loss and
	// the gradient norm, and / max(|m_go|, 1) for every other metric, at every
	// step (accuracies aside: fractions of ties broken by rounding).
	nativeLossTol = 1e-4
	// nativeWeightTol bounds ‖w_native − w_go‖ of each tensor relative to the
	// change training made to it, ‖w_go − w_init‖ (L2 norms): float32 sums in
	// different orders, amplified by AdamW's normalised first steps where a
	// gradient is near zero (such an element moves by ±lr on either side).
	nativeWeightTol = 1e-2
)

func skipNoNative(t *testing.T) {
	t.Helper()
	if !engine.Available {
		t.Skip("native engine not compiled in (CGO_ENABLED=0)")
	}
}

type nativeCase struct {
	name  string
	stage Stage
	data  []string
	mod   func(*Config)
}

func nativeCases() []nativeCase {
	prefs := []string{"pku-saferlhf/align-anything-preference-sample.json"}
	return []nativeCase{
		{"sft", SFT, []string{"helpful/hh-rlhf-helpful-base-test.jsonl.gz"}, nil},
		{"sft_accum_top1", SFT, []string{"helpful/hh-rlhf-helpful-base-test.jsonl.gz"}, func(c *Config) {
			c.Accumulation, c.TrainLayers, c.WeightDecay = 2, "top-1", 0.1
		}},
		{"rm_sequence", RM, prefs, func(c *Config) { c.Reg = 0.01 }},
		{"cm_token_signweight", CM, prefs, func(c *Config) {
			c.LossType, c.SignWeight, c.Reg = "token-wise", 0.5, 0.01
		}},
		{"cm_sequence", CM, prefs, nil},
		{"dpo", DPO, []string{"helpful/hh-rlhf-helpful-base-test.jsonl.gz"}, nil},
	}
}

// runCase trains one case on backend be and returns its metrics and final model.
func runCase(t *testing.T, tc nativeCase, be string) ([]metrics.Record, *model.Config, model.Weights) {
	t.Helper()
	var out string
	if tc.stage == DPO {
		c := tinyDPO(t, 3)
		c.Backend, c.MaxTrain = be, 16
		if _, err := RunDPO(stdctx.Background(), c); err != nil {
			t.Fatalf("%s on %s: %v", tc.name, be, err)
		}
		out = c.Out
	} else {
		c := nativeConfig(t, tc)
		c.Backend = be
		if _, err := Run(stdctx.Background(), tc.stage, c); err != nil {
			t.Fatalf("%s on %s: %v", tc.name, be, err)
		}
		out = c.Out
	}
	recs, err := metrics.Read(filepath.Join(out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	mcfg, w, err := model.LoadAny(filepath.Join(out, "model"))
	if err != nil {
		t.Fatal(err)
	}
	return recs, mcfg, w
}

// nativeConfig is a case's three-step run (of a stage other than DPO).
func nativeConfig(t *testing.T, tc nativeCase) Config {
	c := tinyConfig(t, tc.stage, tc.data...)
	c.MaxLength, c.BatchSize, c.Steps, c.Epochs, c.EvalMax, c.EvalRatio, c.MaxTrain = 40, 4, 3, 1, 4, 0.2, 32
	c.EvalEvery = 1
	if tc.mod != nil {
		tc.mod(&c)
	}
	return c
}

// TestNativeStagesMatchGraph trains each stage three steps on both backends.
func TestNativeStagesMatchGraph(t *testing.T) {
	skipNoNative(t)
	_, init, err := model.LoadAny(filepath.Join(assets, "models/stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range nativeCases() {
		t.Run(tc.name, func(t *testing.T) {
			goRecs, goCfg, goW := runCase(t, tc, "go")
			nRecs, nCfg, nW := runCase(t, tc, "native")
			if tc.stage == RM || tc.stage == CM { // the score normaliser tracked on both
				gs, ns := goCfg.Score, nCfg.Score
				if math.Abs(gs.Mean[0]-ns.Mean[0]) > 1e-5 || math.Abs(gs.Var[0]-ns.Var[0]) > 1e-5*gs.Var[0] || ns.Mean[0] == 0 {
					t.Errorf("score normaliser: native mean %g var %g, go %g %g", ns.Mean[0], ns.Var[0], gs.Mean[0], gs.Var[0])
				}
			}
			if len(goRecs) != len(nRecs) {
				t.Fatalf("%d metric records on native, %d on go", len(nRecs), len(goRecs))
			}
			worst := 0.0
			for i, g := range goRecs {
				n := nRecs[i]
				for k, gv := range g.Values {
					nv, ok := n.Values[k]
					if !ok {
						t.Fatalf("step %d %s: metric %s missing on native", g.Step, g.Tags["split"], k)
					}
					if k == "accuracy" || k == "reward_accuracy" {
						continue // a fraction of ties broken by rounding (DPO's first step has margins of exactly 0)
					}
					d := math.Abs(nv-gv) / max(math.Abs(gv), 1)
					if k == "loss" || k == "grad_norm" {
						d = math.Abs(nv-gv) / max(math.Abs(gv), 1e-2)
						worst = max(worst, d)
					}
					if d > nativeLossTol {
						t.Errorf("step %d %s: %s native %.9g, go %.9g (rel %.2g)", g.Step, g.Tags["split"], k, nv, gv, d)
					}
				}
			}
			names := goW.Names()
			if fmt.Sprint(names) != fmt.Sprint(nW.Names()) {
				t.Fatalf("weights %v on native, %v on go", nW.Names(), names)
			}
			worstW, worstName := 0.0, ""
			for _, name := range names {
				a, b, w0 := goW[name].Data, nW[name].Data, init[name]
				if w0 == nil {
					continue // the fresh score head
				}
				var upd, diff float64
				for i := range a {
					u, d := float64(a[i]-w0.Data[i]), float64(a[i]-b[i])
					upd += u * u
					diff += d * d
				}
				upd, diff = math.Sqrt(upd), math.Sqrt(diff)
				if r := diff / max(upd, 1e-12); upd > 0 && r > worstW {
					worstW, worstName = r, name
				}
			}
			t.Logf("worst loss/grad-norm rel diff %.2g; worst weight diff %.2g of the tensor's update (%s)", worst, worstW, worstName)
			if worstW > nativeWeightTol {
				t.Errorf("final weights differ: %s by %.2g of its update", worstName, worstW)
			}
		})
	}
}

// TestNativeResume interrupts a run after its second step (a checkpoint) and
// resumes it: on the native engine the metrics and the final model equal an
// uninterrupted native run's byte for byte; a checkpoint written by one backend
// resumes on the other, ending within the parity tolerance of a run on the other.
func TestNativeResume(t *testing.T) {
	skipNoNative(t)
	sft := nativeCase{"sft_accum", SFT, []string{"helpful/hh-rlhf-helpful-base-test.jsonl.gz"}, func(c *Config) { c.Accumulation, c.WeightDecay = 2, 0.1 }}
	rm := nativeCases()[2]
	for _, tc := range []struct {
		c        nativeCase
		from, to string
	}{{sft, "native", "native"}, {rm, "native", "native"}, {sft, "native", "go"}, {sft, "go", "native"}} {
		t.Run(fmt.Sprintf("%s_%s_to_%s", tc.c.name, tc.from, tc.to), func(t *testing.T) {
			full := nativeConfig(t, tc.c)
			full.Backend = tc.to
			if _, err := Run(stdctx.Background(), tc.c.stage, full); err != nil {
				t.Fatal(err)
			}
			part := nativeConfig(t, tc.c)
			part.Backend = tc.from
			ctx, cancel := stdctx.WithCancel(stdctx.Background())
			defer cancel()
			part.Progress = cancelAt{line: string(tc.c.stage) + " step 1/", cancel: cancel}
			if _, err := Run(ctx, tc.c.stage, part); !errors.Is(err, stdctx.Canceled) {
				t.Fatalf("interrupted run: error %v, want one wrapping context.Canceled", err)
			}
			part.Progress, part.Resume, part.Backend = nil, true, tc.to
			if _, err := Run(stdctx.Background(), tc.c.stage, part); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"metrics.jsonl", "model/model.safetensors", "model/config.json"} {
				want, err := os.ReadFile(filepath.Join(full.Out, f))
				if err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(filepath.Join(part.Out, f))
				if err != nil {
					t.Fatal(err)
				}
				if tc.from == tc.to && !bytes.Equal(got, want) {
					t.Errorf("%s differs after resume", f)
				}
			}
			if tc.from == tc.to {
				return
			}
			_, fw, err := model.LoadAny(filepath.Join(full.Out, "model"))
			if err != nil {
				t.Fatal(err)
			}
			_, pw, err := model.LoadAny(filepath.Join(part.Out, "model"))
			if err != nil {
				t.Fatal(err)
			}
			_, init, err := model.LoadAny(filepath.Join(assets, "models/stories260K.bin"))
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range init.Names() {
				var upd, diff float64
				for i, v := range fw[name].Data {
					u, d := float64(v-init[name].Data[i]), float64(v-pw[name].Data[i])
					upd += u * u
					diff += d * d
				}
				if r := math.Sqrt(diff / max(upd, 1e-24)); upd > 0 && r > nativeWeightTol {
					t.Errorf("%s: resumed on %s from a %s checkpoint differs from a %s run by %.2g of its update", name, tc.to, tc.from, tc.to, r)
				}
			}
		})
	}
}
