package datasets

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Format names accepted by Read and Load.
const (
	FormatAuto        = "auto"
	FormatPKU         = "pku-saferlhf"
	FormatHH          = "hh-rlhf"
	FormatHHHelpful   = "hh-rlhf-helpful"
	FormatHHHarmless  = "hh-rlhf-harmless"
	FormatBeaverTails = "beavertails"
	FormatShareGPT    = "sharegpt"
	FormatPrompts     = "prompts"
	FormatAlpaca      = "alpaca"
)

// Formats lists the format names (FormatAuto excluded).
var Formats = []string{FormatPKU, FormatHH, FormatHHHelpful, FormatHHHarmless, FormatBeaverTails, FormatShareGPT, FormatPrompts, FormatAlpaca}

// formatAliases maps other accepted spellings (including the reference's
// registered names) to format names.
var formatAliases = map[string]string{
	"pku":                            FormatPKU,
	"PKU-SafeRLHF":                   FormatPKU,
	"safe-rlhf":                      FormatPKU,
	"hh":                             FormatHH,
	"hh-rlhf-helpful-preference":     FormatHHHelpful,
	"hh-rlhf-harmless-preference":    FormatHHHarmless,
	"hh-rlhf-helpful-dialogue":       FormatHHHelpful,
	"hh-rlhf-harmless-dialogue":      FormatHHHarmless,
	"beaver-tails":                   FormatBeaverTails,
	"llamafactory":                   FormatShareGPT,
	"llama-factory":                  FormatShareGPT,
	"prompt":                         FormatPrompts,
	"eval":                           FormatPrompts,
	"sft":                            FormatAlpaca,
	"instruction":                    FormatAlpaca,
	"stanford-alpaca":                FormatAlpaca,
	"llamafactory-sharegpt":          FormatShareGPT,
	"hh-rlhf-preference":             FormatHH,
	"PKU-SafeRLHF-30K":               FormatPKU,
	"PKU-SafeRLHF-10K":               FormatPKU,
	"PKU-Alignment/PKU-SafeRLHF":     FormatPKU,
	"PKU-Alignment/PKU-SafeRLHF-30K": FormatPKU,
	"PKU-Alignment/PKU-SafeRLHF-10K": FormatPKU,
}

// CanonicalFormat returns the format name of f (or its alias, with or without a valid split
// suffix: SplitFormat), and whether it is known.
func CanonicalFormat(f string) (string, bool) {
	c, _, err := SplitFormat(f)
	return c, err == nil
}

// Splits lists the suffixes a format name may carry: the reference's split names, which name
// the format only (a local file is whichever split it holds), and the parts a Spec selects.
var Splits = []string{"train", "test", PartHeldOut, PartRest}

// SplitFormat splits a format name with an optional split suffix ("PKU-SafeRLHF/train",
// "pku-saferlhf/heldout") into its format and the part of the file it selects ("" for the whole
// file: the reference's split names). An unknown format or suffix is an error listing the valid ones.
func SplitFormat(name string) (format, part string, err error) {
	if f, ok := plainFormat(name); ok {
		return f, "", nil
	}
	if i := strings.LastIndexByte(name, '/'); i > 0 {
		if f, ok := plainFormat(name[:i]); ok {
			switch s := name[i+1:]; s {
			case PartHeldOut, PartRest:
				return f, s, nil
			case "train", "test":
				return f, "", nil
			default:
				return "", "", fmt.Errorf("unknown split %q of format %s (valid: %s)", s, f, strings.Join(Splits, ", "))
			}
		}
	}
	return "", "", fmt.Errorf("unknown format %q (known: %s)", name, strings.Join(Formats, ", "))
}

// plainFormat is CanonicalFormat without a split suffix.
func plainFormat(f string) (string, bool) {
	if f == FormatAuto || slices.Contains(Formats, f) {
		return f, true
	}
	c, ok := formatAliases[f]
	return c, ok
}

// ReadStats counts what a reader skipped.
type ReadStats struct {
	// Format is the format the file was read as (the detected one for auto).
	Format string `json:"format,omitempty"`
	// Records is the number of records in the file.
	Records int `json:"records"`
	// PrefixMismatch counts hh-rlhf pairs whose dialogues differ before the last
	// "\n\nAssistant:" (no shared prompt): dropped.
	PrefixMismatch int `json:"prefix_mismatch,omitempty"`
	// Unparsable counts dialogues whose turns could not be split into user/assistant
	// turns ending at a user turn: dropped.
	Unparsable int `json:"unparsable,omitempty"`
}

// Add accumulates o into s.
func (s *ReadStats) Add(o ReadStats) {
	s.Records += o.Records
	s.PrefixMismatch += o.PrefixMismatch
	s.Unparsable += o.Unparsable
}

// Read reads every sample of one file in the given format (FormatAuto detects it).
// Malformed JSON/CSV and missing or mistyped fields are errors naming file and line.
func Read(path, format string) ([]RawSample, ReadStats, error) {
	b, err := ReadFileBytes(path)
	if err != nil {
		return nil, ReadStats{}, err
	}
	return Parse(path, b, format)
}

// Parse is Read on the (decompressed) content b of a file called name.
func Parse(name string, b []byte, format string) ([]RawSample, ReadStats, error) {
	var st ReadStats
	f, part, err := SplitFormat(format)
	if err != nil {
		return nil, st, fmt.Errorf("%s: %w", name, err)
	}
	if part != "" {
		return nil, st, fmt.Errorf("%s: format %q selects a part of the file, which only a dataset spec does (%s:%s)", name, format, format, name)
	}
	var recs []record
	if isCSV(name, b) {
		recs, err = csvRecords(name, b)
	} else {
		recs, err = jsonRecords(name, b)
	}
	if err != nil {
		return nil, st, err
	}
	st.Records = len(recs)
	if len(recs) == 0 {
		return nil, st, fmt.Errorf("%s: empty dataset (no records)", name)
	}
	if f == FormatAuto {
		if f, err = detect(name, recs[0]); err != nil {
			return nil, st, err
		}
	}
	st.Format = f
	out := make([]RawSample, 0, len(recs))
	for _, rec := range recs {
		s, keep, err := parseRecord(name, f, rec, &st)
		if err != nil {
			return nil, st, err
		}
		if keep {
			s.File, s.Line = name, rec.line
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, st, fmt.Errorf("%s: no usable examples in %d records read as %s", name, st.Records, f)
	}
	return out, st, nil
}

// detect picks a format from the keys of the first record.
func detect(name string, rec record) (string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(rec.raw, &obj); err != nil {
		var s string
		if json.Unmarshal(rec.raw, &s) == nil {
			return FormatPrompts, nil
		}
		return "", fmt.Errorf("%s:%d: cannot detect the format: record is not an object", name, rec.line)
	}
	has := func(k string) bool { _, ok := obj[k]; return ok }
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// The format whose longest complete key signature the record holds; a tie between
	// two formats is ambiguous.
	best, bestLen, tie := "", 0, ""
	for _, sig := range signatures {
		for _, set := range sig.keys {
			all := true
			for _, k := range set {
				all = all && has(k)
			}
			switch {
			case !all || len(set) < bestLen:
			case len(set) > bestLen:
				best, bestLen, tie = sig.format, len(set), ""
			case sig.format != best:
				tie = sig.format
			}
		}
	}
	if tie != "" {
		return "", fmt.Errorf("%s:%d: keys %v fit both %s and %s; pass the format (%s:PATH)", name, rec.line, keys, best, tie, best)
	}
	if best == FormatPrompts {
		// A prompt key alone does not make a prompt file: a record that also carries
		// answers or preferences is a pairwise or SFT file of an unknown layout.
		for _, k := range keys {
			if answerKey(k) {
				return "", fmt.Errorf("%s:%d: cannot detect the format from keys %v: %q looks like an answer, but no format's keys match; pass one of %s",
					name, rec.line, keys, k, strings.Join(Formats, ", "))
			}
		}
	}
	if best == FormatHH && strings.Contains(strings.ToLower(filepath.Base(name)), "harmless") {
		return FormatHHHarmless, nil
	}
	if best == FormatHH {
		return FormatHHHelpful, nil
	}
	if best != "" {
		return best, nil
	}
	return "", fmt.Errorf("%s:%d: cannot detect the format from keys %v; pass one of %s", name, rec.line, keys, strings.Join(Formats, ", "))
}

// signatures are the key sets that identify each format: a record is read in the
// format with the longest set whose keys it all holds.
var signatures = []struct {
	format string
	keys   [][]string
}{
	{FormatPKU, [][]string{{"prompt", "response_0", "response_1"}}},
	{FormatShareGPT, [][]string{{"conversations"}, {"messages"}, {"conversations", "chosen", "rejected"}, {"messages", "chosen", "rejected"}}},
	{FormatHH, [][]string{{"chosen", "rejected"}}},
	{FormatBeaverTails, [][]string{{"prompt", "response", "is_safe"}, {"prompt", "response", "category"}}},
	{FormatAlpaca, [][]string{{"instruction"}, {"instruction", "output"}, {"prompt", "answer"}, {"prompt", "output"}, {"prompt", "response"}}},
	{FormatPrompts, [][]string{{"prompt"}, {"goal"}, {"question"}}},
}

// answerKey reports whether a key names an answer or a preference.
func answerKey(k string) bool {
	k = strings.ToLower(k)
	for _, p := range []string{"response", "answer", "output", "chosen", "rejected", "completion", "better", "worse", "safer", "unsafer"} {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

func parseRecord(name, f string, rec record, st *ReadStats) (RawSample, bool, error) {
	switch f {
	case FormatPKU:
		return parsePKU(name, rec)
	case FormatHH, FormatHHHelpful, FormatHHHarmless:
		return parseHH(name, rec, st)
	case FormatBeaverTails:
		return parseBeaverTails(name, rec)
	case FormatShareGPT:
		return parseShareGPT(name, rec, st)
	case FormatPrompts:
		return parsePrompt(name, rec)
	case FormatAlpaca:
		return parseAlpaca(name, rec)
	}
	return RawSample{}, false, fmt.Errorf("%s: format %q has no reader", name, f)
}

func required[T any](name string, line int, field string, v *T) (T, error) {
	if v == nil {
		var zero T
		return zero, fieldError(name, line, field, "missing")
	}
	return *v, nil
}

// parsePKU maps a PKU-SafeRLHF row as safe_rlhf/datasets/raw/safe_rlhf.py (spec §7).
func parsePKU(name string, rec record) (RawSample, bool, error) {
	var r struct {
		Prompt   *string `json:"prompt"`
		R0       *string `json:"response_0"`
		R1       *string `json:"response_1"`
		Safe0    *bool   `json:"is_response_0_safe"`
		Safe1    *bool   `json:"is_response_1_safe"`
		BetterID *int    `json:"better_response_id"`
		SaferID  *int    `json:"safer_response_id"`
		// The current (2024) schema adds per-response harm categories and severity levels.
		Category0 map[string]bool `json:"response_0_harm_category"`
		Category1 map[string]bool `json:"response_1_harm_category"`
		Severity0 *int            `json:"response_0_severity_level"`
		Severity1 *int            `json:"response_1_severity_level"`
	}
	if err := unmarshalRecord(name, rec, &r); err != nil {
		return RawSample{}, false, err
	}
	var s RawSample
	var err error
	var p, a, o string
	var s0, s1 bool
	var bid, sid int
	l := rec.line
	if p, err = required(name, l, "prompt", r.Prompt); err != nil {
		return s, false, err
	}
	if a, err = required(name, l, "response_0", r.R0); err != nil {
		return s, false, err
	}
	if o, err = required(name, l, "response_1", r.R1); err != nil {
		return s, false, err
	}
	if s0, err = required(name, l, "is_response_0_safe", r.Safe0); err != nil {
		return s, false, err
	}
	if s1, err = required(name, l, "is_response_1_safe", r.Safe1); err != nil {
		return s, false, err
	}
	if bid, err = required(name, l, "better_response_id", r.BetterID); err != nil {
		return s, false, err
	}
	if sid, err = required(name, l, "safer_response_id", r.SaferID); err != nil {
		return s, false, err
	}
	if bid != 0 && bid != 1 {
		return s, false, fieldError(name, l, "better_response_id", fmt.Sprintf("%d, want 0 or 1", bid))
	}
	if sid != 0 && sid != 1 {
		return s, false, fieldError(name, l, "safer_response_id", fmt.Sprintf("%d, want 0 or 1", sid))
	}
	out := RawSample{
		Input: []string{p}, Answer: a, OtherAnswer: o, HasOther: true,
		Better: bid == 0, Safer: sid == 0,
		IsSafe: safetyOf(s0), IsOtherSafe: safetyOf(s1),
		Category: harmNames(r.Category0), OtherCategory: harmNames(r.Category1),
	}
	if (r.Severity0 == nil) != (r.Severity1 == nil) {
		return s, false, fieldError(name, l, "response_0_severity_level", "present for one response only")
	}
	if r.Severity0 != nil {
		for i, v := range []int{*r.Severity0, *r.Severity1} {
			if v < 0 || v > 3 {
				return s, false, fieldError(name, l, fmt.Sprintf("response_%d_severity_level", i), fmt.Sprintf("%d, want 0..3", v))
			}
		}
		out.Severity, out.OtherSeverity, out.HasSeverity = *r.Severity0, *r.Severity1, true
	}
	return out, true, nil
}

// harmNames joins the names of the true entries of a harm-category object, sorted, with ";".
func harmNames(m map[string]bool) string {
	var names []string
	for k, v := range m {
		if v {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ";")
}

const (
	hhHuman     = "\n\nHuman:"
	hhAssistant = "\n\nAssistant:"
)

// parseHH splits an Anthropic hh-rlhf pair: prompt = the shared prefix up to the
// last "\n\nAssistant:", answers = the rest. Pairs without a shared prefix or with
// turns that do not alternate to a final user turn are dropped and counted.
// chosen is preferred under the file's criterion (helpful or harmless), so both
// Better and Safer are true; safety labels are unknown.
func parseHH(name string, rec record, st *ReadStats) (RawSample, bool, error) {
	var r struct {
		Chosen   *string `json:"chosen"`
		Rejected *string `json:"rejected"`
	}
	if err := unmarshalRecord(name, rec, &r); err != nil {
		return RawSample{}, false, err
	}
	c, err := required(name, rec.line, "chosen", r.Chosen)
	if err != nil {
		return RawSample{}, false, err
	}
	rj, err := required(name, rec.line, "rejected", r.Rejected)
	if err != nil {
		return RawSample{}, false, err
	}
	ic, ir := strings.LastIndex(c, hhAssistant), strings.LastIndex(rj, hhAssistant)
	if ic < 0 || ir < 0 || c[:ic] != rj[:ir] {
		st.PrefixMismatch++
		return RawSample{}, false, nil
	}
	turns, ok := splitHHTurns(c[:ic])
	if !ok {
		st.Unparsable++
		return RawSample{}, false, nil
	}
	return RawSample{
		Input:       turns,
		Answer:      strings.TrimSpace(c[ic+len(hhAssistant):]),
		OtherAnswer: strings.TrimSpace(rj[ir+len(hhAssistant):]),
		HasOther:    true, Better: true, Safer: true,
	}, true, nil
}

// splitHHTurns splits "\n\nHuman: u\n\nAssistant: a\n\nHuman: v" into [u a v]
// (turns trimmed, consecutive turns of one role joined by a blank line). It fails
// when the turns do not start with and end at a user turn.
func splitHHTurns(s string) ([]string, bool) {
	var turns []string
	lastRole := -1
	for len(s) > 0 {
		hi, ai := strings.Index(s, hhHuman), strings.Index(s, hhAssistant)
		role, idx, mlen := 0, hi, len(hhHuman)
		if hi < 0 || (ai >= 0 && ai < hi) {
			role, idx, mlen = 1, ai, len(hhAssistant)
		}
		if idx != 0 {
			if lastRole < 0 { // text before the first marker
				if idx < 0 {
					idx = len(s)
				}
				if strings.TrimSpace(s[:idx]) != "" {
					return nil, false
				}
				s = s[idx:]
				continue
			}
			return nil, false // unreachable: the previous turn extends to the next marker
		}
		s = s[mlen:]
		next := len(s)
		if h := strings.Index(s, hhHuman); h >= 0 {
			next = h
		}
		if a := strings.Index(s, hhAssistant); a >= 0 && a < next {
			next = a
		}
		text := strings.TrimSpace(s[:next])
		s = s[next:]
		if role == lastRole {
			turns[len(turns)-1] += "\n\n" + text
			continue
		}
		turns = append(turns, text)
		lastRole = role
	}
	if len(turns) == 0 || len(turns)%2 != 1 || lastRole != 0 {
		return nil, false
	}
	return turns, true
}

// parseBeaverTails reads a BeaverTails QA pair: is_safe (bool) when present, else
// unsafe when category names a harm (a non-empty string, or an object with a true
// value), safe when the category object is all false.
func parseBeaverTails(name string, rec record) (RawSample, bool, error) {
	var r struct {
		Prompt   *string         `json:"prompt"`
		Response *string         `json:"response"`
		Category json.RawMessage `json:"category"`
		IsSafe   any             `json:"is_safe"`
	}
	if err := unmarshalRecord(name, rec, &r); err != nil {
		return RawSample{}, false, err
	}
	p, err := required(name, rec.line, "prompt", r.Prompt)
	if err != nil {
		return RawSample{}, false, err
	}
	a, err := required(name, rec.line, "response", r.Response)
	if err != nil {
		return RawSample{}, false, err
	}
	s := RawSample{Input: []string{p}, Answer: a}
	switch v := r.IsSafe.(type) {
	case bool:
		s.IsSafe = safetyOf(v)
	case string: // CSV
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true", "1":
			s.IsSafe = Safe
		case "false", "0":
			s.IsSafe = Unsafe
		case "":
		default:
			return s, false, fieldError(name, rec.line, "is_safe", fmt.Sprintf("%q is not a boolean", v))
		}
	case nil:
	default:
		return s, false, fieldError(name, rec.line, "is_safe", "not a boolean")
	}
	if len(r.Category) > 0 && string(r.Category) != "null" {
		var cs string
		var cm map[string]bool
		switch {
		case json.Unmarshal(r.Category, &cs) == nil:
			s.Category = cs
			if s.IsSafe == SafetyUnknown && strings.TrimSpace(cs) != "" {
				s.IsSafe = Unsafe
			}
		case json.Unmarshal(r.Category, &cm) == nil:
			s.Category = harmNames(cm)
			if s.IsSafe == SafetyUnknown {
				s.IsSafe = Unsafe
				if s.Category == "" {
					s.IsSafe = Safe
				}
			}
		default:
			return s, false, fieldError(name, rec.line, "category", "want a string or an object of booleans")
		}
	}
	return s, true, nil
}

type sgMessage struct {
	From    string `json:"from"`
	Value   string `json:"value"`
	Role    string `json:"role"`
	Content string `json:"content"`
}

func (m sgMessage) role() string {
	r := m.From
	if r == "" {
		r = m.Role
	}
	switch r {
	case "human", "user":
		return "user"
	case "gpt", "assistant", "model":
		return "assistant"
	}
	return r
}

func (m sgMessage) text() string {
	if m.Value != "" {
		return m.Value
	}
	return m.Content
}

// parseShareGPT reads LLaMA-Factory ShareGPT rows. With chosen/rejected (ranking:
// true) it is a preference pair on the prompt turns; without, a conversation
// ending with an assistant turn is an SFT dialogue. A system message is prepended
// to the first user turn (the reference template has no system slot).
func parseShareGPT(name string, rec record, st *ReadStats) (RawSample, bool, error) {
	var r struct {
		Conversations []sgMessage `json:"conversations"`
		Messages      []sgMessage `json:"messages"`
		System        string      `json:"system"`
		Chosen        *sgMessage  `json:"chosen"`
		Rejected      *sgMessage  `json:"rejected"`
	}
	if err := unmarshalRecord(name, rec, &r); err != nil {
		return RawSample{}, false, err
	}
	msgs := r.Conversations
	if msgs == nil {
		msgs = r.Messages
	}
	if msgs == nil {
		return RawSample{}, false, fieldError(name, rec.line, "conversations", "missing")
	}
	system := r.System
	var turns []string
	want := "user"
	for i, m := range msgs {
		switch role := m.role(); role {
		case "system":
			if system != "" {
				system += "\n\n"
			}
			system += m.text()
		case want:
			turns = append(turns, m.text())
			if want == "user" {
				want = "assistant"
			} else {
				want = "user"
			}
		default:
			return RawSample{}, false, fieldError(name, rec.line, fmt.Sprintf("conversations[%d].from", i), fmt.Sprintf("%q out of turn (want %s)", role, want))
		}
	}
	if system != "" && len(turns) > 0 {
		turns[0] = system + "\n\n" + turns[0]
	}
	if r.Chosen == nil && r.Rejected == nil {
		if len(turns) < 2 || len(turns)%2 != 0 {
			st.Unparsable++
			return RawSample{}, false, nil
		}
		return RawSample{Dialogue: turns, Input: turns[:len(turns)-1], Answer: turns[len(turns)-1]}, true, nil
	}
	if r.Chosen == nil || r.Rejected == nil {
		return RawSample{}, false, fieldError(name, rec.line, "chosen/rejected", "only one of the pair is present")
	}
	if len(turns)%2 != 1 {
		st.Unparsable++
		return RawSample{}, false, nil
	}
	return RawSample{Input: turns, Answer: r.Chosen.text(), OtherAnswer: r.Rejected.text(), HasOther: true, Better: true, Safer: true}, true, nil
}

// parsePrompt reads a prompt-list entry: a string, or an object with prompt, goal
// (AdvBench), question, instruction or input; category is kept.
func parsePrompt(name string, rec record) (RawSample, bool, error) {
	var str string
	if json.Unmarshal(rec.raw, &str) == nil {
		return RawSample{Input: []string{str}}, true, nil
	}
	var r map[string]any
	if err := unmarshalRecord(name, rec, &r); err != nil {
		return RawSample{}, false, err
	}
	for _, k := range []string{"prompt", "goal", "question", "instruction", "input"} {
		v, ok := r[k]
		if !ok {
			continue
		}
		p, ok := v.(string)
		if !ok {
			return RawSample{}, false, fieldError(name, rec.line, k, "not a string")
		}
		s := RawSample{Input: []string{p}}
		if c, ok := r["category"].(string); ok {
			s.Category = c
		}
		return s, true, nil
	}
	return RawSample{}, false, fieldError(name, rec.line, "prompt", "missing (also looked for goal, question, instruction, input)")
}

// parseAlpaca reads SFT rows: alpaca (input = instruction + " " + input when input
// is non-empty, answer = output, as safe_rlhf/datasets/raw/alpaca.py) or
// prompt/answer (also prompt/response, prompt/output).
func parseAlpaca(name string, rec record) (RawSample, bool, error) {
	var r struct {
		Instruction *string `json:"instruction"`
		Input       *string `json:"input"`
		Output      *string `json:"output"`
		Prompt      *string `json:"prompt"`
		Answer      *string `json:"answer"`
		Response    *string `json:"response"`
	}
	if err := unmarshalRecord(name, rec, &r); err != nil {
		return RawSample{}, false, err
	}
	var s RawSample
	switch {
	case r.Instruction != nil:
		in := *r.Instruction
		if r.Input != nil && *r.Input != "" {
			in += " " + *r.Input
		}
		s.Input = []string{in}
	case r.Prompt != nil:
		s.Input = []string{*r.Prompt}
	default:
		return s, false, fieldError(name, rec.line, "instruction", "missing (or prompt)")
	}
	switch {
	case r.Output != nil:
		s.Answer = *r.Output
	case r.Answer != nil:
		s.Answer = *r.Answer
	case r.Response != nil:
		s.Answer = *r.Response
	default:
		return s, false, fieldError(name, rec.line, "output", "missing (or answer, response)")
	}
	return s, true, nil
}
