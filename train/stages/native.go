package stages

import (
	"fmt"
	"math"
	"strings"

	"github.com/gomlx/gomlx/backends"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/kernels"
	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/trainer"
)

// The stages' losses on the native engine (--backend native): the same
// formulas as the graph losses (SFTLoss, WeightedPairwiseScoreLoss with the
// score normaliser's tracking, DPOLoss) over the same batch inputs, with their
// gradients written by hand into native/llama's backward. The graph forms stay
// the oracle: the tests train a few steps both ways and compare.

// newSteps returns the stage's trainer: a NativeStepper when be is the native
// engine, else the GoMLX Stepper with the graph loss.
func newSteps(be backends.Backend, mctx *context.Context, mcfg *model.Config, cfg trainer.Config, native trainer.NativeLoss, lmHead bool) (trainer.Steps, error) {
	if !backend.IsNative(be) {
		return trainer.NewStepper(be, mctx, cfg)
	}
	uses := func(name string) bool { return name != model.NameLMHead }
	if lmHead {
		uses = func(name string) bool { return !strings.HasPrefix(name, "score_head.") }
	}
	return trainer.NewNativeStepper(mctx, trainer.NativeConfig{Config: cfg, Model: mcfg, Loss: native, Uses: uses})
}

// hostInputs reads a batch's tensors: the int32 ids [B, T] (with their dims) first, then float32 inputs.
func hostInputs(in []any) (ids []int32, dims []int, fs [][]float32, err error) {
	fs = make([][]float32, len(in))
	for i, x := range in {
		t, ok := x.(*tensors.Tensor)
		if !ok {
			return nil, nil, nil, fmt.Errorf("native loss: input %d is %T, want a tensor", i, x)
		}
		if i == 0 {
			dims = t.Shape().Dimensions
			if ids, err = tensors.CopyFlatData[int32](t); err != nil {
				return nil, nil, nil, fmt.Errorf("native loss: input ids: %w", err)
			}
			continue
		}
		if fs[i], err = tensors.CopyFlatData[float32](t); err != nil {
			return nil, nil, nil, fmt.Errorf("native loss: input %d: %w", i, err)
		}
	}
	if len(dims) != 2 {
		return nil, nil, nil, fmt.Errorf("native loss: ids of shape %v, want [B, T]", dims)
	}
	return ids, dims, fs, nil
}

// sftNative is SFTLoss over seqSource batches (ids, mask, loss mask, denominator).
func sftNative(m *llama.Model, g llama.Grads, in []any) (float64, map[string]float64, error) {
	ids, dims, fs, err := hostInputs(in)
	if err != nil {
		return 0, nil, err
	}
	lp, err := tokenLogProbs(m, dims[0], dims[1], ids, fs[1], g != nil)
	if err != nil {
		return 0, nil, err
	}
	lm := fs[2]
	if len(fs) < 4 || len(fs[3]) != 1 {
		return 0, nil, fmt.Errorf("native SFT loss: want the loss denominator as input 3")
	}
	var num float64
	for i, w := range lm {
		num += float64(lp.logp[i] * w)
	}
	den := float64(fs[3][0])
	if g != nil {
		d := make([]float32, len(lm))
		for i, w := range lm {
			d[i] = float32(-float64(w) / den)
		}
		if err := lp.backward(d, g); err != nil {
			return 0, nil, err
		}
	}
	return -num / den, nil, nil
}

// logProbs is a forward pass with its token log-probs, kept for the backward.
type logProbs struct {
	m    *llama.Model
	tp   *llama.Tape
	logp []float32
}

// tokenLogProbs runs the forward pass, saving its activations for the
// backward only when train (evaluation passes use the tape-less llama.Infer).
func tokenLogProbs(m *llama.Model, b, t int, ids []int32, mask []float32, train bool) (*logProbs, error) {
	forward := m.Infer
	if train {
		forward = m.Forward
	}
	tp, err := forward(b, t, ids, mask)
	if err != nil {
		return nil, err
	}
	lp, err := m.TokenLogProbs(tp)
	if err != nil {
		return nil, err
	}
	return &logProbs{m: m, tp: tp, logp: lp}, nil
}

func (l *logProbs) backward(dLogp []float32, g llama.Grads) error {
	dh, err := l.m.TokenLogProbsBackward(l.tp, dLogp, g)
	if err != nil {
		return err
	}
	return l.m.Backward(l.tp, dh, g)
}

// sigmoid is σ(x) = 1/(1+e^−x).
func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// nls is −log σ(x) (negLogSigmoid), stably; its derivative is −σ(−x).
func nls(x float64) float64 {
	if x < 0 {
		return math.Log1p(math.Exp(x)) - x
	}
	return math.Log1p(math.Exp(-x))
}

// scoreNative is the reward/cost model loss of lossFn over pairSource batches
// (ids, mask, end one-hot, span, cost signs), tracking the score normaliser in
// mctx on training steps as the graph does.
func scoreNative(stage Stage, cfg Config, mctx *context.Context, track bool) trainer.NativeLoss {
	tokenWise := cfg.LossType == "token-wise"
	cost := stage == CM
	reg, sw := cfg.Reg, cfg.SignWeight
	return func(m *llama.Model, g llama.Grads, in []any) (float64, map[string]float64, error) {
		ids, dims, fs, err := hostInputs(in)
		if err != nil {
			return 0, nil, err
		}
		twoB, T := dims[0], dims[1]
		B := twoB / 2
		mask, end, span, signs := fs[1], fs[2], fs[3], fs[4]
		forward := m.Infer // evaluation: no tape
		if g != nil {
			forward = m.Forward
		}
		tp, err := forward(twoB, T, ids, mask)
		if err != nil {
			return 0, nil, err
		}
		scores, err := m.Scores(tp)
		if err != nil {
			return 0, nil, err
		}
		if len(scores) != twoB*T {
			return 0, nil, fmt.Errorf("native loss: score dimension %d, want 1", len(scores)/(twoB*T))
		}
		ends := make([]float64, twoB)
		for r := range twoB {
			for t := range T {
				ends[r] += float64(scores[r*T+t] * end[r*T+t])
			}
		}
		sign := func(r int) float64 {
			if !cost {
				return 0
			}
			return float64(signs[r])
		}
		var loss float64
		dScores := make([]float32, twoB*T)
		if !tokenWise {
			var sq float64
			for i := range B {
				hi, lo := ends[i], ends[B+i]
				sh, sl := sign(i), sign(B+i)
				loss += nls(hi-lo) + sw*(math.Abs(sh)*nls(sh*hi)+math.Abs(sl)*nls(sl*lo))
				dhi := -sigmoid(-(hi - lo)) - sw*math.Abs(sh)*sh*sigmoid(-sh*hi)
				dlo := sigmoid(-(hi - lo)) - sw*math.Abs(sl)*sl*sigmoid(-sl*lo)
				for _, kd := range [2]struct {
					k int
					d float64
				}{{i, dhi}, {B + i, dlo}} {
					k, d := kd.k, kd.d/float64(B)
					if reg > 0 {
						d += reg * 2 * ends[k] / float64(twoB)
					}
					for t := range T {
						dScores[k*T+t] = float32(d) * end[k*T+t]
					}
				}
				sq += hi*hi + lo*lo
			}
			loss /= float64(B)
			if reg > 0 {
				loss += reg * sq / float64(twoB)
			}
		} else {
			for i := range B {
				var n float64
				for t := range T {
					n += float64(span[i*T+t])
				}
				sh, sl := sign(i), sign(B+i)
				var li float64
				for t := range T {
					w := float64(span[i*T+t])
					if w == 0 {
						continue
					}
					hi, lo := float64(scores[i*T+t]), float64(scores[(B+i)*T+t])
					li += w * (nls(hi-lo) + sw*(math.Abs(sh)*nls(sh*hi)+math.Abs(sl)*nls(sl*lo)) + reg*0.5*(hi*hi+lo*lo))
					c := w / n / float64(B)
					dScores[i*T+t] = float32(c * (-sigmoid(-(hi - lo)) - sw*math.Abs(sh)*sh*sigmoid(-sh*hi) + reg*hi))
					dScores[(B+i)*T+t] = float32(c * (sigmoid(-(hi - lo)) - sw*math.Abs(sl)*sl*sigmoid(-sl*lo) + reg*lo))
				}
				loss += li / n
			}
			loss /= float64(B)
		}
		var acc, mean, sq, hiMean, loMean, correct, labelled float64
		for i := range B {
			if ends[i] > ends[B+i] {
				acc++
			}
			hiMean += ends[i]
			loMean += ends[B+i]
		}
		for r, e := range ends {
			mean += e
			sq += e * e
			if cost {
				if e*float64(signs[r]) > 0 {
					correct++
				}
				labelled += math.Abs(float64(signs[r]))
			}
		}
		metrics := map[string]float64{"accuracy": acc / float64(B), "score_mean": mean / float64(twoB),
			"score_sq": sq / float64(twoB), "hi_mean": hiMean / float64(B), "lo_mean": loMean / float64(B)}
		if cost {
			metrics["sign_accuracy_num"], metrics["sign_accuracy_den"] = correct, labelled
		}
		if g == nil {
			return loss, metrics, nil
		}
		dh, err := m.ScoresBackward(tp, dScores, g)
		if err == nil {
			err = m.Backward(tp, dh, g)
		}
		if err == nil && track {
			err = trackNormalizerHost(mctx, ends)
		}
		return loss, metrics, err
	}
}

// trackNormalizerHost is trackNormalizer on the host: the EMA update of the
// normaliser variables of ctx with a batch's end scores (kernels.UpdateNormalizer).
func trackNormalizerHost(ctx *context.Context, ends []float64) error {
	nc := ctx.InAbsPath(normScope)
	mv, vv := nc.GetVariable("mean"), nc.GetVariable("var")
	if mv == nil || vv == nil {
		return fmt.Errorf("stages: score normaliser variables missing (initNormalizer not called)")
	}
	n := &kernels.Normalizer{Type: kernels.ExponentialMovingAverage, Momentum: normalizerMomentum}
	for _, p := range []struct {
		v   *context.Variable
		dst *float64
	}{{mv, &n.Mean}, {vv, &n.Var}} {
		t, err := p.v.Value()
		if err != nil {
			return fmt.Errorf("stages: score normaliser: %w", err)
		}
		*p.dst = t.Value().(float64)
	}
	if err := n.Update(ends); err != nil {
		return fmt.Errorf("stages: score normaliser: %w", err)
	}
	if err := mv.SetValue(tensors.FromScalar(n.Mean)); err != nil {
		return err
	}
	return vv.SetValue(tensors.FromScalar(n.Var))
}

// dpoNative is DPOLoss over dpoSource batches (ids, mask, span, reference sums).
func dpoNative(beta float64) trainer.NativeLoss {
	return func(m *llama.Model, g llama.Grads, in []any) (float64, map[string]float64, error) {
		ids, dims, fs, err := hostInputs(in)
		if err != nil {
			return 0, nil, err
		}
		twoB, T := dims[0], dims[1]
		B := twoB / 2
		span, ref := fs[2], fs[3]
		lp, err := tokenLogProbs(m, twoB, T, ids, fs[1], g != nil)
		if err != nil {
			return 0, nil, err
		}
		ratio := make([]float64, twoB)
		for r := range twoB {
			var s float32
			for t := range T - 1 {
				s += lp.logp[r*(T-1)+t] * span[r*(T-1)+t]
			}
			ratio[r] = float64(s - ref[r])
		}
		var loss, reward, better, worse, margin, acc float64
		dRatio := make([]float64, twoB)
		for i := range B {
			hi, lo := beta*ratio[i], beta*ratio[B+i]
			mg := hi - lo
			loss += nls(mg)
			d := -sigmoid(-mg) / float64(B)
			dRatio[i], dRatio[B+i] = beta*d, -beta*d
			reward += hi + lo
			better += hi
			worse += lo
			margin += mg
			if hi > lo {
				acc++
			}
		}
		b := float64(B)
		metrics := map[string]float64{"reward": reward / b, "better_sample_reward": better / b, "worse_sample_reward": worse / b,
			"reward_margin": margin / b, "reward_accuracy": acc / b}
		if g != nil {
			d := make([]float32, twoB*(T-1))
			for r := range twoB {
				for t := range T - 1 {
					d[r*(T-1)+t] = float32(dRatio[r]) * span[r*(T-1)+t]
				}
			}
			if err := lp.backward(d, g); err != nil {
				return 0, nil, err
			}
		}
		return loss / b, metrics, nil
	}
}
