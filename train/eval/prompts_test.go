package eval

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/prefs"
	"github.com/saferlhf/saferlhf/data/shards"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// TestMultiTurnEOS: eval-cm's single responses read from raw files put the EOS after earlier
// assistant turns, exactly as the shard builder does (prompts: shards.TestReadPrompts).
func TestMultiTurnEOS(t *testing.T) {
	tok, err := tokenizer.Load(filepath.Join(assets, "models/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	s := datasets.RawSample{Input: []string{"hi there", "hello!", "how are you?"}, Answer: "fine", OtherAnswer: "no",
		HasOther: true, Better: true}
	seq, err := prefs.Single(s, tok, 512, "right")
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := datasets.Build(tok, datasets.KindPreference, &s, datasets.BuildOptions{})
	if !slices.Equal(seq, pair.Better) {
		t.Errorf("eval-cm single %v, shard %v", seq, pair.Better)
	}
}

// TestSingleTruncatedAsTrained: eval-cm cuts a single labelled answer longer than --max-length as
// training cuts each answer of a pair (prefs.Build, and pack's shards): with prompt-left, BOS, at
// least 8 prompt tokens and the start of the answer stay (it kept the last max-length−1 tokens).
func TestSingleTruncatedAsTrained(t *testing.T) {
	tok, err := tokenizer.Load(filepath.Join(assets, "models/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	prompt := strings.Repeat("Tell me a long story about a cat and a dog. ", 4)
	a, b := strings.Repeat(" The cat ran.", 12), strings.Repeat(" The dog ran.", 12)
	s := datasets.RawSample{Input: []string{prompt}, Answer: a, OtherAnswer: b, HasOther: true, Better: true}
	ia, pl, _ := datasets.EncodeResponse(tok, s.Input, a)
	ib, _, _ := datasets.EncodeResponse(tok, s.Input, b)
	if len(ia) != len(ib) || pl < 20 || len(ia)-pl < 40 {
		t.Fatalf("set-up: answers of %d and %d tokens after a %d-token prompt", len(ia), len(ib), pl)
	}
	for _, c := range []struct {
		truncate, overlong string
		maxLen             int
	}{
		{"right", datasets.OverlongTruncate, pl + 10},
		{"prompt-left", datasets.OverlongPromptLeft, 32},      // the prompt's cut is bounded by the 8 kept tokens
		{"prompt-left", datasets.OverlongPromptLeft, pl + 10}, // the cut fits in the prompt
		{"prompt-left", datasets.OverlongPromptLeft, len(ia)}, // no cut
	} {
		single, err := prefs.Single(s, tok, c.maxLen, c.truncate)
		if err != nil {
			t.Fatal(err)
		}
		pair, ok, err := prefs.Build(s, tok, c.maxLen, c.truncate, false)
		if err != nil || !ok {
			t.Fatalf("%s %d: pair: %v %v", c.truncate, c.maxLen, ok, err)
		}
		shard, err := datasets.Build(tok, datasets.KindPreference, &s, datasets.BuildOptions{MaxLength: c.maxLen, Overlong: c.overlong})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(single, pair.Hi) || !slices.Equal(single, shard.Better) || len(single) != min(c.maxLen, len(ia)) {
			t.Errorf("%s, max length %d: eval-cm single %v,\ntrained pair %v,\nshard %v", c.truncate, c.maxLen, single, pair.Hi, shard.Better)
		}
	}
}

// eval-arena reads prompts from token-shard directories as from raw files (same prompts, same
// ids), and refuses a shard directory packed with another tokenizer.
func TestArenaPromptsFromShards(t *testing.T) {
	tok, err := tokenizer.Load(filepath.Join(assets, "models/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(assets, "eval/safe-rlhf-gpt4-problems.json")
	dir := filepath.Join(t.TempDir(), "prompts")
	if _, err := shards.Pack(context.Background(), shards.PackOptions{Kind: datasets.KindPrompts, Inputs: []string{"prompts:" + raw},
		Tokenizer: tok, Out: dir}); err != nil {
		t.Fatal(err)
	}
	_, want, err := loadArenaPrompts([]string{raw}, tok, 42, 10)
	if err != nil {
		t.Fatal(err)
	}
	texts, got, err := loadArenaPrompts([]string{dir}, tok, 42, 10)
	if err != nil || len(got) != 10 || len(texts) != 10 {
		t.Fatalf("%d prompts, err %v", len(got), err)
	}
	for i := range want {
		if len(got[i]) != len(want[i]) || got[i][len(got[i])-1] != want[i][len(want[i])-1] || got[i][0] != want[i][0] {
			t.Errorf("prompt %d: shard ids %v, raw ids %v", i, got[i], want[i])
		}
	}
	other, err := tokenizer.Load(filepath.Join(assets, "models/tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadArenaPrompts([]string{dir}, other, 42, 10); err == nil || !strings.Contains(err.Error(), "packed with tokenizer") {
		t.Errorf("other tokenizer: %v", err)
	}
}

// TestArenaDefaultPrompts: eval-arena's (and make compare's) default prompts are the held-out part
// of the bundled PKU-SafeRLHF rows: 100 distinct prompts, none of them in the part the demo's cost
// model and judge train on.
func TestArenaDefaultPrompts(t *testing.T) {
	tok, err := tokenizer.Load(filepath.Join(assets, "models/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	sp, err := datasets.ParseSpec(strings.Replace(DefaultArenaOptions().Prompts[0], "assets/data", assets, 1))
	if err != nil || sp.Part != datasets.PartHeldOut {
		t.Fatalf("default prompts %q: %+v, %v; want the held-out part", DefaultArenaOptions().Prompts[0], sp, err)
	}
	texts, ids, err := loadArenaPrompts([]string{sp.String()}, tok, 42, 0)
	if err != nil {
		t.Fatal(err)
	}
	sp.Part = datasets.PartRest
	_, train, err := loadArenaPrompts([]string{sp.String()}, tok, 42, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, p := range train {
		seen[fmt.Sprint(p)] = true
	}
	for i, p := range ids {
		if seen[fmt.Sprint(p)] {
			t.Errorf("held-out prompt %q is also in the training part", texts[i])
		}
	}
	if len(ids) != 100 || len(train) < 350 {
		t.Fatalf("%d held-out prompts, %d training prompts; want 100 and the rest of 490", len(ids), len(train))
	}
}
