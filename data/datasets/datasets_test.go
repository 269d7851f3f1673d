package datasets

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/saferlhf/saferlhf/data/tokenizer"
)

func asset(t testing.TB, rel string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "assets", rel)
}

func TestReadAssets(t *testing.T) {
	cases := []struct {
		path, format, wantFormat string
		n                        int
		check                    func(t *testing.T, s []RawSample, st ReadStats)
	}{
		{"data/hh-rlhf/harmless-base-test.jsonl.gz", FormatAuto, FormatHHHarmless, 2312 - 5, func(t *testing.T, s []RawSample, st ReadStats) {
			// 5 rows hold a further "\n\nAssistant:" inside one response only.
			if st.PrefixMismatch != 5 || st.Records != 2312 {
				t.Errorf("stats %+v, want 2312 records, 5 prefix mismatches", st)
			}
		}},
		{"data/helpful/hh-rlhf-helpful-base-test.jsonl.gz", FormatHHHelpful, "", 2354 - 9, func(t *testing.T, s []RawSample, st ReadStats) {
			if st.PrefixMismatch != 9 {
				t.Errorf("prefix mismatches %d, want 9 (PROVENANCE.md)", st.PrefixMismatch)
			}
		}},
		{"data/pku-saferlhf/align-anything-preference-sample.json", FormatAuto, FormatPKU, 32, func(t *testing.T, s []RawSample, _ ReadStats) {
			var ss, uu, one, diff int
			for _, r := range s {
				switch {
				case r.IsSafe == Safe && r.IsOtherSafe == Safe:
					ss++
				case r.IsSafe == Unsafe && r.IsOtherSafe == Unsafe:
					uu++
				default:
					one++
				}
				if r.Better != r.Safer {
					diff++
				}
			}
			if ss != 11 || uu != 16 || one != 5 || diff != 19 {
				t.Errorf("label mix ss %d uu %d one %d better!=safer %d, want 11 16 5 19", ss, uu, one, diff)
			}
		}},
		{"data/pku-saferlhf/pku-saferlhf-train-head500.jsonl", FormatAuto, FormatPKU, 500, func(t *testing.T, s []RawSample, _ ReadStats) {
			// The current 16-key schema: label mix, categories and severity as PROVENANCE.md counts them.
			var ss, uu, one, diff, safe, unsafe, cyber, sev3 int
			for _, r := range s {
				switch {
				case r.IsSafe == Safe && r.IsOtherSafe == Safe:
					ss++
				case r.IsSafe == Unsafe && r.IsOtherSafe == Unsafe:
					uu++
				default:
					one++
				}
				if r.Better != r.Safer {
					diff++
				}
				if !r.HasSeverity {
					t.Fatalf("%s: no severity", r.Where())
				}
				for _, x := range []struct {
					safety   Safety
					category string
					severity int
				}{{r.IsSafe, r.Category, r.Severity}, {r.IsOtherSafe, r.OtherCategory, r.OtherSeverity}} {
					if x.safety == Safe {
						safe++
					} else {
						unsafe++
					}
					if strings.Contains(x.category, "Cybercrime") {
						cyber++
					}
					if x.severity == 3 {
						sev3++
					}
				}
			}
			if ss != 199 || uu != 253 || one != 48 || diff != 117 || safe != 446 || unsafe != 554 {
				t.Errorf("label mix ss %d uu %d one %d better!=safer %d safe %d unsafe %d, want 199 253 48 117 446 554", ss, uu, one, diff, safe, unsafe)
			}
			if cyber != 172 || sev3 == 0 {
				t.Errorf("Cybercrime responses %d (want 172), severity-3 responses %d (want > 0)", cyber, sev3)
			}
			if s[0].Category != "" || s[0].Severity != 0 {
				t.Errorf("row 1 (two safe responses): category %q severity %d", s[0].Category, s[0].Severity)
			}
		}},
		{"data/hh-rlhf/harmless-base-train-sample500.jsonl", FormatAuto, FormatHHHarmless, 500 - 1, func(t *testing.T, s []RawSample, st ReadStats) {
			if st.PrefixMismatch != 1 || st.Records != 500 {
				t.Errorf("stats %+v, want 500 records, 1 prefix mismatch", st)
			}
		}},
		{"data/beavertails/artkit-beavertails-30k_train-unsafe-sample.csv", FormatAuto, FormatBeaverTails, 140, func(t *testing.T, s []RawSample, _ ReadStats) {
			for _, r := range s {
				if r.IsSafe != Unsafe || r.Category == "" {
					t.Fatalf("%s: safety %v category %q, want unsafe with a category", r.Where(), r.IsSafe, r.Category)
				}
			}
		}},
		{"data/eval/beavertails-evaluation.json", FormatAuto, FormatPrompts, 700, nil},
		{"data/eval/advbench-harmful_behaviors.csv", FormatAuto, FormatPrompts, 520, func(t *testing.T, s []RawSample, _ ReadStats) {
			if !strings.HasPrefix(s[0].Input[0], "Write a script that can exploit") {
				t.Errorf("first goal %q", s[0].Input[0])
			}
		}},
		{"data/eval/safe-rlhf-gpt4-problems.json", FormatPrompts, "", 83, nil},
		{"data/helpful/llamafactory-dpo_en_demo.json", FormatAuto, FormatShareGPT, 300, func(t *testing.T, s []RawSample, _ ReadStats) {
			multi := 0
			for _, r := range s {
				if len(r.Input)%2 != 1 || !r.HasOther {
					t.Fatalf("%s: input turns %d", r.Where(), len(r.Input))
				}
				if len(r.Input) > 1 {
					multi++
				}
			}
			if multi == 0 {
				t.Error("no multi-turn prompts")
			}
		}},
	}
	for _, c := range cases {
		t.Run(filepath.Base(c.path), func(t *testing.T) {
			p := asset(t, c.path)
			if c.wantFormat != "" {
				b, _ := ReadFileBytes(p)
				recs, err := jsonOrCSV(p, b)
				if err != nil {
					t.Fatal(err)
				}
				if f, err := detect(p, recs[0]); err != nil || f != c.wantFormat {
					t.Errorf("detect = %q, %v; want %q", f, err, c.wantFormat)
				}
			}
			s, st, err := Read(p, c.format)
			if err != nil {
				t.Fatal(err)
			}
			if len(s) != c.n {
				t.Errorf("%d samples, want %d (stats %+v)", len(s), c.n, st)
			}
			for _, r := range s {
				if len(r.Input)%2 != 1 || r.Line <= 0 {
					t.Fatalf("%s: %d input turns", r.Where(), len(r.Input))
				}
			}
			if c.check != nil {
				c.check(t, s, st)
			}
		})
	}
}

func jsonOrCSV(name string, b []byte) ([]record, error) {
	if isCSV(name, b) {
		return csvRecords(name, b)
	}
	return jsonRecords(name, b)
}

func TestHHSplit(t *testing.T) {
	chosen := "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant: fine, thanks."
	rejected := "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how are you?\n\nAssistant: go away"
	s, _, err := Parse("x.jsonl", []byte(`{"chosen":`+quote(chosen)+`,"rejected":`+quote(rejected)+`}`), FormatHH)
	if err != nil || len(s) != 1 {
		t.Fatal(err, len(s))
	}
	want := []string{"hi there", "hello!", "how are you?"}
	if !slices.Equal(s[0].Input, want) || s[0].Answer != "fine, thanks." || s[0].OtherAnswer != "go away" {
		t.Errorf("got %q / %q / %q", s[0].Input, s[0].Answer, s[0].OtherAnswer)
	}
	got, _ := FormatPrompt(s[0].Input, "</s>")
	if w := "BEGINNING OF CONVERSATION: USER: hi there ASSISTANT:hello!</s>USER: how are you? ASSISTANT:"; got != w {
		t.Errorf("multi-turn prompt\n got %q\nwant %q", got, w)
	}
}

func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

func TestFormatPrompt(t *testing.T) {
	got, err := FormatPrompt([]string{"How do I bake bread?"}, "</s>")
	if err != nil || got != "BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:" {
		t.Errorf("got %q, %v", got, err)
	}
	if _, err := FormatPrompt([]string{"a", "b"}, "</s>"); !errors.Is(err, ErrEvenInput) {
		t.Errorf("even input: %v", err)
	}
}

// pkuRow is a valid PKU-SafeRLHF row without its closing brace.
const pkuRow = `{"prompt":"p","response_0":"a","response_1":"b","is_response_0_safe":true,"is_response_1_safe":false,"better_response_id":0,"safer_response_id":0`

func TestMalformedInputErrors(t *testing.T) {
	cases := []struct{ name, content, format, want string }{
		{"a.json", "[\n{\"prompt\": \"x\"},\n{\"prompt\": }\n]", FormatPrompts, "a.json:3"},
		{"b.jsonl", "{\"chosen\":\"a\",\"rejected\":\"b\"}\n\n{\"chosen\": 1}\n", FormatHH, "b.jsonl:3"},
		{"c.jsonl", "{\"chosen\":\"a\",\"rejected\":\"b\"}\n{bad\n", FormatHH, "c.jsonl:2"},
		{"d.csv", "prompt,response,category\n\"a\",\"b\",\"c\"\n\"a,\"b\",c\n", FormatBeaverTails, "d.csv:3"},
		{"e.json", "[{\"prompt\":\"p\",\"response_0\":\"a\",\"response_1\":\"b\",\"is_response_0_safe\":true,\"is_response_1_safe\":false,\"better_response_id\":0}]", FormatPKU, `e.json:1: field "safer_response_id": missing`},
		{"f.json", "[\n {\"prompt\":\"p\",\"response_0\":\"a\",\"response_1\":\"b\",\"is_response_0_safe\":\"yes\"}]", FormatPKU, "f.json:2"},
		{"g.json", "[{\"x\": 1}]", FormatAuto, "g.json:1: cannot detect"},
		{"h.jsonl", pkuRow + `,"response_0_severity_level":4,"response_1_severity_level":0}`, FormatPKU, `h.jsonl:1: field "response_0_severity_level": 4, want 0..3`},
		{"i.jsonl", pkuRow + `,"response_0_severity_level":1}`, FormatPKU, `i.jsonl:1: field "response_0_severity_level": present for one response only`},
		{"j.jsonl", pkuRow + `,"response_0_harm_category":{"Violence":"yes"}}`, FormatPKU, `j.jsonl:1: field "response_0_harm_category": got JSON string, want bool`},
	}
	for _, c := range cases {
		_, _, err := Parse(c.name, []byte(c.content), c.format)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to contain %q", c.name, err, c.want)
		}
	}
}

func TestCompressedAndSpec(t *testing.T) {
	sp, err := ParseSpec("pku-saferlhf:8/-1:" + asset(t, "data/pku-saferlhf/align-anything-preference-sample.json"))
	if err != nil || sp.Count != 8 || sp.Format != FormatPKU {
		t.Fatalf("%+v %v", sp, err)
	}
	s, _, err := LoadMix([]string{sp.String(), "hh-rlhf:0.01:" + asset(t, "data/hh-rlhf/harmless-base-test.jsonl.gz")}, 42)
	if err != nil {
		t.Fatal(err)
	}
	if want := 8 + 23; len(s) != want {
		t.Errorf("mix: %d samples, want %d", len(s), want)
	}
	s2, _, _ := LoadMix([]string{sp.String()}, 42)
	if s2[0].Line != s[0].Line {
		t.Error("subsampling not deterministic")
	}
	up := Subsample(make([]RawSample, 10), Spec{Proportion: 2.5, Count: -1}, 1)
	if len(up) != 25 {
		t.Errorf("up-sampling: %d, want 25", len(up))
	}
}

func loadTok(t testing.TB, f string) tokenizer.Tokenizer {
	tok, err := tokenizer.Load(asset(t, "data/models/"+f))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestBuilders(t *testing.T) {
	tok := loadTok(t, "tokenizer.model")
	s := RawSample{Input: []string{"Hi"}, Answer: "Good", OtherAnswer: "Bad", HasOther: true, Better: false, Safer: false, IsSafe: Unsafe, IsOtherSafe: Safe, File: "x", Line: 7}
	prompt := tok.Encode("BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:", true)

	sft, err := Build(tok, KindSFT, &s, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	full := append(tok.Encode("BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:Bad", true), tok.EOS())
	if !slices.Equal(sft.InputIDs, full) || sft.PromptLen != len(prompt) {
		t.Errorf("sft ids %v (prompt %d), want %v (prompt %d)", sft.InputIDs, sft.PromptLen, full, len(prompt))
	}
	for i, l := range sft.Labels {
		if (i < len(prompt)) != (l == IgnoreIndex) || (l != IgnoreIndex && l != full[i]) {
			t.Fatalf("label %d = %d", i, l)
		}
	}
	pref, _ := Build(tok, KindPreference, &s, BuildOptions{})
	if !slices.Equal(pref.Better, full) || pref.Worse[len(pref.Worse)-1] != tok.EOS() {
		t.Errorf("preference better %v", pref.Better)
	}
	// Safer=false swaps to (Bad, safe) vs (Good, unsafe): consistent.
	sp, err := Build(tok, KindSafetyPreference, &s, BuildOptions{Strict: true})
	if err != nil || sp.SaferSign != Safe || sp.UnsaferSign != Unsafe || !slices.Equal(sp.Safer, full) {
		t.Errorf("safety %+v %v", sp, err)
	}
	// Contradictory: the safer one is unsafe, the other safe.
	bad := s
	bad.Safer = true
	if _, err := Build(tok, KindSafetyPreference, &bad, BuildOptions{Strict: true}); !errors.Is(err, ErrContradictory) || !strings.Contains(err.Error(), "x:7") {
		t.Errorf("strict contradictory: %v", err)
	}
	samples := []RawSample{s, bad, {Input: []string{"q"}, Answer: "same", OtherAnswer: "same", HasOther: true, Safer: true}, {Input: []string{"Hi"}}}
	maxLen := len(prompt) + 1
	exs, st, err := BuildAll(context.Background(), tok, KindSafetyPreference, samples, BuildOptions{MaxLength: maxLen})
	if err != nil {
		t.Fatal(err)
	}
	if len(exs) != 1 || st.SkippedContradictory != 1 || st.DroppedIdentical != 1 || st.SkippedUnusable != 1 || st.Truncated != 1 || len(exs[0].Safer) != maxLen {
		t.Errorf("stats %+v, %d examples", st, len(exs))
	}
	_, st, _ = BuildAll(context.Background(), tok, KindSafetyPreference, samples[:1], BuildOptions{MaxLength: maxLen, Overlong: OverlongDrop})
	if st.DroppedOverlong != 1 || st.Examples != 0 {
		t.Errorf("drop: %+v", st)
	}
	exs, st, _ = BuildAll(context.Background(), tok, KindPrompts, samples, BuildOptions{Workers: 3})
	if len(exs) != 2 || st.DuplicatePrompts != 2 || !slices.Equal(exs[0].InputIDs, prompt) {
		t.Errorf("prompts: %+v", st)
	}
}

func TestPromptLeft(t *testing.T) {
	tok := loadTok(t, "tok512.bin")
	long := strings.Repeat("a long story about a dog ", 20)
	s := RawSample{Input: []string{long}, Answer: "Yes.", OtherAnswer: "No.", HasOther: true, Better: true}
	full, _ := Build(tok, KindPreference, &s, BuildOptions{})
	maxLen := 40
	ex, err := Build(tok, KindPreference, &s, BuildOptions{MaxLength: maxLen, Overlong: OverlongPromptLeft})
	if err != nil {
		t.Fatal(err)
	}
	cut := len(full.Better) - maxLen
	for _, q := range [][]int32{ex.Better, ex.Worse} {
		if len(q) > maxLen || q[0] != tok.BOS() || q[len(q)-1] != tok.EOS() {
			t.Fatalf("prompt-left: %v", q)
		}
	}
	if !slices.Equal(ex.Better[1:], full.Better[1+cut:]) || ex.PromptLen != full.PromptLen-cut {
		t.Errorf("prompt-left kept %v (prompt %d), want the tail of %v", ex.Better, ex.PromptLen, full.Better)
	}
	sft, _ := Build(tok, KindSFT, &s, BuildOptions{MaxLength: maxLen, Overlong: OverlongPromptLeft})
	if len(sft.Labels) != len(sft.InputIDs) || tok.Decode(keep(sft.InputIDs, sft.Labels, true)) != "Yes." {
		t.Errorf("sft prompt-left trained %q", tok.Decode(keep(sft.InputIDs, sft.Labels, true)))
	}
	p, _ := Build(tok, KindPrompts, &s, BuildOptions{MaxLength: 10, Overlong: OverlongPromptLeft})
	if len(p.InputIDs) != 10 || !strings.HasSuffix(tok.Decode(p.InputIDs), "TANT:") || p.InputIDs[0] != tok.BOS() {
		t.Errorf("prompt-left prompt %q", tok.Decode(p.InputIDs))
	}
}

func TestDialogueSFT(t *testing.T) {
	tok := loadTok(t, "tok512.bin")
	s := RawSample{Dialogue: []string{"Hi", "Hello", "Tell a story", "Once upon a time"}}
	ex, err := Build(tok, KindSFT, &s, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eos := tok.EOS()
	// Two EOS (after each assistant turn), both trained.
	var trainedEOS int
	for i, id := range ex.InputIDs {
		if id == eos && ex.Labels[i] == eos {
			trainedEOS++
		}
	}
	if trainedEOS != 2 || ex.InputIDs[len(ex.InputIDs)-1] != eos {
		t.Errorf("ids %v labels %v", ex.InputIDs, ex.Labels)
	}
	text := tok.Decode(keep(ex.InputIDs, ex.Labels, false))
	if !strings.Contains(text, "USER: Tell a story ASSISTANT:") || strings.Contains(text, "Hello") {
		t.Errorf("masked text %q", text)
	}
	// A multi-turn prompt with an answer trains the same way.
	pair := RawSample{Input: s.Dialogue[:3], Answer: "Bad", OtherAnswer: s.Dialogue[3], HasOther: true, Better: false}
	ex2, _ := Build(tok, KindSFT, &pair, BuildOptions{})
	if !slices.Equal(ex2.InputIDs, ex.InputIDs) || !slices.Equal(ex2.Labels, ex.Labels) {
		t.Errorf("multi-turn input SFT differs from the dialogue")
	}
}

func keep(ids, labels []int32, trained bool) []int32 {
	var out []int32
	for i, id := range ids {
		if (labels[i] != IgnoreIndex) == trained {
			out = append(out, id)
		}
	}
	return out
}

func TestCompressedJSONL(t *testing.T) {
	// PKU-SafeRLHF as zstd-compressed JSON Lines with an unknown key: same samples as the array.
	want, _, err := Read(asset(t, "data/pku-saferlhf/align-anything-preference-sample.json"), FormatPKU)
	if err != nil {
		t.Fatal(err)
	}
	var lines []byte
	for _, s := range want {
		b, _ := json.Marshal(map[string]any{"prompt": s.Input[0], "response_0": s.Answer, "response_1": s.OtherAnswer,
			"is_response_0_safe": s.IsSafe == Safe, "is_response_1_safe": s.IsOtherSafe == Safe,
			"better_response_id": map[bool]int{true: 0, false: 1}[s.Better], "safer_response_id": map[bool]int{true: 0, false: 1}[s.Safer],
			"prompt_source": "Alpaca-7B"})
		lines = append(append(lines, b...), '\n')
	}
	enc, _ := zstd.NewWriter(nil)
	p := filepath.Join(t.TempDir(), "pku.jsonl.zst")
	os.WriteFile(p, enc.EncodeAll(lines, nil), 0o644)
	got, _, err := Read(p, FormatAuto)
	if err != nil || len(got) != len(want) {
		t.Fatalf("%d samples, %v", len(got), err)
	}
	for i := range got {
		got[i].File, got[i].Line = want[i].File, want[i].Line
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("sample %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestReadErrorsNameFile(t *testing.T) {
	if _, _, err := Read(filepath.Join(t.TempDir(), "missing.json"), FormatAuto); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("err = %v", err)
	}
	p := filepath.Join(t.TempDir(), "bad.json.gz")
	os.WriteFile(p, []byte{0x1f, 0x8b, 0, 1, 2}, 0o644)
	if _, _, err := Read(p, FormatAuto); err == nil || !strings.Contains(err.Error(), "bad.json.gz") {
		t.Errorf("err = %v", err)
	}
}

// fuzzFormat is shared by the reader fuzz targets: no panics, and every kept
// sample has odd input turns.
func fuzzFormat(f *testing.F, format string, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, name := range []string{"x.json", "x.csv"} {
			s, _, err := Parse(name, b, format)
			if err != nil {
				continue
			}
			for _, r := range s {
				if len(r.Dialogue) == 0 && len(r.Input)%2 != 1 {
					t.Fatalf("%d input turns", len(r.Input))
				}
			}
		}
	})
}

func FuzzReadPKU(f *testing.F) {
	fuzzFormat(f, FormatPKU, `[{"prompt":"p","response_0":"a","response_1":"b","is_response_0_safe":true,"is_response_1_safe":false,"better_response_id":0,"safer_response_id":1}]`,
		`{"prompt":"p","response_0":"a","response_1":"b","is_response_0_safe":true,"is_response_1_safe":false,"better_response_id":0,"safer_response_id":1,"x":{}}`)
}

func FuzzReadHH(f *testing.F) {
	fuzzFormat(f, FormatHH, `{"chosen":"\n\nHuman: a\n\nAssistant: b","rejected":"\n\nHuman: a\n\nAssistant: c"}`,
		`{"chosen":"\n\nHuman: a\n\nHuman: x\n\nAssistant: b\n\nHuman: q\n\nAssistant: z","rejected":"\n\nAssistant: c"}`)
}

func FuzzReadBeaverTails(f *testing.F) {
	fuzzFormat(f, FormatBeaverTails, "prompt,response,category\n\"a\",\"b\nc\",animal_abuse\n",
		`[{"prompt":"a","response":"b","category":{"x":true,"y":false},"is_safe":false}]`)
}

func FuzzReadShareGPT(f *testing.F) {
	fuzzFormat(f, FormatShareGPT, `[{"conversations":[{"from":"system","value":"s"},{"from":"human","value":"h"}],"chosen":{"from":"gpt","value":"c"},"rejected":{"from":"gpt","value":"r"}}]`,
		`[{"conversations":[{"from":"human","value":"h"},{"from":"gpt","value":"g"}]}]`)
}

func FuzzReadPrompts(f *testing.F) {
	fuzzFormat(f, FormatPrompts, `["a","b"]`, "goal,target\nx,y\n", `[{"prompt":"p","category":"c"}]`)
}

func FuzzReadAlpaca(f *testing.F) {
	fuzzFormat(f, FormatAlpaca, `[{"instruction":"i","input":"x","output":"o"}]`, `{"prompt":"p","answer":"a"}`)
}

func FuzzReadAuto(f *testing.F) {
	fuzzFormat(f, FormatAuto, `[{"chosen":"\n\nHuman: a\n\nAssistant: b","rejected":"\n\nHuman: a\n\nAssistant: c"}]`, "prompt,response,category\na,b,c\n")
}

// TestEncodeMultiTurn: EncodePrompt and EncodeResponse put the EOS id after each earlier assistant
// turn, exactly as the shard builder does (format_prompt joins assistant turns with EOS).
func TestEncodeMultiTurn(t *testing.T) {
	tok := loadTok(t, "tok512.bin")
	s := RawSample{Input: []string{"hi there", "hello!", "how are you?"}, Answer: "fine", OtherAnswer: "go away",
		HasOther: true, Better: true}
	count := func(ids []int32) (n int) {
		for _, id := range ids {
			if id == tok.EOS() {
				n++
			}
		}
		return n
	}
	p, err := EncodePrompt(tok, s.Input)
	if err != nil {
		t.Fatal(err)
	}
	shard, _ := Build(tok, KindPrompts, &s, BuildOptions{})
	if !slices.Equal(p, shard.InputIDs) || count(p) != 1 || p[0] != tok.BOS() {
		t.Errorf("EncodePrompt %v, shard prompt %v (want one EOS, after the assistant turn)", p, shard.InputIDs)
	}
	r, pl, err := EncodeResponse(tok, s.Input, s.Answer)
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := Build(tok, KindPreference, &s, BuildOptions{})
	if !slices.Equal(r, pair.Better) || count(r) != 2 || r[len(r)-1] != tok.EOS() || pl != len(p) {
		t.Errorf("EncodeResponse %v (prompt %d), shard %v (prompt %d)", r, pl, pair.Better, len(p))
	}
	if _, err := EncodePrompt(tok, []string{"a", "b"}); err == nil {
		t.Error("EncodePrompt accepted an even number of turns")
	}
}

// Detection needs a format's whole key signature, not one key: a pairwise file with a
// "question" key is not a prompt file.
func TestDetectBySignature(t *testing.T) {
	for _, c := range []struct{ rec, want, wantErr string }{
		{`{"question": "q", "response_0": "a", "response_1": "b", "better_response_id": 0}`, "", "looks like an answer"},
		{`{"question": "q", "chosen": "a", "rejected": "b"}`, FormatHHHelpful, ""},
		{`{"question": "q"}`, FormatPrompts, ""},
		{`{"prompt": "q", "answer": "a"}`, FormatAlpaca, ""},
		{`{"prompt": "q", "response": "a", "is_safe": true}`, FormatBeaverTails, ""},
		{`{"prompt": "q", "response_0": "a", "response_1": "b"}`, FormatPKU, ""},
		{`{"conversations": [], "chosen": {}, "rejected": {}}`, FormatShareGPT, ""},
		{`{"goal": "g", "target": "t"}`, FormatPrompts, ""},
		{`{"prompt": "q", "completion": "c"}`, "", "looks like an answer"},
	} {
		recs, err := jsonRecords("x.jsonl", []byte(c.rec))
		if err != nil {
			t.Fatal(err)
		}
		f, err := detect("x.jsonl", recs[0])
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: format %q, err %v; want error %q", c.rec, f, err, c.wantErr)
			}
		} else if err != nil || f != c.want {
			t.Errorf("%s: format %q, err %v; want %q", c.rec, f, err, c.want)
		}
	}
}

// A file with no records, or none usable, is an error, not an empty dataset.
func TestEmptyDatasetIsAnError(t *testing.T) {
	for _, c := range []struct{ name, content, format, want string }{
		{"a.json", "[]", FormatAuto, "empty dataset"},
		{"b.jsonl", "\n\n", FormatHH, "empty dataset"},
		{"c.jsonl", `{"chosen": "Human: a", "rejected": "Human: b"}`, FormatHH, "no usable examples"},
	} {
		if _, _, err := Parse(c.name, []byte(c.content), c.format); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}

// TestHeldOutPart: pku-saferlhf/heldout and pku-saferlhf/rest split a file by prompt, one prompt in
// five held out (100 of the 500 bundled PKU-SafeRLHF rows, as counted with an independent FNV-1a
// in Python); the parts partition the file, share no prompt, and survive String; the reference's
// /train suffix still reads the whole file.
func TestHeldOutPart(t *testing.T) {
	path := asset(t, "data/pku-saferlhf/pku-saferlhf-train-head500.jsonl")
	load := func(spec string) []RawSample {
		t.Helper()
		sp, err := ParseSpec(spec)
		if err != nil {
			t.Fatal(err)
		}
		s, _, err := LoadMix([]string{sp.String()}, 42)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	held, rest, all := load("pku-saferlhf/heldout:"+path), load("pku-saferlhf/rest:"+path), load("PKU-SafeRLHF/train:"+path)
	if len(held) != 100 || len(rest) != 400 || len(all) != 500 {
		t.Fatalf("held-out %d, rest %d, whole %d rows; want 100, 400, 500", len(held), len(rest), len(all))
	}
	prompts := map[string]bool{}
	for _, s := range held {
		prompts[strings.Join(s.Input, "\x00")] = true
		if !InHeldOutPart(s) {
			t.Fatalf("line %d is in the held-out part but not InHeldOutPart", s.Line)
		}
	}
	for _, s := range rest {
		if prompts[strings.Join(s.Input, "\x00")] {
			t.Fatalf("line %d: prompt %q is in both parts", s.Line, s.Input)
		}
	}
	if sp, _ := ParseSpec("pku-saferlhf/heldout:0.5:" + path); sp.Part != PartHeldOut || sp.Proportion != 0.5 || len(load(sp.String())) != 50 {
		t.Errorf("held-out part at proportion 0.5: %+v", sp)
	}
}

// A bad format or proportion is named as such; proportions are capped.
func TestSpecErrors(t *testing.T) {
	path := asset(t, "data/pku-saferlhf/align-anything-preference-sample.json")
	for _, c := range []struct{ spec, want string }{
		{"pku-saferlhff:" + path, `unknown format "pku-saferlhff"`},
		{"pku-saferlhf:abc:" + path, `proportion "abc"`},
		{"pku-saferlhf:-1:" + path, `proportion "-1"`},
		{"pku-saferlhf:1e9:" + path, "at most 100"},
		{"pku-saferlhf:NaN:" + path, `proportion "NaN"`},
		{path + ":pku-saferlhf", "the format goes first"}, // ppo-lag's old path:format
		{"pku-saferlhf/heldot:" + path, `unknown split "heldot" of format pku-saferlhf (valid: train, test, heldout, rest)`},
		{"PKU-SafeRLHF/validation:0.5:" + path, `unknown split "validation"`},
		{"alpaca/x/train:" + path, `unknown format "alpaca/x/train"`},
	} {
		if _, err := ParseSpec(c.spec); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.spec, err, c.want)
		}
	}
	for _, ok := range []string{path, "pku-saferlhf:" + path, "pku-saferlhf:0.5:" + path, "pku-saferlhf:10/-1:" + path,
		"PKU-SafeRLHF/train:" + path, "PKU-SafeRLHF-30K/test:" + path, "pku-saferlhf/rest:" + path, "PKU-Alignment/PKU-SafeRLHF:" + path,
		"PKU-Alignment/PKU-SafeRLHF/train:" + path,
		// every PKU-SafeRLHF name the reference registers (spec §7), by its HF path too
		"PKU-SafeRLHF-10K/train:" + path, "PKU-Alignment/PKU-SafeRLHF-10K/train:" + path, "PKU-Alignment/PKU-SafeRLHF-30K/test:" + path} {
		if _, err := ParseSpec(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

// A part is selected by a dataset spec only: Read with a format carrying one is refused, not read whole.
func TestReadRefusesPartFormat(t *testing.T) {
	path := asset(t, "data/pku-saferlhf/align-anything-preference-sample.json")
	if _, _, err := Read(path, "pku-saferlhf/heldout"); err == nil || !strings.Contains(err.Error(), "only a dataset spec") {
		t.Fatalf("err = %v", err)
	}
	if _, _, err := Read(path, "PKU-SafeRLHF/train"); err != nil {
		t.Fatal(err)
	}
}

func TestTruncatePrompt(t *testing.T) {
	ids := []int32{1, 10, 11, 12, 13}
	for _, c := range []struct {
		max  int
		want []int32
	}{{5, ids}, {9, ids}, {3, []int32{1, 12, 13}}, {1, []int32{1}}} {
		if got := TruncatePrompt(ids, c.max); !slices.Equal(got, c.want) {
			t.Errorf("max %d: %v, want %v", c.max, got, c.want)
		}
	}
}
