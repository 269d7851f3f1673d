package ppo

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// TestLoadPromptsMultiTurnEOS: ppo-lag's prompts and PTX examples read from a raw hh-rlhf file
// put the EOS after the earlier assistant turn, exactly as the shard builder does.
func TestLoadPromptsMultiTurnEOS(t *testing.T) {
	tok, err := tokenizer.Load("../../assets/data/models/tok512.bin")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "hh.jsonl")
	line := `{"chosen":"\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant: fine","rejected":"\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant: no"}` + "\n"
	if err := os.WriteFile(path, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	s := datasets.RawSample{Input: []string{"hi there", "hello!", "how are you?"}, Answer: "fine", OtherAnswer: "no",
		HasOther: true, Better: true}
	want, _ := datasets.Build(tok, datasets.KindPrompts, &s, datasets.BuildOptions{})
	train, _, _, err := loadPrompts(tok, []string{"hh-rlhf:" + path}, nil, 0, 512)
	if err != nil {
		t.Fatal(err)
	}
	if len(train) != 1 || !slices.Equal(train[0], want.InputIDs) {
		t.Errorf("loadPrompts %v, shard prompt %v", train, want.InputIDs)
	}
	ptx, err := loadPTX(tok, []string{path}, 512, 1)
	if err != nil {
		t.Fatal(err)
	}
	b := ptx.Next(1)
	pair, _ := datasets.Build(tok, datasets.KindPreference, &s, datasets.BuildOptions{})
	if !slices.Equal(b.IDs, pair.Better) {
		t.Errorf("loadPTX %v, shard %v", b.IDs, pair.Better)
	}
}

// TestPTXDefaults: the PTX defaults are the reference script's (ptx_coeff 16, max_length 512).
func TestPTXDefaults(t *testing.T) {
	for _, alg := range []Algorithm{PPOLag, PPOLagPID, Fixed, PPO} {
		c := DefaultRunConfig(alg)
		if c.PTXCoeff != 16 || c.PTXMaxLength != 512 {
			t.Errorf("%s: ptx-coeff %g, ptx-max-length %d; want 16 and 512", alg, c.PTXCoeff, c.PTXMaxLength)
		}
	}
}
