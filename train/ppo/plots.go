package ppo

import (
	"os"
	"path/filepath"

	"github.com/saferlhf/saferlhf/train/metrics"
)

// PlotGroups are the training-curve PNGs written by Plot (file name → metrics.jsonl keys).
var PlotGroups = map[string][]string{
	"reward_cost":  {"reward", "cost"},
	"harmful_rate": {"harmful_rate"},
	"lambda":       {"lambda", "jc_minus_d"},
	"kl":           {"kl", "approx_kl"},
	"clip_frac":    {"clip_frac"},
	"value_losses": {"reward_critic_loss", "cost_critic_loss"},
	"actor_loss":   {"actor_loss"},
	"gen_len":      {"gen_len_mean"},
}

// Plot draws the training curves of outDir/metrics.jsonl (and tokens/s from perf.jsonl) into
// outDir/plots and returns the files written.
func Plot(outDir string) ([]string, error) {
	dir := filepath.Join(outDir, "plots")
	files, err := metrics.PlotFile(filepath.Join(outDir, "metrics.jsonl"), dir, PlotGroups, 0.6)
	if err != nil {
		return files, err
	}
	if _, err := os.Stat(filepath.Join(outDir, "perf.jsonl")); err == nil {
		more, err := metrics.PlotFile(filepath.Join(outDir, "perf.jsonl"), dir,
			map[string][]string{"throughput": {"gen_tokens_per_s", "train_tokens_per_s"}}, 0.6)
		files = append(files, more...)
		if err != nil {
			return files, err
		}
	}
	return files, nil
}
