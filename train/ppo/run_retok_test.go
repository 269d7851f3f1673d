package ppo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/train/dist"
	"github.com/saferlhf/saferlhf/train/model"
)

// TestLoadRunInputsScoreModelsOnAnotherVocabulary: score models with their own tokenizer read
// re-tokenised text, so they are checked against that tokenizer, not the actor's: a Llama-2-vocabulary
// actor takes a reward model and a cost model on the 512-token story vocabulary whose context is
// shorter than the actor's prompt + answer (a re-tokenised row keeps BOS and its last tokens).
// A score model with no tokenizer of its vocabulary beside it reads the actor's ids, and is
// still refused when its vocabulary is smaller than the actor's tokenizer's.
func TestLoadRunInputsScoreModelsOnAnotherVocabulary(t *testing.T) {
	a := filepath.Join("..", "..", "assets", "data")
	b, err := os.ReadFile(filepath.Join("..", "..", "scripts", "configs", "score-llama2-1layer.json"))
	if err != nil {
		t.Fatal(err)
	}
	acfg, err := model.ParseHFConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	actor := filepath.Join(t.TempDir(), "actor")
	if err := model.SaveWithTokenizer(actor, acfg, model.RandomWeights(acfg, 1), filepath.Join(a, "models", "tokenizer.model")); err != nil {
		t.Fatal(err)
	}
	score := func(maxPos, vocab int) string {
		cfg, w, err := model.LoadLlama2C(filepath.Join(a, "models", "stories260K.bin"))
		if err != nil {
			t.Fatal(err)
		}
		model.InitScoreHead(cfg, w, 1, 2)
		cfg.MaxPositions = maxPos
		if vocab < cfg.VocabSize {
			cfg.VocabSize = vocab
			e := w[model.NameEmbed]
			e.Data, e.Shape[0] = e.Data[:vocab*cfg.HiddenSize], vocab
		}
		dir := filepath.Join(t.TempDir(), "score")
		if err := model.SaveWithTokenizer(dir, cfg, w, filepath.Join(a, "models", "tok512.bin")); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	c := DefaultRunConfig(PPOLag)
	c.Model, c.Data = actor, []string{filepath.Join(a, "eval", "safe-rlhf-gpt4-problems.json")}
	c.RewardModel, c.CostModel = score(32, 512), score(32, 512)
	c.MaxPromptTokens, c.MaxNewTokens = 32, 32
	in, err := loadRunInputs(c, dist.Self{})
	if err != nil {
		t.Fatalf("score models on another vocabulary: %v", err)
	}
	if in.nets.RewardTokenizer == nil || in.nets.CostTokenizer == nil || in.nets.RewardTokenizer.VocabSize() != 512 ||
		in.nets.RewardCritic == nil || in.nets.RewardCritic.Cfg.VocabSize != acfg.VocabSize {
		t.Fatalf("reward tokenizer %v, critic %v: want the story tokenizer and a critic on the actor's vocabulary",
			in.nets.RewardTokenizer, in.nets.RewardCritic)
	}
	c.CostModel = score(512, 400) // tok512.bin beside it does not fit its 400 tokens
	if _, err := loadRunInputs(c, dist.Self{}); err == nil || !strings.Contains(err.Error(), "vocabulary 400 is smaller than the tokenizer's 32000") {
		t.Fatalf("a cost model with no tokenizer of its own, smaller than the actor's: err = %v", err)
	}
}
