// Package datasets reads the preference, safety, SFT and prompt datasets of Safe
// RLHF into RawSample (safe_rlhf/datasets/base.py), formats prompts with the
// reference template (spec §6) and builds tokenized examples (spec §6-7).
//
// Formats (Format* constants; "auto" detects from the first record):
//   - pku-saferlhf: PKU-SafeRLHF rows (JSON array or JSONL), decoupled better/safer labels.
//   - hh-rlhf (and hh-rlhf-helpful, hh-rlhf-harmless): Anthropic chosen/rejected dialogues.
//   - beavertails: BeaverTails QA (CSV prompt,response,category or JSON with is_safe/category).
//   - sharegpt: LLaMA-Factory ShareGPT (preference with chosen/rejected, or SFT conversations).
//   - prompts: prompt lists (JSON array of objects or strings, JSONL, CSV with a prompt/goal column).
//   - alpaca: instruction/input/output, or prompt/answer (also prompt/response) SFT rows.
//
// Files may be plain, gzip (.gz) or zstd (.zst) compressed (detected by magic bytes).
package datasets

import "fmt"

// Safety is a response's safety label: +1 safe, -1 unsafe, 0 unknown. It is the
// reference's safety_sign (2·is_safe − 1), with 0 where a dataset has no label
// (hh-rlhf harmless pairs).
type Safety int8

// Safety labels.
const (
	SafetyUnknown Safety = 0
	Safe          Safety = 1
	Unsafe        Safety = -1
)

func safetyOf(b bool) Safety {
	if b {
		return Safe
	}
	return Unsafe
}

// String implements fmt.Stringer.
func (s Safety) String() string {
	switch s {
	case Safe:
		return "safe"
	case Unsafe:
		return "unsafe"
	}
	return "unknown"
}

// RawSample is one dataset record (safe_rlhf/datasets/base.py RawSample).
type RawSample struct {
	// Input holds the prompt turns: user, assistant, ..., user (odd length).
	Input []string
	// Answer is the (first) assistant response.
	Answer string
	// OtherAnswer is the second response of a pair (HasOther).
	OtherAnswer string
	HasOther    bool
	// Dialogue is an alternating user/assistant conversation for multi-turn SFT.
	Dialogue []string
	// Better reports whether Answer is more helpful than OtherAnswer.
	Better bool
	// Safer reports whether Answer is less harmful than OtherAnswer.
	Safer bool
	// IsSafe and IsOtherSafe label Answer and OtherAnswer.
	IsSafe, IsOtherSafe Safety
	// Category is a harm category or eval-set category, when the dataset has one
	// (several harm categories are joined by ";" in sorted order); OtherCategory is
	// OtherAnswer's (PKU-SafeRLHF's current schema labels each response).
	Category, OtherCategory string
	// Severity and OtherSeverity are PKU-SafeRLHF's response_*_severity_level
	// (0 harmless … 3 severe) when HasSeverity.
	Severity, OtherSeverity int
	HasSeverity             bool
	// File and Line locate the record in its source (Line is 1-based).
	File string
	Line int
}

// Where returns "file:line" of the sample.
func (s *RawSample) Where() string { return fmt.Sprintf("%s:%d", s.File, s.Line) }
