package shards

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// DemoSet is one dataset of the demo: its directory name under the output, kind,
// input specs (relative to the assets/data directory) and length policy.
type DemoSet struct {
	Name   string
	Kind   datasets.Kind
	Inputs []string
	// MaxLengthDiv divides the demo's max length (prompts get half: room to answer).
	MaxLengthDiv int
	Overlong     string
	// EvalFraction > 0 also writes <name>-eval, a seeded held-out split.
	EvalFraction float64
}

// DemoSets lists what the demo packs from the bundled assets:
//   - sft: the chosen dialogues of hh-rlhf helpful (every assistant turn trained);
//   - preference: hh-rlhf helpful pairs (reward model), 10% held out as preference-eval;
//   - safety-preference: hh-rlhf harmless pairs (signs unknown = 0: pairwise term only)
//     plus PKU-SafeRLHF rows (signs from is_response_*_safe) (cost model), 10% held out as
//     safety-preference-eval;
//   - prompts: the prompt parts of PKU-SafeRLHF, hh-rlhf harmless and helpful-base (PPO-Lag);
//     prompts longer than the budget keep BOS and their last tokens, as ppo-lag cuts them;
//   - eval-prompts: BeaverTails-Evaluation, the Safe RLHF GPT-4 problems and AdvBench (evaluation).
func DemoSets() []DemoSet {
	helpful := []string{
		"hh-rlhf-helpful:helpful/hh-rlhf-helpful-base-test.jsonl.gz",
		"hh-rlhf-helpful:helpful/hh-rlhf-helpful-online-test.jsonl.gz",
		"hh-rlhf-helpful:helpful/hh-rlhf-helpful-rejection-sampled-test.jsonl.gz",
	}
	return []DemoSet{
		{Name: "sft", Kind: datasets.KindSFT, Inputs: helpful, MaxLengthDiv: 1, Overlong: datasets.OverlongPromptLeft},
		{Name: "preference", Kind: datasets.KindPreference, Inputs: helpful, MaxLengthDiv: 1, Overlong: datasets.OverlongPromptLeft, EvalFraction: 0.1},
		{Name: "safety-preference", Kind: datasets.KindSafetyPreference, MaxLengthDiv: 1, Overlong: datasets.OverlongPromptLeft, EvalFraction: 0.1,
			Inputs: []string{"hh-rlhf-harmless:hh-rlhf/harmless-base-test.jsonl.gz", "pku-saferlhf:pku-saferlhf/align-anything-preference-sample.json"}},
		{Name: "prompts", Kind: datasets.KindPrompts, MaxLengthDiv: 2, Overlong: datasets.OverlongPromptLeft,
			Inputs: []string{"pku-saferlhf:pku-saferlhf/align-anything-preference-sample.json", "hh-rlhf-harmless:hh-rlhf/harmless-base-test.jsonl.gz", "hh-rlhf-helpful:helpful/hh-rlhf-helpful-base-test.jsonl.gz"}},
		{Name: "eval-prompts", Kind: datasets.KindPrompts, MaxLengthDiv: 2, Overlong: datasets.OverlongPromptLeft,
			Inputs: []string{"prompts:eval/beavertails-evaluation.json", "prompts:eval/safe-rlhf-gpt4-problems.json", "prompts:eval/advbench-harmful_behaviors.csv"}},
	}
}

// PackDemo packs every DemoSets entry from assetsData (the assets/data directory)
// into out/<name> (and out/<name>-eval for sets with an eval fraction), with tok
// and sequences capped at maxLen tokens. Existing directories are refused unless
// force. The result maps directory names to manifests.
func PackDemo(ctx context.Context, assetsData, out string, tok tokenizer.Tokenizer, maxLen int, force bool, progress io.Writer) (map[string]*Manifest, error) {
	res := map[string]*Manifest{}
	for _, set := range DemoSets() {
		var inputs []string
		for _, in := range set.Inputs {
			sp, err := datasets.ParseSpec(in)
			if err != nil {
				return nil, err
			}
			sp.Path = filepath.Join(assetsData, sp.Path)
			inputs = append(inputs, sp.String())
		}
		if progress != nil {
			fmt.Fprintf(progress, "packing %s (%s)\n", set.Name, set.Kind)
		}
		m, err := Pack(ctx, PackOptions{Kind: set.Kind, Inputs: inputs, Tokenizer: tok, Out: filepath.Join(out, set.Name), Force: force,
			Build: datasets.BuildOptions{MaxLength: maxLen / set.MaxLengthDiv, Overlong: set.Overlong}, Progress: progress,
			EvalFraction: set.EvalFraction})
		if err != nil {
			return nil, fmt.Errorf("demo set %s: %w", set.Name, err)
		}
		res[set.Name] = m
		if set.EvalFraction > 0 {
			em, err := ReadManifest(filepath.Join(out, set.Name+"-eval"))
			if err != nil {
				return nil, err
			}
			res[set.Name+"-eval"] = em
		}
	}
	return res, nil
}
