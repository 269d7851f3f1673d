package stages

import (
	stdctx "context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomlx/gomlx/pkg/core/graph"
	"github.com/gomlx/gomlx/pkg/core/tensors"
	"github.com/saferlhf/saferlhf/internal/backend"
)

// dpoRefCase is one case of testdata/dpo_reference.json (bench/torch_dpo_reference.py).
type dpoRefCase struct {
	B          int           `json:"B"`
	L          int           `json:"L"`
	Beta       float64       `json:"beta"`
	BetterIDs  [][]int32     `json:"better_input_ids"`
	BetterMask [][]int32     `json:"better_attention_mask"`
	WorseIDs   [][]int32     `json:"worse_input_ids"`
	WorseMask  [][]int32     `json:"worse_attention_mask"`
	Logits     [][][]float64 `json:"logits"`
	RefLogits  [][][]float64 `json:"ref_logits"`
	Loss       float64       `json:"loss"`
	Reward     float64       `json:"reward"`
	Better     float64       `json:"better_sample_reward"`
	Worse      float64       `json:"worse_sample_reward"`
	Accuracy   float64       `json:"reward_accuracy"`
	Margin     float64       `json:"reward_margin"`
}

// shiftedLogProbs is log_softmax(logits[:-1]).gather(ids[1:]) of one row, in float64.
func shiftedLogProbs(logits [][]float64, ids []int32) []float64 {
	out := make([]float64, len(ids)-1)
	for t := range out {
		mx := math.Inf(-1)
		for _, x := range logits[t] {
			mx = math.Max(mx, x)
		}
		var z float64
		for _, x := range logits[t] {
			z += math.Exp(x - mx)
		}
		out[t] = logits[t][ids[t+1]] - mx - math.Log(z)
	}
	return out
}

// TestDPOLossMatchesReference checks the whole DPO computation but the transformer
// (pair check, the reference's shifted span with its batch-width rule, reference sums,
// DPOLoss and its logged values) against a PyTorch transcription of the reference's
// DPOTrainer.loss (bench/torch_dpo_reference.py, float64).
func TestDPOLossMatchesReference(t *testing.T) {
	b, err := os.ReadFile("testdata/dpo_reference.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Cases []dpoRefCase `json:"cases"`
	}
	if err := json.Unmarshal(b, &file); err != nil || len(file.Cases) < 6 {
		t.Fatalf("testdata/dpo_reference.json: %d cases, %v", len(file.Cases), err)
	}
	be, err := backend.New("")
	if err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for ci, c := range file.Cases {
		B := c.B
		T := c.L + 3 // wider than the batch, as our fixed --max-length is
		unpad := func(ids, mask []int32) []int32 {
			n := 0
			for _, m := range mask {
				n += int(m)
			}
			return ids[:n]
		}
		ex := make([]dpoExample, B)
		lp := make([]float32, 2*B*(T-1)) // policy log-probs, zero past the batch width
		for i := 0; i < B; i++ {
			e, ok := newDPOExample(PairExample{Hi: unpad(c.BetterIDs[i], c.BetterMask[i]), Lo: unpad(c.WorseIDs[i], c.WorseMask[i])})
			if !ok {
				t.Fatalf("case %d pair %d: rejected", ci, i)
			}
			for h, padded := range [2][]int32{c.BetterIDs[i], c.WorseIDs[i]} {
				row := h*B + i
				ref := shiftedLogProbs(c.RefLogits[row], padded)
				e.ref[h] = rowRefLogProb(append(ref, 0, 0, 0), e.div, len(e.ids[h]))
				for t2, v := range shiftedLogProbs(c.Logits[row], padded) {
					lp[row*(T-1)+t2] = float32(v)
				}
			}
			ex[i] = e
		}
		_, _, span, ref, _ := dpoBatch(ex, T, 0)
		exec, err := graph.NewExec(be, func(lp, span, ref *graph.Node) []*graph.Node {
			o := DPOLoss(lp, span, ref, c.Beta)
			return []*graph.Node{o.Loss, o.Reward, o.Better, o.Worse, o.Margin, o.Accuracy}
		})
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Exec(tensors.FromFlatDataAndDimensions(lp, 2*B, T-1),
			tensors.FromFlatDataAndDimensions(span, 2*B, T-1), tensors.FromFlatDataAndDimensions(ref, 2*B))
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range []float64{c.Loss, c.Reward, c.Better, c.Worse, c.Margin, c.Accuracy} {
			got := float64(out[k].Value().(float32))
			worst = math.Max(worst, math.Abs(got-want)/math.Max(1, math.Abs(want)))
			if math.Abs(got-want) > 2e-5*math.Max(1, math.Abs(want)) {
				t.Errorf("case %d (B=%d L=%d β=%g) output %d: got %.7g, want %.7g", ci, B, c.L, c.Beta, k, got, want)
			}
		}
	}
	t.Logf("%d cases: largest error %.2g (relative to max(1, |want|))", len(file.Cases), worst)
}

// TestDPOSpanQuirk pins the reference's span rule: entries [d, end] of the shifted
// log-probs, the pad entry after a row counted only when the row is shorter than the
// widest row of its batch.
func TestDPOSpanQuirk(t *testing.T) {
	ex := []dpoExample{
		{ids: [2][]int32{{1, 2, 3, 4}, {1, 2, 5}}, div: 2, ref: [2]refLogProb{{core: -1, tail: -10}, {core: -2, tail: -20}}},
	}
	_, _, span, ref, _ := dpoBatch(ex, 6, 0)
	want := []float32{
		0, 0, 1, 0, 0, // row of 4 tokens = batch width: entry 2 (token 3) only, no pad entry
		0, 0, 1, 0, 0, // row of 3 tokens: entry 2 is the pad after the row (the quirk)
	}
	for i := range want {
		if span[i] != want[i] {
			t.Fatalf("span %v, want %v", span, want)
		}
	}
	if ref[0] != -1 || ref[1] != -22 {
		t.Fatalf("reference sums %v, want [-1 -22]", ref)
	}
	if _, ok := newDPOExample(PairExample{Hi: []int32{1, 2, 3}, Lo: []int32{1, 2}}); ok {
		t.Fatal("a pair whose rows differ only past the shorter one's end was accepted (the reference asserts)")
	}
}

// tinyDPO is a short DPO run on the bundled stories260K model and hh-rlhf helpful pairs.
func tinyDPO(t *testing.T, steps int) DPOConfig {
	c := DPODefaults()
	c.Config = tinyConfig(t, DPO, "helpful/hh-rlhf-helpful-base-test.jsonl.gz")
	c.MaxLength, c.BatchSize, c.Steps, c.Epochs, c.EvalMax, c.EvalRatio, c.MaxTrain = 48, 4, steps, 1, 16, 0.1, 64
	c.LR, c.WeightDecay, c.Beta = 1e-3, 0.05, 0.1
	return c
}

// cancelAt cancels a run when its progress output reports a given step.
type cancelAt struct {
	line   string
	cancel func()
}

func (c cancelAt) Write(p []byte) (int, error) {
	if strings.Contains(string(p), c.line) {
		c.cancel()
	}
	return len(p), nil
}

// TestDPOStartsAtLog2AndResumes checks that the precomputed reference log-probs equal
// the policy's at step 0 (held-out loss log 2, margin 0), and that a run interrupted
// after its first step and resumed writes the same metrics as an uninterrupted run.
func TestDPOStartsAtLog2AndResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("trains the tiny model twice")
	}
	dpoStartsAtLog2AndResumes(t, "go")
}

// TestNativeDPOStartsAtLog2AndResumes is TestDPOStartsAtLog2AndResumes on the
// native engine (reference log-probs, training and resume).
func TestNativeDPOStartsAtLog2AndResumes(t *testing.T) {
	skipNoNative(t)
	dpoStartsAtLog2AndResumes(t, "native")
}

func dpoStartsAtLog2AndResumes(t *testing.T, backend string) {
	c := tinyDPO(t, 3)
	c.Backend = backend
	full, err := RunDPO(stdctx.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if l := full.Initial["loss"]; math.Abs(l-math.Ln2) > 1e-4 || math.Abs(full.Initial["reward_margin"]) > 1e-4 {
		t.Fatalf("step-0 held-out loss %g margin %g: want log 2 and 0 (policy = reference)", l, full.Initial["reward_margin"])
	}
	if full.Steps != 3 || full.HeldOut == 0 {
		t.Fatalf("%d steps, %d held-out pairs", full.Steps, full.HeldOut)
	}
	part := c
	part.Out = t.TempDir()
	ctx, cancel := stdctx.WithCancel(stdctx.Background())
	defer cancel()
	part.Progress = cancelAt{line: "dpo step 1/", cancel: cancel}
	if _, err := RunDPO(ctx, part); !errors.Is(err, stdctx.Canceled) {
		t.Fatalf("interrupted run: error %v, want one wrapping context.Canceled", err)
	}
	part.Progress, part.Resume = nil, true
	if _, err := RunDPO(stdctx.Background(), part); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(c.Out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(part.Out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("resumed metrics differ:\n%s\nwant:\n%s", got, want)
	}
}
