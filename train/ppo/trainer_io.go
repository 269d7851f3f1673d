package ppo

// The trainer's I/O: metrics files and checkpoints (train/checkpoint). The loop is in trainer.go.

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/gomlx/gomlx/pkg/ml/context"

	"github.com/saferlhf/saferlhf/train/checkpoint"
	"github.com/saferlhf/saferlhf/train/metrics"
	"github.com/saferlhf/saferlhf/train/safetensors"
)

// log appends a step's metrics to metrics.jsonl and perf.jsonl.
func (t *Trainer) log(m StepMetrics, p PerfMetrics) error {
	t.history = append(t.history, m)
	t.perf = append(t.perf, p)
	if !t.primary() {
		return nil
	}
	if err := t.metricsW.WriteJSON(m); err != nil {
		return fmt.Errorf("ppo: %w", err)
	}
	if err := t.perfW.WriteJSON(p); err != nil {
		return fmt.Errorf("ppo: %w", err)
	}
	return nil
}

// Kind is the checkpoint kind of a run: "ppo" for plain PPO, "ppo-lag" for the cost-aware variants.
func (t *Trainer) Kind() string {
	if t.cfg.Algorithm == PPO {
		return "ppo"
	}
	return "ppo-lag"
}

// openMetrics restores the latest checkpoint (with Resume) and opens metrics.jsonl and perf.jsonl:
// a resumed run keeps their records up to the checkpoint's step; a fresh run refuses to start over
// existing checkpoints.
func (t *Trainer) openMetrics() error {
	mp, pp := filepath.Join(t.opt.OutDir, "metrics.jsonl"), filepath.Join(t.opt.OutDir, "perf.jsonl")
	var err error
	if t.opt.Resume {
		if err := t.restore(); err != nil {
			return err
		}
		if !t.primary() {
			return nil
		}
		if t.metricsW, err = metrics.Resume(mp, t.st.Step); err != nil {
			return fmt.Errorf("ppo: %w", err)
		}
		if t.perfW, err = metrics.Resume(pp, t.st.Step); err != nil {
			t.metricsW.Close()
			return fmt.Errorf("ppo: %w", err)
		}
		return nil
	}
	if steps := t.ckpts.Existing(); len(steps) > 0 {
		return fmt.Errorf("ppo: %s already holds checkpoints (step %d): resume the run or choose a new output",
			t.ckpts.Root, steps[len(steps)-1])
	}
	if !t.primary() {
		return nil
	}
	if t.metricsW, err = metrics.Create(mp); err != nil {
		return fmt.Errorf("ppo: %w", err)
	}
	if t.perfW, err = metrics.Create(pp); err != nil {
		t.metricsW.Close()
		return fmt.Errorf("ppo: %w", err)
	}
	return nil
}

// checkpoint saves OutDir/checkpoints/step-NNNNNNNN through train/checkpoint: the actor as an HF
// model (weights + config.json, plus CheckpointFiles), every trained variable and optimiser
// moment bit for bit, and state.json (step, λ state and episode-cost window, data positions,
// config, frozen models by path and hash). Weights or optimiser state holding NaN/Inf are never
// saved. It returns the directory. A step whose checkpoint exists already (the one a resumed run
// restored, interrupted before its first rollout batch) is not written again: it would be the
// same state, and with ZeRO-1 the ranks hold only their own moments before their first update.
func (t *Trainer) checkpoint() (string, error) {
	if t.saved == t.st.Step {
		if !t.primary() {
			return "(by rank 0)", nil
		}
		return t.ckpts.Dir(t.st.Step), nil
	}
	lams, err := t.rankLambdas() // every rank takes part
	if err != nil {
		return "", fmt.Errorf("ppo checkpoint step %d: %w", t.st.Step, err)
	}
	// With ZeRO-1 every rank takes part: rank 0 streams the moments others own from them.
	var (
		owned []checkpoint.Owned
		ctx   *context.Context
		sync  = func() error { return nil } // rank 0's Nets.Checkpoint syncs
	)
	if sn, ok := t.nets.(shardedNets); ok {
		if owned, ctx = sn.ShardedState(); len(owned) > 0 {
			sync = sn.SyncState
		}
	}
	dir, err := checkpoint.SaveSharded(t.comm, ctx, owned, sync, func(remote []safetensors.Tensor) (string, error) {
		return t.save(lams, remote)
	})
	if err == nil {
		t.saved = t.st.Step
	}
	return dir, err
}

// shardedNets are Nets whose optimiser state may be sharded across ranks (GraphNets).
type shardedNets interface {
	// ShardedState lists the sharded tensors with their owners (nil: none) and the context
	// holding this rank's share; SyncState brings that context up to date.
	ShardedState() ([]checkpoint.Owned, *context.Context)
	SyncState() error
}

// save is rank 0's part of checkpoint; remote are training-state tensors other ranks hold.
func (t *Trainer) save(lams []json.RawMessage, remote []safetensors.Tensor) (string, error) {
	for _, w := range []*metrics.Writer{t.metricsW, t.perfW} {
		if err := w.Sync(); err != nil {
			return "", fmt.Errorf("ppo checkpoint: %w", err)
		}
	}
	nc, err := t.nets.Checkpoint()
	if err != nil {
		return "", fmt.Errorf("ppo checkpoint step %d: %w", t.st.Step, err)
	}
	st, err := t.checkpointState()
	if err != nil {
		return "", err
	}
	if len(lams) > 1 {
		all, err := json.Marshal(lams)
		if err != nil {
			return "", fmt.Errorf("ppo checkpoint: λ states: %w", err)
		}
		st.Extra = map[string]json.RawMessage{extraWorldSize: json.RawMessage(strconv.Itoa(len(lams))), extraRankLambda: all}
	}
	state := checkpoint.WithRemote(nc.State, remote)
	dir, err := t.ckpts.Save(&checkpoint.Checkpoint{State: st, Weights: nc.Weights, Config: nc.Config,
		TrainState: state, TrainStateMeta: nc.StateMeta, WeightsScope: nc.WeightsScope, Files: t.opt.CheckpointFiles})
	if err != nil {
		return "", fmt.Errorf("ppo: %w", err)
	}
	return dir, nil
}

func (t *Trainer) checkpointState() (checkpoint.State, error) {
	fail := func(what string, err error) (checkpoint.State, error) {
		return checkpoint.State{}, fmt.Errorf("ppo checkpoint: %s: %w", what, err)
	}
	pos := position{Prompts: t.prompts.Pos, GlobalStep: t.st.GlobalStep}
	if t.ptx != nil {
		pos.PTX = t.ptx.Pos
	}
	data, err := json.Marshal(pos)
	if err != nil {
		return fail("data position", err)
	}
	lam, err := json.Marshal(t.lag.State())
	if err != nil {
		return fail("λ state", err)
	}
	cfg, err := t.runConfig()
	if err != nil {
		return fail("config", err)
	}
	return checkpoint.State{Step: t.st.Step, Kind: t.Kind(), Config: cfg, Data: data, Lambda: lam,
		Frozen: t.opt.Frozen}, nil
}

// runConfig is the configuration checkpoints store and a resume compares.
func (t *Trainer) runConfig() (json.RawMessage, error) {
	if t.opt.Config != nil {
		return json.Marshal(t.opt.Config)
	}
	return json.Marshal(t.cfg)
}

// restore loads the newest intact checkpoint after checking its kind, config and frozen models.
func (t *Trainer) restore() error {
	cfg, err := t.runConfig()
	if err != nil {
		return fmt.Errorf("ppo resume: config: %w", err)
	}
	l, err := t.ckpts.Resume(checkpoint.ResumeOptions{Kind: t.Kind(), Config: cfg, Ignore: t.opt.ConfigIgnore,
		Frozen: t.opt.Frozen, AllowConfigChange: t.opt.AllowConfigChange})
	if err != nil {
		return fmt.Errorf("ppo: %w", err)
	}
	defer l.Close()
	fail := func(what string, err error) error { return fmt.Errorf("ppo resume from %s: %s: %w", l.Dir, what, err) }
	if l.TrainState == nil {
		return fail("training state", errors.New("missing"))
	}
	var pos position
	if err := json.Unmarshal(l.State.Data, &pos); err != nil {
		return fail("data position", err)
	}
	world, err := worldOf(l.State.Extra)
	if err != nil {
		return fail("state.json", err)
	}
	if world != t.comm.Size() {
		return fmt.Errorf("ppo resume from %s: the checkpoint was written by %d rank(s) and this run has %d: resume with the same world size (each rank's episode-cost window is its own)",
			l.Dir, world, t.comm.Size())
	}
	lamJSON := l.State.Lambda
	if world > 1 {
		var lams []json.RawMessage
		if err := json.Unmarshal(l.State.Extra[extraRankLambda], &lams); err != nil || len(lams) != world {
			return fail("the ranks' λ states", fmt.Errorf("want %d: %v", world, err))
		}
		lamJSON = lams[t.comm.Rank()]
	}
	var lam LambdaState
	if err := json.Unmarshal(lamJSON, &lam); err != nil {
		return fail("λ state", err)
	}
	if len(l.State.RNG) > 0 && !t.opt.AllowConfigChange {
		// Written before sampling had per-row streams: its samples came from one sequential
		// generator per process, which this version no longer has.
		return fmt.Errorf("ppo resume from %s: state.json holds a sampling generator state (\"rng\") from an older version that drew one random stream per process; this version derives every row's stream from --seed, the step and the row, so the run cannot continue its samples exactly: start it again, or pass --allow-config-change to continue with the new streams", l.Dir)
	}
	if err := t.nets.Restore(l); err != nil {
		return fail("networks", err)
	}
	if err := t.lag.SetState(lam); err != nil {
		return fail("λ state", err)
	}
	t.prompts.Seek(pos.Prompts)
	if t.ptx != nil {
		t.ptx.Seek(pos.PTX)
	}
	t.st = State{Step: l.State.Step, GlobalStep: pos.GlobalStep}
	t.saved = t.st.Step
	return nil
}
