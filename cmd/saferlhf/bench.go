package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/saferlhf/saferlhf/internal/backend"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/ppo"
)

// runBench times PPO-Lag steps on a model (default the bundled stories260K, its trunk reused with
// fresh score heads for the reward/cost models and critics) and prints one table: rollout and
// train tokens/s, one step split into generation / scoring / update, and peak memory.
// bench/torch_ppo_step.py runs the same step in PyTorch for the ratio.
func runBench(args []string) error {
	fs := newFlagSet("bench", "")
	modelPath := fs.String("model", "assets/data/models/stories260K.bin", "policy model (llama2.c .bin or HF dir)")
	batch := fs.Int("batch", 16, "rollouts per step (prompt batch = train batch)")
	promptLen := fs.Int("prompt-len", 32, "prompt tokens (BOS + random ids)")
	genLen := fs.Int("gen-len", 32, "generated tokens (EOS disabled so every row has exactly this many)")
	steps := fs.Int("steps", 3, "measured steps (after one warm-up step that compiles the graphs)")
	be := fs.String("backend", "", "GoMLX backend (default $SAFERLHF_BACKEND or "+backend.Default+")")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if *batch <= 0 || *promptLen <= 1 || *genLen <= 0 || *steps <= 0 {
		return usagef("--batch, --prompt-len > 1, --gen-len and --steps must be positive")
	}
	b, err := backend.New(*be)
	if err != nil {
		return err
	}
	acfg, aw, err := model.LoadAny(*modelPath)
	if err != nil {
		return err
	}
	score := func(seed uint64) (ppo.ModelSpec, error) {
		c, w, err := model.LoadAny(*modelPath)
		if err != nil {
			return ppo.ModelSpec{}, err
		}
		delete(w, model.NameLMHead)
		model.InitScoreHead(c, w, 1, seed)
		return ppo.ModelSpec{Cfg: c, Weights: w}, nil
	}
	rm, err := score(1)
	if err != nil {
		return err
	}
	cm, err := score(2)
	if err != nil {
		return err
	}
	cfg := ppo.DefaultConfig(ppo.PPOLag)
	cfg.PromptBatchSize, cfg.TrainBatchSize, cfg.MaxSteps = *batch, *batch, 1+*steps
	cfg.MaxNewTokens, cfg.MaxPromptTokens = *genLen, *promptLen
	nets, err := ppo.NewGraphNets(ppo.GraphNetsConfig{Backend: b, Actor: ppo.ModelSpec{Cfg: acfg, Weights: aw},
		Reward: rm, Cost: cm, WithCostCritic: true, Pad: 0, EOS: -1, MaxNewTokens: *genLen, MaxPromptTokens: *promptLen,
		Temperature: 1, TopP: 1, RepPenalty: 1, ActorWeightDecay: cfg.ActorWeightDecay, GradClip: 1}, cfg.ClipRangeRatio, cfg.ClipRangeValue)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(7, 7))
	var prompts [][]int32
	for i := 0; i < *batch; i++ {
		p := []int32{1}
		for len(p) < *promptLen {
			p = append(p, int32(3+rng.IntN(acfg.VocabSize-3)))
		}
		prompts = append(prompts, p)
	}
	set, err := ppo.NewPromptSet(prompts, 1)
	if err != nil {
		return err
	}
	out, err := os.MkdirTemp("", "saferlhf-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(out)
	tr, err := ppo.NewTrainer(cfg, ppo.Options{OutDir: out}, nets, set, nil)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := tr.Run(context.Background()); err != nil {
		return err
	}
	tr.Close()
	wall := time.Since(t0)
	perf := tr.PerfHistory()[1:] // drop the warm-up (compilation) step
	var gen, score_, upd float64
	var genTok, trainTok int
	for _, p := range perf {
		gen += p.GenSeconds
		score_ += p.ScoreSeconds
		upd += p.UpdateSeconds
		genTok += p.GenTokens
		trainTok += p.TrainTokens
	}
	n := float64(len(perf))
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	hwm := procStatus("VmHWM")
	fmt.Printf("saferlhf bench: PPO-Lag step, %s (d=%d, %d layers, vocab %d), batch %d, prompt %d + %d generated tokens, backend %s, GOMAXPROCS %d\n",
		*modelPath, acfg.HiddenSize, acfg.NumLayers, acfg.VocabSize, *batch, *promptLen, *genLen, backend.Resolve(*be), runtime.GOMAXPROCS(0))
	fmt.Printf("| %-34s | %12s |\n", "quantity", "value")
	fmt.Printf("|%s|%s|\n", strings.Repeat("-", 36), strings.Repeat("-", 14))
	row := func(k, v string) { fmt.Printf("| %-34s | %12s |\n", k, v) }
	row("rollout tokens/s (generation)", fmt.Sprintf("%.0f", float64(genTok)/gen))
	row("train tokens/s (actor+2 critics)", fmt.Sprintf("%.0f", float64(trainTok)/upd))
	row("step: generation (s)", fmt.Sprintf("%.3f", gen/n))
	row("step: scoring, 6 models (s)", fmt.Sprintf("%.3f", score_/n))
	row("step: update, 3 models (s)", fmt.Sprintf("%.3f", upd/n))
	row("step: total (s)", fmt.Sprintf("%.3f", (gen+score_+upd)/n))
	row("warm-up step incl. compile (s)", fmt.Sprintf("%.3f", tr.PerfHistory()[0].GenSeconds+tr.PerfHistory()[0].ScoreSeconds+tr.PerfHistory()[0].UpdateSeconds))
	row("peak Go heap (MiB, HeapSys)", fmt.Sprintf("%.1f", float64(ms.HeapSys)/(1<<20)))
	row("Go runtime total (MiB, Sys)", fmt.Sprintf("%.1f", float64(ms.Sys)/(1<<20)))
	row("peak RSS (MiB, VmHWM)", hwm)
	row("wall, all steps (s)", fmt.Sprintf("%.1f", wall.Seconds()))
	return nil
}

// procStatus returns a /proc/self/status field in MiB ("n/a" off Linux).
func procStatus(key string) string {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return "n/a"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%f", &kb); err == nil {
				return fmt.Sprintf("%.1f", kb/1024)
			}
		}
	}
	return "n/a"
}
