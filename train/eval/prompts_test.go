package eval

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// TestMultiTurnEOS: arena prompts and eval-cm's single responses read from raw files put the EOS
// after earlier assistant turns, exactly as the shard builder does.
func TestMultiTurnEOS(t *testing.T) {
	tok, err := tokenizer.Load(filepath.Join(assets, "models/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	s := datasets.RawSample{Input: []string{"hi there", "hello!", "how are you?"}, Answer: "fine", OtherAnswer: "no",
		HasOther: true, Better: true}
	_, ids, err := arenaPrompts(tok, []datasets.RawSample{s}, 0)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := datasets.Build(tok, datasets.KindPrompts, &s, datasets.BuildOptions{})
	if len(ids) != 1 || !slices.Equal(ids[0], want.InputIDs) || !slices.Contains(ids[0], tok.EOS()) {
		t.Errorf("arena prompt %v, shard prompt %v", ids, want.InputIDs)
	}
	seq, err := singleSeq(s, tok, 512, "right")
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := datasets.Build(tok, datasets.KindPreference, &s, datasets.BuildOptions{})
	if !slices.Equal(seq, pair.Better) {
		t.Errorf("eval-cm single %v, shard %v", seq, pair.Better)
	}
}
