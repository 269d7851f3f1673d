package stages

import (
	"github.com/saferlhf/saferlhf/data/prefs"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

func tok512(t *testing.T) tokenizer.Tokenizer {
	tok, err := tokenizer.Load(filepath.Join(assets, "models/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// trained returns the label tokens of ex (checking each equals its input id).
func trained(ex sftExample) []int32 {
	var out []int32
	for i, l := range ex.Labels {
		if l != datasets.IgnoreIndex {
			if l != ex.IDs[i] {
				panic("label differs from its input id")
			}
			out = append(out, l)
		}
	}
	return out
}

func TestBuildSFTMasking(t *testing.T) {
	tok := tok512(t)
	eos := tok.EOS()
	single := datasets.RawSample{Input: []string{"Where do cats sleep?"}, Answer: "On the bed."}
	ex, ok := buildSFT(single, tok, 512, "right")
	if !ok {
		t.Fatal("single-turn sample dropped")
	}
	prompt := tok.Encode("BEGINNING OF CONVERSATION: USER: Where do cats sleep? ASSISTANT:", true)
	if !slices.Equal(ex.IDs[:len(prompt)], prompt) {
		t.Fatalf("prompt ids %v, want the template %v", ex.IDs[:len(prompt)], prompt)
	}
	for i := range prompt {
		if ex.Labels[i] != datasets.IgnoreIndex {
			t.Fatalf("prompt position %d is trained", i)
		}
	}
	got := trained(ex)
	if got[len(got)-1] != eos || tok.Decode(got[:len(got)-1]) != tok.Decode(ex.IDs[len(prompt):len(ex.IDs)-1]) {
		t.Fatalf("trained tokens %q + EOS expected, got %v", tok.Decode(got), got)
	}

	multi := datasets.RawSample{Input: []string{"Hi", "Hello! How can I help?", "Tell me a story"}, Answer: "Once upon a time."}
	ex, ok = buildSFT(multi, tok, 512, "right")
	if !ok {
		t.Fatal("multi-turn sample dropped")
	}
	// Two assistant turns are trained, each followed by EOS; user turns are not.
	text := tok.Decode(trained(ex))
	for _, want := range []string{"Hello! How can I help?", "Once upon a time."} {
		if !strings.Contains(text, want) {
			t.Fatalf("trained text %q lacks the assistant turn %q", text, want)
		}
	}
	for _, not := range []string{"Tell me", "USER"} {
		if strings.Contains(text, not) {
			t.Fatalf("trained text %q contains user/template text %q", text, not)
		}
	}
	if n := countID(trained(ex), eos); n != 2 {
		t.Fatalf("%d EOS trained, want one per assistant turn (2)", n)
	}
	// prompt-left truncation keeps the last answer and BOS.
	ex, ok = buildSFT(multi, tok, 24, "prompt-left")
	if !ok || len(ex.IDs) != 24 || ex.IDs[0] != tok.BOS() || trained(ex)[len(trained(ex))-1] != eos {
		t.Fatalf("prompt-left truncation: ok %v ids %v", ok, ex.IDs)
	}
}

func countID(ids []int32, id int32) (n int) {
	for _, x := range ids {
		if x == id {
			n++
		}
	}
	return n
}

func TestBuildPairOrderAndSigns(t *testing.T) {
	tok := tok512(t)
	s := datasets.RawSample{Input: []string{"How do I pick a lock?"}, Answer: "I can't help with that.", OtherAnswer: "Use a tension wrench.",
		HasOther: true, Better: false, Safer: true, IsSafe: datasets.Safe, IsOtherSafe: datasets.Unsafe}
	a := append(tok.Encode("BEGINNING OF CONVERSATION: USER: How do I pick a lock? ASSISTANT:I can't help with that.", true), tok.EOS())
	b := append(tok.Encode("BEGINNING OF CONVERSATION: USER: How do I pick a lock? ASSISTANT:Use a tension wrench.", true), tok.EOS())
	rm, ok, err := prefs.Build(s, tok, 512, "right", false)
	if err != nil || !ok || !slices.Equal(rm.Hi, b) || !slices.Equal(rm.Lo, a) {
		t.Fatalf("reward pair: better (the other answer) must come first: %v %v %v", ok, err, rm)
	}
	cm, ok, err := prefs.Build(s, tok, 512, "right", true)
	// Cost model: hi = the unsafer answer (the other), with cost sign +1; lo = safer, cost sign −1.
	if err != nil || !ok || !slices.Equal(cm.Hi, b) || cm.HiSign != 1 || cm.LoSign != -1 {
		t.Fatalf("cost pair %v %v %+v", ok, err, cm)
	}
	// A "safer" answer labelled unsafe while the other is safe is rejected (SafetyPreferenceDataset).
	bad := s
	bad.IsSafe, bad.IsOtherSafe = datasets.Unsafe, datasets.Safe
	if _, ok, err := prefs.Build(bad, tok, 512, "right", true); err != nil || ok {
		t.Fatalf("inconsistent safety labels accepted: %v %v", ok, err)
	}
	// Pairs identical after truncation are dropped; not-a-pair is an error.
	if _, ok, _ := prefs.Build(s, tok, 8, "right", false); ok {
		t.Fatal("pair identical after truncation to 8 tokens accepted")
	}
	if _, _, err := prefs.Build(datasets.RawSample{Input: []string{"q"}, Answer: "a"}, tok, 64, "right", false); err == nil {
		t.Fatal("a single answer accepted as a pair")
	}
}

// TestBuildPairMultiTurnEOS: a multi-turn pair read from a raw file has the EOS after the earlier
// assistant turn, identical to the shard builder's sequences.
func TestBuildPairMultiTurnEOS(t *testing.T) {
	tok := tok512(t)
	s := datasets.RawSample{Input: []string{"hi there", "hello!", "how are you?"}, Answer: "fine", OtherAnswer: "go away",
		HasOther: true, Better: true}
	got, ok, err := prefs.Build(s, tok, 512, "right", false)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	want, _ := datasets.Build(tok, datasets.KindPreference, &s, datasets.BuildOptions{})
	if !slices.Equal(got.Hi, want.Better) || !slices.Equal(got.Lo, want.Worse) {
		t.Errorf("BuildPair %v / %v, shard %v / %v", got.Hi, got.Lo, want.Better, want.Worse)
	}
}
