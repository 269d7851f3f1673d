package trainer

import (
	stdctx "context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/metrics"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// Batch is one (micro-)batch as the Stepper takes it.
type Batch struct {
	// Inputs are host values (tensors or Go slices) passed to Stepper.Step in order.
	Inputs []any
	// Tokens counts the tokens of the batch (for tokens/s).
	Tokens int
	// Weight weighs the batch in held-out averages (e.g. its label tokens); 0 means 1.
	Weight float64
}

// Source yields the micro-batches of an epoch by index. It must be deterministic:
// the same (epoch, index) always gives the same batch (shuffle by a seed and the
// epoch), which is what makes --resume exact.
type Source interface {
	// Len is the number of micro-batches per epoch.
	Len() int
	// Batch returns micro-batch index of epoch (both from 0).
	Batch(epoch, index int) (Batch, error)
}

// Schedule gives the learning rate of the update after step completed updates (optim.Schedule.LR fits).
type Schedule func(step int) float64

// LoopConfig configures a Loop.
type LoopConfig struct {
	// Stepper trains the model; its Accumulation micro-batches make one step.
	Stepper Steps
	// Train is the training data; Eval the held-out batches (optional).
	Train, Eval Source
	// Epochs over Train; Steps, if > 0, caps the number of optimizer steps.
	Epochs, Steps int
	// LR is the learning-rate schedule.
	LR Schedule
	// EvalEvery and CheckpointEvery are in optimizer steps (0: only at the end).
	EvalEvery, CheckpointEvery int
	// KeepCheckpoints is how many checkpoints to keep (default 2).
	KeepCheckpoints int
	// Dir receives metrics.jsonl, checkpoints/, plots and the final model.
	Dir string
	// Resume continues from the newest intact checkpoint in Dir (none is an error).
	// Without Resume, a Dir that already holds checkpoints is an error.
	Resume bool
	// Kind names the stage ("sft", "train-rm", ...): checkpoints record it, and a
	// checkpoint of another kind is never resumed.
	Kind string
	// AllowConfigChange resumes even when a trajectory setting of Meta changed.
	AllowConfigChange bool
	// ConfigIgnore lists the keys of Meta that do not change the trajectory
	// (output dir, logging, checkpoint cadence); see checkpoint.CompareConfig.
	ConfigIgnore []string
	// SaveModel writes the final model (for example an HF safetensors dir) to dir.
	SaveModel func(dir string) error
	// Plot draws PNG curves from the metrics file into Dir at the end (default DefaultPlot).
	Plot func(metricsPath, outDir string) error
	// Progress receives the progress bar (nil: none); Name labels it.
	Progress io.Writer
	Name     string
	// EvalAtStart evaluates the held-out data before the first step (a baseline at step 0).
	EvalAtStart bool
	// Meta is the run's configuration: stored in every checkpoint's state.json
	// and compared with the stored one on Resume.
	Meta any
	// CheckpointWeights, if set, returns the model weights (HF names, own dtype) and
	// config.json to store in each checkpoint, so that a checkpoint directory loads as a model.
	CheckpointWeights func() ([]safetensors.Tensor, json.RawMessage, error)
	// WeightsScope is the context scope whose variables CheckpointWeights returns by
	// name (variable WeightsScope/N is weight N): they are stored once, in the weights.
	WeightsScope string
	// CheckpointFiles are extra files (name → contents, e.g. the tokenizer) stored in each checkpoint.
	CheckpointFiles map[string][]byte
}

// Summary reports a finished (or interrupted) run.
type Summary struct {
	Steps      int                // optimizer steps done
	TrainLoss  float64            // mean loss of the last step
	Eval       map[string]float64 // last held-out evaluation (loss and metrics)
	Elapsed    time.Duration      // wall time of this process's part of the run
	TokensPerS float64            // training tokens per second, all ranks together
	// Collective is the time this rank spent in gradient all-reduces, waiting for the
	// slowest rank included (0 for one process).
	Collective time.Duration
	ModelDir   string // where SaveModel wrote the final model
	// OptimizerStateBytes is the size of the AdamW moments this rank holds at the end
	// (all of them, or with ZeRO-1 about 1/world of them).
	OptimizerStateBytes int64
}

// position is the data position stored in a checkpoint's state.json.
type position struct {
	Epoch int `json:"epoch"`
	Index int `json:"index"`
}

// Loop is the generic supervised training loop (see package doc).
type Loop struct {
	cfg     LoopConfig
	metrics *metrics.Writer
	ckpts   *checkpoint.Manager
	lastEv  map[string]float64
}

// NewLoop validates cfg and returns a Loop.
func NewLoop(cfg LoopConfig) (*Loop, error) {
	switch {
	case cfg.Stepper == nil:
		return nil, errors.New("trainer: LoopConfig.Stepper is nil")
	case cfg.Train == nil || cfg.Train.Len() == 0:
		return nil, errors.New("trainer: no training batches")
	case cfg.Dir == "":
		return nil, errors.New("trainer: LoopConfig.Dir is empty")
	case cfg.LR == nil:
		return nil, errors.New("trainer: LoopConfig.LR is nil")
	case cfg.Epochs <= 0 && cfg.Steps <= 0:
		return nil, errors.New("trainer: need epochs > 0 or steps > 0")
	case cfg.EvalEvery < 0 || cfg.CheckpointEvery < 0:
		return nil, errors.New("trainer: eval/checkpoint intervals must be >= 0")
	}
	if cfg.Kind == "" {
		cfg.Kind = cfg.Name
	}
	if cfg.KeepCheckpoints <= 0 {
		cfg.KeepCheckpoints = 2
	}
	return &Loop{cfg: cfg}, nil
}

// TotalSteps is the number of optimizer steps the run makes.
func (l *Loop) TotalSteps() int {
	return TotalSteps(l.cfg.Epochs, l.cfg.Steps, l.cfg.Train.Len(), l.cfg.Stepper.Config().Accumulation)
}

// TotalSteps is the number of optimizer steps of a run of epochs over batches
// micro-batches with the given accumulation, capped by steps when steps > 0
// (epochs <= 0: exactly steps).
func TotalSteps(epochs, steps, batches, accumulation int) int {
	total := epochs * batches / max(1, accumulation)
	if epochs <= 0 || (steps > 0 && steps < total) {
		total = steps
	}
	return total
}

func (l *Loop) ckptRoot() string { return filepath.Join(l.cfg.Dir, "checkpoints") }

// Run trains to the end, or until ctx is cancelled (then it checkpoints and returns
// an error wrapping ctx.Err()).
func (l *Loop) Run(ctx stdctx.Context) (sum Summary, err error) {
	if l.ckpts, err = checkpoint.NewManager(l.ckptRoot(), l.cfg.KeepCheckpoints); err != nil {
		return sum, fmt.Errorf("trainer: %w", err)
	}
	metricsPath := filepath.Join(l.cfg.Dir, "metrics.jsonl")
	var (
		step int
		pos  position
	)
	if l.cfg.Resume {
		if step, pos, err = l.restore(); err != nil {
			return sum, err
		}
	} else if steps := l.ckpts.Existing(); len(steps) > 0 {
		return sum, fmt.Errorf("trainer: %s already holds checkpoints (step %d): resume the run or choose a new output", l.ckptRoot(), steps[len(steps)-1])
	}
	if err := l.checkInSync(step); err != nil {
		return sum, err
	}
	// Only rank 0 writes metrics. A resumed run drops the records written after the
	// checkpoint, so the finished file equals an uninterrupted run's.
	if l.primary() {
		if l.cfg.Resume {
			l.metrics, err = metrics.Resume(metricsPath, step)
		} else {
			l.metrics, err = metrics.Create(metricsPath)
		}
		if err != nil {
			return sum, fmt.Errorf("trainer: %w", err)
		}
		defer l.metrics.Close()
	}
	s := l.cfg.Stepper
	k := s.Config().Accumulation
	total := l.TotalSteps()
	n := l.cfg.Train.Len()
	epoch, index := pos.Epoch, pos.Index
	start := time.Now()
	startStep := step
	tokens, barTokens := 0, 0
	var bar *metrics.Progress
	if l.cfg.Progress != nil && l.primary() {
		bar = metrics.NewProgress(total, startStep, l.cfg.Name, l.cfg.Progress)
	}
	if l.cfg.EvalAtStart && step == 0 && l.cfg.Eval != nil && l.cfg.Eval.Len() > 0 {
		if err := l.evaluate(0); err != nil {
			return sum, err
		}
	}
	for step < total {
		// One optimizer step = k micro-batches.
		var sumLoss float64
		sumMetrics := map[string]float64{}
		var res Result
		stepTokens := 0
		lr := l.cfg.LR(step)
		for m := 0; m < k; m++ {
			if index >= n {
				epoch, index = epoch+1, 0
			}
			b, err := l.cfg.Train.Batch(epoch, index)
			if err != nil {
				return sum, fmt.Errorf("trainer: step %d: batch %d of epoch %d: %w", step+1, index, epoch, err)
			}
			index++
			if res, err = s.Step(lr, b.Inputs...); err != nil {
				return sum, fmt.Errorf("trainer: step %d: %w", step+1, err)
			}
			if err := l.guard(step+1, "", res.Loss, res.Metrics, nil); err != nil {
				return sum, err
			}
			sumLoss += res.Loss
			for name, v := range res.Metrics {
				sumMetrics[name] += v
			}
			stepTokens += b.Tokens
		}
		// Ranks agree on the step's global loss, metrics and tokens, and on stopping.
		cancelled := ctx.Err() != nil
		sumLoss, stepTokens, cancelled, err = l.reduceStep(sumLoss, sumMetrics, stepTokens, cancelled)
		if err != nil {
			return sum, fmt.Errorf("trainer: step %d: %w", step+1, err)
		}
		tokens += stepTokens
		if err := l.guard(step+1, "", sumLoss/float64(k), nil, map[string]float64{"grad_norm": res.GradNorm}); err != nil {
			return sum, err
		}
		step++
		vals := map[string]float64{"epoch": float64(epoch), "lr": lr, "loss": sumLoss / float64(k), "grad_norm": res.GradNorm}
		for name, v := range sumMetrics {
			vals[name] = v / float64(k)
		}
		CombineRatios(vals)
		if err := l.writeRecord(step, "train", vals); err != nil {
			return sum, err
		}
		sum.TrainLoss = sumLoss / float64(k)
		last := step == total
		if l.cfg.Eval != nil && l.cfg.Eval.Len() > 0 && ((l.cfg.EvalEvery > 0 && step%l.cfg.EvalEvery == 0) || last) {
			if err := l.evaluate(step); err != nil {
				return sum, err
			}
		}
		if bar != nil {
			bar.Update(step, sum.TrainLoss, tokens-barTokens)
			barTokens = tokens
		}
		saved := ""
		if last || cancelled || (l.cfg.CheckpointEvery > 0 && step%l.cfg.CheckpointEvery == 0) {
			if saved, err = l.checkpoint(step, position{Epoch: epoch, Index: index}); err != nil {
				return sum, err
			}
		}
		if cancelled && !last {
			if bar != nil {
				bar.Finish()
			}
			why := ctx.Err()
			if why == nil {
				why = errors.New("another rank was interrupted")
			}
			return l.finish(sum, step, startStep, tokens, start), fmt.Errorf("trainer: interrupted after step %d (checkpoint %s saved; rerun with --resume): %w", step, saved, why)
		}
	}
	if bar != nil {
		bar.Finish()
	}
	sum = l.finish(sum, step, startStep, tokens, start)
	if !l.primary() {
		return sum, nil
	}
	if l.cfg.SaveModel != nil {
		if err := l.cfg.Stepper.SyncContext(); err != nil {
			return sum, fmt.Errorf("trainer: saving the final model: %w", err)
		}
		sum.ModelDir = filepath.Join(l.cfg.Dir, "model")
		if err := l.cfg.SaveModel(sum.ModelDir); err != nil {
			return sum, fmt.Errorf("trainer: saving the final model: %w", err)
		}
	}
	plot := l.cfg.Plot
	if plot == nil {
		plot = DefaultPlot
	}
	{
		if err := plot(metricsPath, l.cfg.Dir); err != nil {
			return sum, fmt.Errorf("trainer: plots: %w", err)
		}
	}
	return sum, nil
}

func (l *Loop) finish(sum Summary, step, startStep, tokens int, start time.Time) Summary {
	sum.Steps = step
	sum.Elapsed = time.Since(start)
	sum.Collective = l.cfg.Stepper.CollectiveTime()
	sum.OptimizerStateBytes = 4 * l.cfg.Stepper.OptimizerStateElements()
	if step > startStep {
		sum.TokensPerS = float64(tokens) / sum.Elapsed.Seconds()
	}
	sum.Eval = l.lastEv
	return sum
}

// Evaluate computes the weighted mean loss and metrics over every batch of src (each
// batch weighs Batch.Weight, default 1). With several ranks (s.Comm()) the batches
// are shared out, batch i on rank i mod world, and the weighted sums reduced exactly
// (float64, in rank order), so every rank returns the same values; every rank must call it.
func Evaluate(s Steps, src Source) (map[string]float64, error) {
	comm := s.Comm()
	w, rank := comm.Size(), comm.Rank()
	sums := map[string]float64{}
	var wsum float64
	for i := rank; i < src.Len(); i += w {
		b, err := src.Batch(0, i)
		if err != nil {
			return nil, fmt.Errorf("held-out batch %d: %w", i, err)
		}
		r, err := s.Eval(b.Inputs...)
		if err != nil {
			return nil, fmt.Errorf("held-out batch %d: %w", i, err)
		}
		bw := b.Weight
		if bw == 0 {
			bw = 1
		}
		wsum += bw
		sums["loss"] += bw * r.Loss
		for name, v := range r.Metrics {
			sums[name] += bw * v
		}
	}
	if w > 1 {
		var err error
		if sums, wsum, err = reduceSums(comm, sums, wsum); err != nil {
			return nil, fmt.Errorf("held-out evaluation: %w", err)
		}
	}
	for name := range sums {
		sums[name] /= wsum
	}
	CombineRatios(sums)
	return sums, nil
}

// reduceSums adds the ranks' named sums and total weights (float64 bits exchanged, added in
// rank order, so every rank gets the same values; a rank without batches sends none).
func reduceSums(comm dist.Communicator, sums map[string]float64, wsum float64) (map[string]float64, float64, error) {
	names := make([]string, 0, len(sums))
	for k := range sums {
		names = append(names, k)
	}
	sort.Strings(names)
	vals := []float64{wsum}
	for _, k := range names {
		vals = append(vals, sums[k])
	}
	nb, err := json.Marshal(names)
	if err != nil {
		return nil, 0, err
	}
	allNames, err := comm.AllGather(stdctx.Background(), nb)
	if err != nil {
		return nil, 0, err
	}
	allVals, err := dist.AllGatherFloat64(stdctx.Background(), comm, vals)
	if err != nil {
		return nil, 0, err
	}
	out := map[string]float64{}
	total := 0.0
	for r := range allNames {
		var ns []string
		if err := json.Unmarshal(allNames[r], &ns); err != nil || len(ns)+1 != len(allVals[r]) {
			return nil, 0, fmt.Errorf("rank %d sent a malformed evaluation record", r)
		}
		total += allVals[r][0]
		for i, k := range ns {
			out[k] += allVals[r][1+i]
		}
	}
	return out, total, nil
}

// CombineRatios replaces each pair of metrics "X_num" and "X_den" (averaged over
// batches) by X = num/den, or drops X when den is 0: a rate over a varying
// number of items per batch (e.g. the cost model's sign accuracy over the labelled
// responses only) is then exact over the whole held-out set.
func CombineRatios(m map[string]float64) {
	for k, num := range m {
		base, ok := strings.CutSuffix(k, "_num")
		if !ok {
			continue
		}
		den, ok := m[base+"_den"]
		if !ok {
			continue
		}
		delete(m, k)
		delete(m, base+"_den")
		if den > 0 {
			m[base] = num / den
		}
	}
}

func (l *Loop) evaluate(step int) error {
	ev, err := Evaluate(l.cfg.Stepper, l.cfg.Eval)
	if err != nil {
		return fmt.Errorf("trainer: step %d: %w", step, err)
	}
	if err := l.guard(step, "held-out ", ev["loss"], ev, nil); err != nil {
		return err
	}
	l.lastEv = ev
	return l.writeRecord(step, "eval", ev)
}

// writeRecord appends one metrics line (keys sorted, shortest float form: deterministic bytes).
func (l *Loop) writeRecord(step int, split string, vals map[string]float64) error {
	if l.metrics == nil { // not rank 0
		return nil
	}
	if err := l.metrics.WriteRecord(metrics.Record{Step: step, Values: vals, Tags: map[string]string{"split": split}}); err != nil {
		return fmt.Errorf("trainer: %w", err)
	}
	return nil
}

// checkpoint saves a train/checkpoint directory checkpoints/step-NNNNNNNN
// atomically: every context variable bit for bit (training_state.safetensors),
// the model weights as HF safetensors when CheckpointWeights is set, and
// state.json with the step, data position, kind and config. The previous
// checkpoints stay usable until the new one is complete. It returns the directory.
func (l *Loop) checkpoint(step int, pos position) (string, error) {
	s := l.cfg.Stepper
	// With ZeRO-1 every rank takes part: rank 0 streams the moments others own from them.
	return checkpoint.SaveSharded(s.Comm(), s.Context(), s.ShardedState(), func() error {
		if err := s.SyncContext(); err != nil {
			return fmt.Errorf("trainer: checkpoint step %d: %w", step, err)
		}
		return nil
	}, func(remote []safetensors.Tensor) (string, error) {
		return l.save(step, pos, remote)
	})
}

// save is rank 0's part of checkpoint; remote are training-state tensors other ranks hold.
func (l *Loop) save(step int, pos position, remote []safetensors.Tensor) (string, error) {
	if err := l.metrics.Sync(); err != nil {
		return "", fmt.Errorf("trainer: checkpoint: %w", err)
	}
	ctx := l.cfg.Stepper.Context()
	ts, err := checkpoint.ContextTensors(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("trainer: checkpoint step %d: %w", step, err)
	}
	ts = checkpoint.WithRemote(ts, remote)
	data, _ := json.Marshal(pos)
	meta, err := l.meta()
	if err != nil {
		return "", err
	}
	c := &checkpoint.Checkpoint{
		State:          checkpoint.State{Step: step, Kind: l.cfg.Kind, Config: meta, Epoch: pos.Epoch, Data: data},
		TrainState:     ts,
		TrainStateMeta: checkpoint.TrainableMetadata(ctx, ts),
		Files:          l.cfg.CheckpointFiles,
		WeightsScope:   l.cfg.WeightsScope,
	}
	if l.cfg.CheckpointWeights != nil {
		if c.Weights, c.Config, err = l.cfg.CheckpointWeights(); err != nil {
			return "", fmt.Errorf("trainer: checkpoint step %d: %w", step, err)
		}
	}
	dir, err := l.ckpts.Save(c)
	if err != nil {
		return "", fmt.Errorf("trainer: %w", err)
	}
	return dir, nil
}

func (l *Loop) meta() (json.RawMessage, error) {
	if l.cfg.Meta == nil {
		return nil, nil
	}
	b, err := json.Marshal(l.cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("trainer: checkpoint config: %w", err)
	}
	return b, nil
}

// restore loads the newest intact checkpoint into the context, after checking
// its kind and configuration against this run's.
func (l *Loop) restore() (step int, pos position, err error) {
	meta, err := l.meta()
	if err != nil {
		return 0, pos, err
	}
	ld, err := l.ckpts.Resume(checkpoint.ResumeOptions{Kind: l.cfg.Kind, Config: meta, Ignore: l.cfg.ConfigIgnore,
		AllowConfigChange: l.cfg.AllowConfigChange})
	if err != nil {
		return 0, pos, fmt.Errorf("trainer: %w", err)
	}
	defer ld.Close()
	if ld.TrainState == nil {
		return 0, pos, fmt.Errorf("trainer: resume: %s has no training state", ld.Dir)
	}
	if err := json.Unmarshal(ld.State.Data, &pos); err != nil {
		return 0, pos, fmt.Errorf("trainer: resume: %s: data position: %w", ld.Dir, err)
	}
	foreign, err := l.cfg.Stepper.RestorePartition(ld.TrainState) // ZeRO-1: others' moments stay on disk
	if err != nil {
		return 0, pos, fmt.Errorf("trainer: resume: %s: %w", ld.Dir, err)
	}
	if err := ld.RestoreContextExcept(l.cfg.Stepper.Context(), foreign); err != nil {
		return 0, pos, fmt.Errorf("trainer: resume: %w", err)
	}
	if err := l.cfg.Stepper.LoadContext(); err != nil {
		return 0, pos, fmt.Errorf("trainer: resume: %w", err)
	}
	return ld.State.Step, pos, nil
}

// guard is the non-finite check of a step's loss (named prefix+"loss"),
// metrics (prefix+name) and other values: an error naming the quantity and the
// last intact checkpoint.
func (l *Loop) guard(step int, prefix string, loss float64, ms, other map[string]float64) error {
	vals := map[string]float64{}
	for k, v := range ms {
		vals[prefix+k] = v
	}
	for k, v := range other {
		vals[k] = v
	}
	err := checkpoint.CheckFinite(step, map[string]float64{prefix + "loss": loss}) // the loss first
	if err == nil {
		err = checkpoint.CheckFinite(step, vals)
	}
	if err != nil {
		return fmt.Errorf("trainer: %w (training stopped; the last intact checkpoint is %s)", err, l.ckpts.LastIntact())
	}
	return nil
}

// DefaultPlot draws one PNG per metric into outDir/plots, with the training curve
// (raw and smoothed) and the held-out points.
func DefaultPlot(metricsPath, outDir string) error {
	recs, err := metrics.Read(metricsPath)
	if err != nil {
		return err
	}
	groups := map[string][]string{}
	for _, r := range recs {
		for k := range r.Values {
			if k != "epoch" && groups[k] == nil {
				groups[k] = []string{k + "@split=train", k + "@split=eval"}
			}
		}
	}
	_, err = metrics.PlotFile(metricsPath, filepath.Join(outDir, "plots"), groups, 0.6)
	return err
}
