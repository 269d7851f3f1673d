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
// A score model with no tokenizer of its vocabulary beside it is refused, naming the flag and
// the model, even when its vocabulary is the actor's: it is never silently fed the actor's ids.
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
	bare := filepath.Join(t.TempDir(), "bare") // a reward model on the actor's vocabulary, saved without a tokenizer
	bcfg, bw, err := model.LoadAny(actor)
	if err != nil {
		t.Fatal(err)
	}
	delete(bw, model.NameLMHead)
	model.InitScoreHead(bcfg, bw, 1, 3)
	if err := model.Save(bare, bcfg, bw); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, flag, want string
		reward, cost     string
	}{
		{"cost model whose tokenizer does not fit its 400 tokens", "cost-model", "no tokenizer with its 400 tokens", c.RewardModel, score(512, 400)},
		{"reward model on the actor's vocabulary without a tokenizer", "reward-model", "no tokenizer with its 32000 tokens", bare, c.CostModel},
	} {
		c.RewardModel, c.CostModel = tc.reward, tc.cost
		_, err := loadRunInputs(c, dist.Self{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--"+tc.flag) {
			t.Errorf("%s: err = %v, want one naming --%s and %q", tc.name, err, tc.flag, tc.want)
		}
	}
}
