package eval

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/gomlx/gomlx/backends"
	"github.com/saferlhf/saferlhf/data/shards"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/native/llama"
	"github.com/saferlhf/saferlhf/train/config"
	"github.com/saferlhf/saferlhf/train/model"
)

// ArenaOptions configures RunArena (spec §8, evaluate/arena.py).
type ArenaOptions struct {
	Red      string `flag:"red" help:"red-corner policy (llama2.c .bin or HF dir), e.g. the SFT model"`
	Blue     string `flag:"blue" help:"blue-corner policy, e.g. the PPO-Lag model"`
	RedName  string `flag:"red-name" help:"display name of the red corner"`
	BlueName string `flag:"blue-name" help:"display name of the blue corner"`
	Reward   string `flag:"reward-model" help:"reward model directory (train-rm output)"`
	Cost     string `flag:"cost-model" help:"cost model directory (train-cm output)"`
	// Tokenizer is the policies' tokenizer. The score models use the tokenizer saved beside them
	// (this one when there is none); a score model on another vocabulary scores the answers
	// re-tokenised through text, as the reference does.
	Tokenizer string `flag:"tokenizer" help:"the policies' tokenizer (default: the one beside --red); score models use the one saved beside them, re-tokenising answers when it differs"`
	// Prompts default to the held-out part of the bundled PKU-SafeRLHF rows (the reference's
	// arena answers PKU-SafeRLHF/test prompts; no test split is bundled); the GPT-4 red-team
	// prompts (assets/data/eval/safe-rlhf-gpt4-problems.json) are the other choice.
	Prompts      []string `flag:"prompts" help:"prompt files ([format[/part]:[proportion:]]path) or token-shard directories, comma-separated or repeated: PKU-SafeRLHF rows as the reference's arena (its test split if you have it; the default is the held-out part of the bundled train rows, which no demo stage trains on), or assets/data/eval/safe-rlhf-gpt4-problems.json for the GPT-4 red-team prompts"`
	Limit        int      `flag:"limit" help:"at most this many prompts (0: all)"`
	MaxNewTokens int      `flag:"max-new-tokens" help:"cap on answer tokens (0: none, --max-length decides)"`
	Temperature  float64  `flag:"temperature" help:"sampling temperature (0: greedy)"`
	TopP         float64  `flag:"top-p" help:"nucleus sampling (1: off)"`
	TopK         int      `flag:"top-k" help:"keep the K most likely tokens before top-p (0: off; HF's default 50)"`
	Seed         uint64   `flag:"seed" help:"sampling and bootstrap seed"`
	Batch        int      `flag:"batch-size" help:"prompts per generation/scoring batch"`
	MaxLength    int      `flag:"max-length" help:"prompt + answer tokens, as the reference's max_length (also the scoring width)"`
	Bootstrap    int      `flag:"bootstrap" help:"bootstrap resamples for the Elo intervals"`
	Out          string   `flag:"out" help:"directory for arena.json"`
	Force        bool     `flag:"force" help:"replace a previous report of this command in --out"`
}

// ArenaPrompts is eval-arena's and make compare's default prompt set: PKU-SafeRLHF prompts, as
// the reference's arena (which answers PKU-SafeRLHF/test). No test split is bundled, so it is the
// held-out part (datasets.PartHeldOut: one prompt in five, by prompt hash; 100 rows) of the 500
// bundled train rows, which the demo's cost model and judge leave out (pku-saferlhf/rest) and no
// other stage reads.
const ArenaPrompts = "pku-saferlhf/heldout:assets/data/pku-saferlhf/pku-saferlhf-train-head500.jsonl"

// DefaultArenaOptions returns eval-arena's defaults.
func DefaultArenaOptions() ArenaOptions {
	return ArenaOptions{RedName: "red", BlueName: "blue", Prompts: []string{ArenaPrompts},
		MaxNewTokens: 0, Temperature: 1, TopP: 1, TopK: 50, Seed: 42, Batch: 16, MaxLength: 512, Bootstrap: 1000}
}

// Validate checks the options before any work; errors name the flags.
func (o *ArenaOptions) Validate() error {
	var ck config.Checker
	for _, f := range []struct{ name, v string }{{"red", o.Red}, {"blue", o.Blue}, {"reward-model", o.Reward}, {"cost-model", o.Cost}} {
		ck.Required(f.name, f.v)
	}
	ck.Check(len(o.Prompts) > 0, "--prompts is required")
	ck.NonNegativeInt("max-new-tokens", o.MaxNewTokens)
	ck.PositiveInt("batch-size", o.Batch)
	ck.Check(o.MaxLength >= 8, "--max-length must be >= 8, got %d", o.MaxLength)
	ck.NonNegativeInt("limit", o.Limit)
	ck.NonNegativeInt("bootstrap", o.Bootstrap)
	ck.NonNegative("temperature", o.Temperature)
	ck.Fraction("top-p", o.TopP)
	ck.NonNegativeInt("top-k", o.TopK)
	return ck.Err()
}

// ArenaSample is one prompt with both answers and their scores.
type ArenaSample struct {
	Prompt     string  `json:"prompt"`
	Red        string  `json:"red"`
	Blue       string  `json:"blue"`
	RedReward  float64 `json:"red_reward"`
	RedCost    float64 `json:"red_cost"`
	BlueReward float64 `json:"blue_reward"`
	BlueCost   float64 `json:"blue_cost"`
}

// ArenaReport is eval-arena's result: the arena statistics, Elo ratings from the
// pairwise helpfulness (reward) and harmlessness (cost) outcomes with bootstrap
// intervals, and every sample.
type ArenaReport struct {
	Arena        ArenaResult   `json:"arena"`
	EloReward    EloResult     `json:"elo_helpfulness"`
	EloCost      EloResult     `json:"elo_harmlessness"`
	MaxNewTokens int           `json:"max_new_tokens"`
	MaxLength    int           `json:"max_length"`
	Temperature  float64       `json:"temperature"`
	Seed         uint64        `json:"seed"`
	Samples      []ArenaSample `json:"samples"`
}

// RunArena lets two policies answer the prompts, scores each answer with the reward
// and cost models, and computes the arena statistics and Elo ratings.
func RunArena(be backends.Backend, o ArenaOptions) (*ArenaReport, error) {
	if o.RedName == "" {
		o.RedName = "red"
	}
	if o.BlueName == "" {
		o.BlueName = "blue"
	}
	if o.MaxNewTokens < 0 || o.Batch < 1 || o.MaxLength < 2 {
		return nil, fmt.Errorf("arena: max new tokens %d must be >= 0, batch %d and max length %d positive", o.MaxNewTokens, o.Batch, o.MaxLength)
	}
	tokPath, err := model.ResolveTokenizer(o.Tokenizer, o.Red)
	if err != nil {
		return nil, fmt.Errorf("arena: red policy: %w", err)
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return nil, err
	}
	scorer := func(path string) (*Scorer, error) {
		own, err := model.OwnTokenizer(path)
		if err != nil {
			return nil, err
		}
		return NewScorer(be, path, own, o.Batch, o.MaxLength)
	}
	rm, err := scorer(o.Reward)
	if err != nil {
		return nil, fmt.Errorf("arena: reward model: %w", err)
	}
	cm, err := scorer(o.Cost)
	if err != nil {
		return nil, fmt.Errorf("arena: cost model: %w", err)
	}
	texts, ids, err := loadArenaPrompts(o.Prompts, tok, o.Seed, o.Limit)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("arena: no prompts in %v", o.Prompts)
	}
	rep := &ArenaReport{MaxNewTokens: o.MaxNewTokens, MaxLength: o.MaxLength, Temperature: o.Temperature, Seed: o.Seed}
	answers := [2][][]int32{}
	seqs := [2][][]int32{}
	for k, path := range []string{o.Red, o.Blue} {
		answers[k], seqs[k], err = generate(be, path, tok, ids, o)
		if err != nil {
			return nil, fmt.Errorf("arena: %s: %w", path, err)
		}
	}
	var scores [2][2][]float64 // [model][reward, cost]
	for k := range 2 {
		for j, sc := range []*Scorer{rm, cm} {
			if scores[k][j], err = sc.Score(Retokenize(seqs[k], tok, sc.Tok)); err != nil {
				return nil, err
			}
		}
	}
	if rep.Arena, err = Arena(o.RedName, o.BlueName, scores[0][0], scores[0][1], scores[1][0], scores[1][1]); err != nil {
		return nil, err
	}
	ecfg := DefaultEloConfig()
	ecfg.Seed = o.Seed
	if o.Bootstrap > 0 {
		ecfg.Bootstrap = o.Bootstrap
	}
	battles, err := BattlesFromScores(o.BlueName, o.RedName, scores[1][0], scores[0][0], true)
	if err != nil {
		return nil, err
	}
	if rep.EloReward, err = Elo(battles, ecfg); err != nil {
		return nil, err
	}
	if battles, err = BattlesFromScores(o.BlueName, o.RedName, scores[1][1], scores[0][1], false); err != nil {
		return nil, err
	}
	if rep.EloCost, err = Elo(battles, ecfg); err != nil {
		return nil, err
	}
	for i := range ids {
		rep.Samples = append(rep.Samples, ArenaSample{Prompt: texts[i],
			Red: tok.Decode(answers[0][i]), Blue: tok.Decode(answers[1][i]),
			RedReward: scores[0][0][i], RedCost: scores[0][1][i], BlueReward: scores[1][0][i], BlueCost: scores[1][1][i]})
	}
	if o.Out != "" {
		if err := writeJSON(filepath.Join(o.Out, "arena.json"), rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// generate samples an answer to every prompt and returns the answers (response
// tokens) and the full sequences (prompt + response) to score.
func generate(be backends.Backend, path string, tok tokenizer.Tokenizer, prompts [][]int32, o ArenaOptions) (answers, seqs [][]int32, err error) {
	cfg, w, err := model.LoadAny(path)
	if err != nil {
		return nil, nil, err
	}
	if err := model.CheckPolicy(cfg, path); err != nil {
		return nil, nil, err
	}
	if cfg.VocabSize < tok.VocabSize() {
		return nil, nil, fmt.Errorf("vocabulary %d is smaller than the tokenizer's %d", cfg.VocabSize, tok.VocabSize())
	}
	gen, err := llama.NewGenerator(be, cfg, w)
	if err != nil {
		return nil, nil, err
	}
	for start := 0; start < len(prompts); start += o.Batch {
		batch := prompts[start:min(len(prompts), start+o.Batch)]
		width := 0
		for _, p := range batch {
			width = max(width, len(p))
		}
		maxNew := o.MaxNewTokens
		if o.MaxLength > 0 { // max_length counts the (left-padded) prompt
			if room := o.MaxLength - width; maxNew == 0 || room < maxNew {
				maxNew = room
			}
		}
		if maxNew < 1 {
			return nil, nil, fmt.Errorf("prompts of %d tokens leave no room for an answer in --max-length %d", width, o.MaxLength)
		}
		ro, err := gen.Generate(batch, model.GenerateOptions{MaxNewTokens: maxNew, Temperature: o.Temperature,
			TopP: o.TopP, TopK: o.TopK, Seed: o.Seed, FirstRow: uint64(start), EOS: tok.EOS(), Pad: tok.Pad(), Unk: -1})
		if err != nil {
			return nil, nil, err
		}
		for i, p := range batch {
			row := ro.Seq[i]
			resp := append([]int32(nil), row[ro.PromptWidth:ro.PromptWidth+ro.ResponseLen[i]]...)
			answers = append(answers, trimEOS(resp, tok.EOS()))
			seqs = append(seqs, append(append([]int32(nil), p...), resp...))
		}
	}
	return answers, seqs, nil
}

func trimEOS(ids []int32, eos int32) []int32 {
	if n := len(ids); n > 0 && ids[n-1] == eos {
		return ids[:n-1]
	}
	return ids
}

// Format writes the human-readable tables: arena statistics and both Elo tables.
func (r *ArenaReport) Format(w io.Writer) error {
	if err := r.Arena.Format(w); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nElo from helpfulness (reward model) outcomes:")
	if err := r.EloReward.Format(w); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nElo from harmlessness (cost model) outcomes:")
	return r.EloCost.Format(w)
}

// loadArenaPrompts reads the prompts of specs, at most limit (0: all), with their texts for
// the report (shards.ReadPrompts).
func loadArenaPrompts(specs []string, tok tokenizer.Tokenizer, seed uint64, limit int) (texts []string, ids [][]int32, err error) {
	ps, err := shards.ReadPrompts(specs, tok, seed, limit)
	if err != nil {
		return nil, nil, err
	}
	for _, p := range ps {
		texts, ids = append(texts, p.Text), append(ids, p.IDs)
	}
	return texts, ids, nil
}
