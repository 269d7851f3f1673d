package eval

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/gomlx/gomlx/backends"
	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/train/model"
	"github.com/saferlhf/saferlhf/train/stages"
)

// ArenaOptions configures RunArena (spec §8, evaluate/arena.py).
type ArenaOptions struct {
	Red, Blue         string // policy models (llama2.c .bin or HF dir)
	RedName, BlueName string // display names (default "red", "blue")
	Reward, Cost      string // score models from train-rm / train-cm
	Tokenizer         string // default: the one beside the reward model
	Prompts           []string
	Limit             int // at most this many prompts (0: all)
	MaxNewTokens      int
	Temperature, TopP float64
	Seed              uint64
	Batch             int // generation and scoring batch
	MaxLength         int // scoring width (longer sequences keep their last tokens)
	Bootstrap         int // Elo bootstrap resamples
	Out               string
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
	if o.MaxNewTokens < 1 || o.Batch < 1 || o.MaxLength < 2 {
		return nil, fmt.Errorf("arena: max new tokens %d, batch %d and max length %d must be positive", o.MaxNewTokens, o.Batch, o.MaxLength)
	}
	rm, err := NewScorer(be, o.Reward, o.Tokenizer, o.Batch, o.MaxLength)
	if err != nil {
		return nil, fmt.Errorf("arena: reward model: %w", err)
	}
	cm, err := NewScorer(be, o.Cost, o.Tokenizer, o.Batch, o.MaxLength)
	if err != nil {
		return nil, fmt.Errorf("arena: cost model: %w", err)
	}
	tok := rm.Tok
	if cm.Tok.VocabSize() != tok.VocabSize() {
		return nil, fmt.Errorf("arena: reward and cost tokenizers differ (%d vs %d tokens)", tok.VocabSize(), cm.Tok.VocabSize())
	}
	raw, err := stages.LoadRaw(o.Prompts, o.Seed)
	if err != nil {
		return nil, err
	}
	var texts []string
	var ids [][]int32
	seen := map[string]bool{}
	for _, s := range raw {
		p, err := datasets.FormatPrompt(s.Input, "")
		if err != nil || seen[p] { // PromptOnlyDataset de-duplicates prompts
			continue
		}
		seen[p] = true
		texts = append(texts, s.Input[len(s.Input)-1])
		ids = append(ids, tok.Encode(p, true))
		if o.Limit > 0 && len(ids) == o.Limit {
			break
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("arena: no prompts in %v", o.Prompts)
	}
	rep := &ArenaReport{MaxNewTokens: o.MaxNewTokens, Temperature: o.Temperature, Seed: o.Seed}
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
		if scores[k][0], err = rm.Score(seqs[k]); err != nil {
			return nil, err
		}
		if scores[k][1], err = cm.Score(seqs[k]); err != nil {
			return nil, err
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
	cfg, w, err := stages.LoadModel(path)
	if err != nil {
		return nil, nil, err
	}
	if cfg.VocabSize < tok.VocabSize() {
		return nil, nil, fmt.Errorf("vocabulary %d is smaller than the tokenizer's %d", cfg.VocabSize, tok.VocabSize())
	}
	delete(w, model.NameScoreW)
	delete(w, model.NameScoreB)
	cfg.ScoreDim = 0
	gen, err := model.NewGeneratorFromWeights(be, cfg, w)
	if err != nil {
		return nil, nil, err
	}
	for start := 0; start < len(prompts); start += o.Batch {
		batch := prompts[start:min(len(prompts), start+o.Batch)]
		ro, err := gen.Generate(batch, model.GenerateOptions{MaxNewTokens: o.MaxNewTokens, Temperature: o.Temperature,
			TopP: o.TopP, Seed: o.Seed + uint64(start), EOS: tok.EOS(), Pad: tok.Pad(), Unk: -1})
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
