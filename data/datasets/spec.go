package datasets

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

// Spec names one input of a dataset mix: "[format:[proportion:]]path", the
// reference's name[:proportion[:path]] with a local file. Proportion is a float
// (>= 0, > 1 up-samples) or "N/-1" for exactly N samples.
type Spec struct {
	Format string
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
	return s.Format + ":" + p + ":" + s.Path
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
	f, ok := CanonicalFormat(parts[0])
	if !ok {
		if len(parts[0]) == 1 { // a Windows drive letter
			return sp, nil
		}
		if i := strings.LastIndex(s, ":"); i > 0 {
			if f, ok := CanonicalFormat(s[i+1:]); ok && exists(s[:i]) {
				return sp, fmt.Errorf("dataset spec %q: the format goes first ([format:[proportion:]]path): %s:%s", s, f, s[:i])
			}
		}
		return sp, fmt.Errorf("dataset spec %q: unknown format %q (known: %s)", s, parts[0], strings.Join(Formats, ", "))
	}
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

// Subsample applies sp's proportion or count to samples.
func Subsample(samples []RawSample, sp Spec, seed uint64) []RawSample {
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
