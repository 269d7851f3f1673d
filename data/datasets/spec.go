package datasets

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

// Spec names one input of a dataset mix: "[format[/part]:[proportion:]]path", the
// reference's name[:proportion[:path]] with a local file. Proportion is a float
// (>= 0, > 1 up-samples) or "N/-1" for exactly N samples. Part heldout or rest
// selects a fixed by-prompt part of the file (InHeldOutPart), a stand-in for a
// test split where the data has none: pku-saferlhf/rest:FILE trains on what
// pku-saferlhf/heldout:FILE evaluates on. The reference's split names (PKU-SafeRLHF/train,
// /test) only name the format; any other suffix is an error (SplitFormat).
type Spec struct {
	Format string
	// Part is "" (the whole file), PartHeldOut or PartRest.
	Part string
	// Proportion scales the sample count (used when Count < 0).
	Proportion float64
	// Count is an exact sample count ("N/-1"), or -1.
	Count int
	Path  string
}

// String renders the spec in the form ParseSpec reads.
func (s Spec) String() string {
	p := strconv.FormatFloat(s.Proportion, 'g', -1, 64)
	if s.Count >= 0 {
		p = fmt.Sprintf("%d/-1", s.Count)
	}
	f := s.Format
	if s.Part != "" {
		f += "/" + s.Part
	}
	return f + ":" + p + ":" + s.Path
}

// The parts of a file that a Spec can select.
const (
	PartHeldOut = "heldout" // the samples whose prompt InHeldOutPart
	PartRest    = "rest"    // the others
)

// HeldOutBuckets is the number of hash buckets of InHeldOutPart: one in five prompts is held out.
const HeldOutBuckets = 5

// InHeldOutPart reports whether s belongs to the held-out part of its file: the 64-bit FNV-1a
// hash of its prompt turns (joined by NUL) is 0 modulo HeldOutBuckets. The rule depends on the
// prompt alone, so the two parts share no prompt, whatever the seed, mix or command.
func InHeldOutPart(s RawSample) bool {
	h := fnv.New64a()
	h.Write([]byte(strings.Join(s.Input, "\x00")))
	return h.Sum64()%HeldOutBuckets == 0
}

// MaxProportion caps a spec's proportion (up-sampling beyond it is almost
// certainly a typo, and would multiply memory).
const MaxProportion = 100

// ParseSpec parses "[format:[proportion:]]path"; a bare path has format auto and
// proportion 1. A path that exists is taken whole even if it holds colons;
// otherwise an unknown format or a bad proportion is an error naming it.
func ParseSpec(s string) (Spec, error) {
	sp := Spec{Format: FormatAuto, Proportion: 1, Count: -1, Path: s}
	parts := strings.SplitN(s, ":", 3)
	if len(parts) < 2 || exists(s) {
		return sp, nil
	}
	f, part, err := SplitFormat(parts[0])
	if err != nil {
		if len(parts[0]) == 1 { // a Windows drive letter
			return sp, nil
		}
		if i := strings.LastIndex(s, ":"); i > 0 {
			if f, ok := CanonicalFormat(s[i+1:]); ok && exists(s[:i]) {
				return sp, fmt.Errorf("dataset spec %q: the format goes first ([format:[proportion:]]path): %s:%s", s, f, s[:i])
			}
		}
		return sp, fmt.Errorf("dataset spec %q: %w", s, err)
	}
	sp.Part = part
	sp.Format, sp.Path = f, strings.Join(parts[1:], ":")
	if len(parts) == 3 && !exists(sp.Path) {
		p, c, err := parseProportion(parts[1])
		if err != nil {
			return sp, fmt.Errorf("dataset spec %q: %w", s, err)
		}
		sp.Proportion, sp.Count, sp.Path = p, c, parts[2]
	}
	if sp.Path == "" {
		return sp, fmt.Errorf("dataset spec %q: no path", s)
	}
	return sp, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func parseProportion(s string) (float64, int, error) {
	if n, ok := strings.CutSuffix(s, "/-1"); ok {
		c, err := strconv.Atoi(n)
		if err != nil || c < 0 {
			return 0, 0, fmt.Errorf("proportion %q: want N/-1 with N >= 0", s)
		}
		return 1, c, nil
	}
	p, err := strconv.ParseFloat(s, 64)
	if err != nil || p < 0 || math.IsNaN(p) || math.IsInf(p, 0) {
		return 0, 0, fmt.Errorf("proportion %q: want a float >= 0 or N/-1", s)
	}
	if p > MaxProportion {
		return 0, 0, fmt.Errorf("proportion %q: at most %d", s, MaxProportion)
	}
	return p, -1, nil
}

// Load reads one dataset spec and applies its proportion (seed 42, as the
// reference's default).
func Load(spec string) ([]RawSample, ReadStats, error) {
	return LoadMix([]string{spec}, 42)
}

// LoadMix reads every spec, sub- or up-samples each by its proportion and
// concatenates them in order (TokenizedDataset._merge_raw_datasets): whole copies
// while the wanted count covers the dataset, the rest drawn without replacement by
// a generator seeded from seed and the spec's index.
func LoadMix(specs []string, seed uint64) ([]RawSample, ReadStats, error) {
	var all []RawSample
	var st ReadStats
	for i, s := range specs {
		sp, err := ParseSpec(s)
		if err != nil {
			return nil, st, err
		}
		samples, rs, err := Read(sp.Path, sp.Format)
		if err != nil {
			return nil, st, err
		}
		st.Add(rs)
		all = append(all, Subsample(samples, sp, seed+uint64(i))...)
	}
	return all, st, nil
}

// Subsample keeps sp's part of samples and applies sp's proportion or count to it.
func Subsample(samples []RawSample, sp Spec, seed uint64) []RawSample {
	if sp.Part != "" {
		var kept []RawSample
		for _, s := range samples {
			if InHeldOutPart(s) == (sp.Part == PartHeldOut) {
				kept = append(kept, s)
			}
		}
		samples = kept
	}
	n := len(samples)
	want := sp.Count
	if want < 0 {
		want = int(math.Round(float64(n) * sp.Proportion))
	}
	if want == n || n == 0 {
		return samples
	}
	out := make([]RawSample, 0, want)
	for want >= n {
		out = append(out, samples...)
		want -= n
	}
	if want > 0 {
		rng := rand.New(rand.NewPCG(seed, 0x5afe41f))
		perm := rng.Perm(n)[:want]
		for _, i := range perm {
			out = append(out, samples[i])
		}
	}
	return out
}
