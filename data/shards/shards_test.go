package shards

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

func asset(t testing.TB, rel string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "assets", rel)
}

// packSmall packs PKU-SafeRLHF + a slice of hh-rlhf harmless as safety preferences,
// with tiny blocks so that the data spans many blocks and two shards.
func packSmall(t testing.TB, dir string) *Manifest {
	m, err := Pack(context.Background(), PackOptions{
		Kind:          datasets.KindSafetyPreference,
		Inputs:        []string{asset(t, "data/pku-saferlhf/align-anything-preference-sample.json"), "hh-rlhf-harmless:120/-1:" + asset(t, "data/hh-rlhf/harmless-base-test.jsonl.gz")},
		TokenizerPath: asset(t, "data/models/tok512.bin"),
		Out:           dir,
		Build:         datasets.BuildOptions{MaxLength: 512},
		WriteOptions:  WriteOptions{BlockBytes: 4 << 10, ShardBytes: 40 << 10},
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPackReadBack(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "safety")
	m := packSmall(t, dir)
	if len(m.Shards) < 2 || m.Examples < 120 || m.TokenBytes != 4 || len(m.Sources) != 2 || m.Sources[0].SHA256 == "" {
		t.Fatalf("manifest: %d shards, %d examples, width %d, sources %+v", len(m.Shards), m.Examples, m.TokenBytes, m.Sources)
	}
	// hh-rlhf harmless pairs carry no safety labels: signs 0. Truncation to 512
	// tokens makes some long-prompt pairs identical: dropped and counted.
	if b := m.Build; b.UnknownSafety+b.DroppedIdentical+b.Truncated < 120 || b.UnknownSafety == 0 || b.Examples != m.Examples {
		t.Errorf("build stats %+v", m.Build)
	}
	// The stored examples equal the builders' output, in order.
	samples, _, err := datasets.LoadMix([]string{asset(t, "data/pku-saferlhf/align-anything-preference-sample.json"), "hh-rlhf-harmless:120/-1:" + asset(t, "data/hh-rlhf/harmless-base-test.jsonl.gz")}, 42)
	if err != nil {
		t.Fatal(err)
	}
	tok := tokenizer.MustLoad(asset(t, "data/models/tok512.bin"))
	want, _, err := datasets.BuildAll(context.Background(), tok, datasets.KindSafetyPreference, samples, datasets.BuildOptions{MaxLength: 512})
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := ReadAll(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d examples, want %d", len(got), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("example %d differs:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	rep, err := Verify(dir)
	if err != nil || len(rep.Damage) != 0 || rep.Examples != m.Examples || rep.Tokens != m.Tokens {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

func TestSFTAndPromptsRoundTrip(t *testing.T) {
	tok := tokenizer.MustLoad(asset(t, "data/models/tok512.bin"))
	for _, kind := range []datasets.Kind{datasets.KindSFT, datasets.KindPrompts, datasets.KindPreference} {
		dir := filepath.Join(t.TempDir(), string(kind))
		m, err := Pack(context.Background(), PackOptions{Kind: kind, Tokenizer: tok, Out: dir, Format: "sharegpt",
			Inputs: []string{asset(t, "data/helpful/llamafactory-dpo_en_demo.json")}, Build: datasets.BuildOptions{MaxLength: 256}})
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := ReadAll(dir)
		if err != nil || len(got) != m.Examples || m.Examples == 0 {
			t.Fatalf("%s: %d examples, %v", kind, len(got), err)
		}
		for _, ex := range got {
			if kind == datasets.KindSFT {
				if len(ex.Labels) != len(ex.InputIDs) || ex.Labels[0] != datasets.IgnoreIndex {
					t.Fatalf("sft labels %v", ex.Labels[:4])
				}
			}
			for _, q := range ex.Sequences() {
				if len(q) == 0 || q[0] != 1 || len(q) > 256 {
					t.Fatalf("%s: sequence of %d tokens starting %v", kind, len(q), q[:min(3, len(q))])
				}
			}
		}
	}
}

func readAllStream(t *testing.T, d *Dataset, opts ReaderOptions, pos Position, n int) ([]datasets.Example, Position) {
	r, err := OpenAt(d, opts, pos)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []datasets.Example
	for n < 0 || len(out) < n {
		ex, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ex)
	}
	return out, r.Position()
}

func TestShuffleAndExactResume(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "safety")
	m := packSmall(t, dir)
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	opts := ReaderOptions{Seed: 7, Shuffle: true, Epochs: 2, WindowBlocks: 3, ReadAhead: 2}
	full, _ := readAllStream(t, d, opts, Position{}, -1)
	if len(full) != 2*m.Examples {
		t.Fatalf("%d examples over 2 epochs, want %d", len(full), 2*m.Examples)
	}
	again, _ := readAllStream(t, d, opts, Position{}, -1)
	if !reflect.DeepEqual(full, again) {
		t.Fatal("same seed, different order")
	}
	natural, _, _ := ReadAll(dir)
	if reflect.DeepEqual(full[:m.Examples], natural) {
		t.Fatal("shuffle kept pack order")
	}
	if reflect.DeepEqual(full[:m.Examples], full[m.Examples:]) {
		t.Fatal("both epochs in the same order")
	}
	other, _ := readAllStream(t, d, ReaderOptions{Seed: 8, Shuffle: true, Epochs: 2, WindowBlocks: 3}, Position{}, -1)
	if reflect.DeepEqual(full, other) {
		t.Fatal("different seeds, same order")
	}
	// Resume at several cut points, through a JSON round trip of the position.
	for _, cut := range []int{0, 1, 17, m.Examples - 1, m.Examples, m.Examples + 5, 2*m.Examples - 1, 2 * m.Examples} {
		head, pos := readAllStream(t, d, opts, Position{}, cut)
		b, _ := json.Marshal(pos)
		var p2 Position
		if err := json.Unmarshal(b, &p2); err != nil {
			t.Fatal(err)
		}
		tail, end := readAllStream(t, d, opts, p2, -1)
		if !reflect.DeepEqual(append(head, tail...), full) {
			t.Fatalf("cut %d (pos %s): resumed stream differs", cut, b)
		}
		if end.Consumed != int64(len(full)) {
			t.Errorf("cut %d: consumed %d, want %d", cut, end.Consumed, len(full))
		}
	}
	// A position of another stream (other seed) is refused.
	_, pos := readAllStream(t, d, opts, Position{}, 3)
	if _, err := OpenAt(d, ReaderOptions{Seed: 99, Shuffle: true, Epochs: 2, WindowBlocks: 3}, pos); err == nil {
		t.Error("resumed a position with another seed")
	}
	// Seek and OpenReader give the same stream.
	r, err := OpenReader(dir, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		r.Next()
	}
	if err := r.Seek(Position{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := r.Batch(10); !reflect.DeepEqual(b, full[:10]) {
		t.Fatal("Seek to the start: different examples")
	}
	r.Close()
	// Loop keeps going past the epochs.
	looped, _ := readAllStream(t, d, ReaderOptions{Seed: 7, Shuffle: true, Loop: true, WindowBlocks: 3}, Position{}, 3*m.Examples+1)
	if len(looped) != 3*m.Examples+1 {
		t.Errorf("loop: %d", len(looped))
	}
}

func TestCorruptionNamed(t *testing.T) {
	base := filepath.Join(t.TempDir(), "safety")
	m := packSmall(t, base)
	sh := m.Shards[1]
	blk := sh.Blocks[1]
	cases := []struct {
		name   string
		damage func(p string)
		offset int64
	}{
		{"flip", func(p string) {
			b, _ := os.ReadFile(p)
			b[blk.Offset+blockHeaderSize+10] ^= 0x40
			os.WriteFile(p, b, 0o644)
		}, blk.Offset + blockHeaderSize},
		{"header", func(p string) {
			b, _ := os.ReadFile(p)
			b[blk.Offset+5] ^= 1
			os.WriteFile(p, b, 0o644)
		}, blk.Offset},
		{"truncate", func(p string) { os.Truncate(p, blk.Offset+100) }, blk.Offset + 100},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "copy")
			copyDir(t, base, dir)
			p := filepath.Join(dir, sh.File)
			c.damage(p)
			rep, err := Verify(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Damage) != 1 || rep.Damage[0].Shard != p || rep.Damage[0].Offset != c.offset {
				t.Fatalf("damage %+v, want %s at offset %d", rep.Damage, p, c.offset)
			}
			// The streaming reader fails too, naming the shard, never returning garbage.
			d, err := Open(dir)
			if err != nil {
				if !strings.Contains(err.Error(), sh.File) || !errors.Is(err, ErrCorrupt) {
					t.Fatalf("open: %v", err)
				}
				return
			}
			defer d.Close()
			r, _ := NewReader(d, ReaderOptions{})
			defer r.Close()
			for {
				_, err := r.Next()
				if err == io.EOF {
					t.Fatal("damaged dataset read to the end")
				}
				if err != nil {
					if !strings.Contains(err.Error(), sh.File) || !strings.Contains(err.Error(), "offset") || !errors.Is(err, ErrCorrupt) {
						t.Fatalf("error %v does not name the shard and offset", err)
					}
					return
				}
			}
		})
	}
}

func copyDir(t *testing.T, src, dst string) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644)
	}
}

func TestOutputDirRules(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	packSmall(t, dir)
	_, err := Pack(context.Background(), PackOptions{Kind: datasets.KindPrompts, Inputs: []string{asset(t, "data/eval/safe-rlhf-gpt4-problems.json")},
		TokenizerPath: asset(t, "data/models/tok512.bin"), Out: dir})
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("existing output: %v", err)
	}
	m, err := Pack(context.Background(), PackOptions{Kind: datasets.KindPrompts, Inputs: []string{asset(t, "data/eval/safe-rlhf-gpt4-problems.json")},
		TokenizerPath: asset(t, "data/models/tok512.bin"), Out: dir, Force: true})
	if err != nil || m.Examples != 83 {
		t.Fatalf("force: %v", err)
	}
	// --force replaces only a packed dataset: never a regular file or a directory of other files.
	for name, setup := range map[string]func(p string){
		"a regular file": func(p string) { os.WriteFile(p, []byte("precious"), 0o644) },
		"a directory of files": func(p string) {
			os.MkdirAll(p, 0o755)
			os.WriteFile(filepath.Join(p, "thesis.tex"), []byte("precious"), 0o644)
		},
	} {
		p := filepath.Join(t.TempDir(), "out")
		setup(p)
		_, err := Pack(context.Background(), PackOptions{Kind: datasets.KindPrompts, Inputs: []string{asset(t, "data/eval/safe-rlhf-gpt4-problems.json")},
			TokenizerPath: asset(t, "data/models/tok512.bin"), Out: p, Force: true})
		if err == nil || !strings.Contains(err.Error(), "replaces only a packed dataset") {
			t.Errorf("%s: --force gave %v", name, err)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed: %v", name, err)
		}
	}
	// A cancelled pack leaves neither the output nor temporary directories behind.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out2 := filepath.Join(filepath.Dir(dir), "cancelled")
	if _, err := Pack(ctx, PackOptions{Kind: datasets.KindPrompts, Inputs: []string{asset(t, "data/eval/safe-rlhf-gpt4-problems.json")},
		TokenizerPath: asset(t, "data/models/tok512.bin"), Out: out2}); err == nil {
		t.Fatal("cancelled pack succeeded")
	}
	ents, _ := os.ReadDir(filepath.Dir(dir))
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("left behind: %v", names)
	}
	// A directory without a manifest (an interrupted pack) is not a dataset.
	bare := filepath.Join(t.TempDir(), "bare")
	os.Mkdir(bare, 0o755)
	if _, err := Open(bare); err == nil || !strings.Contains(err.Error(), "not a packed dataset") {
		t.Fatalf("bare dir: %v", err)
	}
}

func FuzzDecodeBlock(f *testing.F) {
	ex := datasets.Example{Kind: datasets.KindSFT, InputIDs: []int32{1, 5, 6, 7, 2}, Labels: []int32{-100, -100, 6, 7, 2}, PromptLen: 2}
	b, _ := appendRecord(nil, &ex, 2)
	f.Add(b, uint8(1), uint8(0), false)
	pe := datasets.Example{Kind: datasets.KindSafetyPreference, Safer: []int32{1, 2}, Unsafer: []int32{1, 3, 2}, SaferSign: 1, UnsaferSign: -1}
	b2, _ := appendRecord(nil, &pe, 4)
	f.Add(b2, uint8(1), uint8(2), true)
	f.Fuzz(func(t *testing.T, raw []byte, n uint8, kind uint8, wide bool) {
		k := datasets.Kinds[int(kind)%len(datasets.Kinds)]
		w := 2
		if wide {
			w = 4
		}
		exs, err := decodeRecords(raw, int(n%8), k, w, nil)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not marked corrupt: %v", err)
			}
			return
		}
		// Whatever decodes re-encodes to the same bytes' meaning.
		var again []byte
		for i := range exs {
			if again, err = appendRecord(again, &exs[i], w); err != nil {
				return // e.g. labels equal to -100 ids are not representable; fine
			}
		}
		exs2, err := decodeRecords(again, len(exs), k, w, nil)
		if err != nil || !reflect.DeepEqual(exs, exs2) {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzBlockHeader(f *testing.F) {
	var h [blockHeaderSize]byte
	blockHeader{compressed: 10, raw: 20, records: 3, crc: 99}.put(h[:])
	f.Add(h[:])
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseBlockHeader(b)
		if err != nil {
			return
		}
		var again [blockHeaderSize]byte
		h.put(again[:])
		if string(again[:]) != string(b[:blockHeaderSize]) {
			t.Fatal("header round trip")
		}
	})
}

// FuzzShardFile mutates a whole shard file under a valid manifest: Verify must
// flag every change, and the reader must either deliver exactly the packed
// examples or fail with ErrCorrupt, never panic or return other data.
func FuzzShardFile(f *testing.F) {
	src := filepath.Join(f.TempDir(), "src")
	tok := tokenizer.MustLoad(asset(f, "data/models/tok512.bin"))
	m, err := Pack(context.Background(), PackOptions{Kind: datasets.KindSFT, Tokenizer: tok, Out: src,
		Inputs:       []string{"alpaca:" + writeAlpaca(f)},
		WriteOptions: WriteOptions{BlockBytes: 256}})
	if err != nil {
		f.Fatal(err)
	}
	want, _, err := ReadAll(src)
	if err != nil {
		f.Fatal(err)
	}
	shard := filepath.Join(src, m.Shards[0].File)
	orig, _ := os.ReadFile(shard)
	manifest, _ := os.ReadFile(filepath.Join(src, ManifestName))
	f.Add(orig)
	f.Add(orig[:len(orig)/2])
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, ManifestName), manifest, 0o644)
		os.WriteFile(filepath.Join(dir, m.Shards[0].File), b, 0o644)
		rep, err := Verify(dir)
		if err != nil {
			t.Fatal(err)
		}
		same := string(b) == string(orig)
		if same != (len(rep.Damage) == 0) {
			t.Fatalf("verify: same bytes %v, damage %v", same, rep.Damage)
		}
		got, _, err := ReadAll(dir)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not marked corrupt: %v", err)
			}
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatal("damaged shard read as other data")
		}
	})
}

func writeAlpaca(t testing.TB) string {
	p := filepath.Join(t.TempDir(), "sft.json")
	var rows []map[string]string
	for i := 0; i < 12; i++ {
		rows = append(rows, map[string]string{"instruction": fmt.Sprintf("Tell story %d", i), "input": "", "output": "Once upon a time there was a dog."})
	}
	b, _ := json.Marshal(rows)
	os.WriteFile(p, b, 0o644)
	return p
}

// Packing an empty dataset is an error, and writes nothing: an empty input file, or inputs
// none of whose samples makes an example of the kind.
func TestEmptyDataset(t *testing.T) {
	tmp := t.TempDir()
	empty := filepath.Join(tmp, "empty.json")
	os.WriteFile(empty, []byte("[]"), 0o644)
	prompts := filepath.Join(tmp, "prompts.json")
	os.WriteFile(prompts, []byte(`[{"prompt": "a question"}]`), 0o644)
	for _, c := range []struct {
		kind  datasets.Kind
		input string
		want  string
	}{
		{datasets.KindPrompts, "prompts:" + empty, "empty dataset"},
		{datasets.KindPreference, "prompts:" + prompts, "no preference examples"},
	} {
		dir := filepath.Join(tmp, "out-"+string(c.kind))
		_, err := Pack(context.Background(), PackOptions{Kind: c.kind, Inputs: []string{c.input},
			TokenizerPath: asset(t, "data/models/tok512.bin"), Out: dir})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.input, err, c.want)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s: output written (%v)", c.input, err)
		}
	}
}

func TestTokenWidths(t *testing.T) {
	var got [][]datasets.Example
	for _, w := range []int{2, 4} {
		dir := filepath.Join(t.TempDir(), "w")
		m, err := Pack(context.Background(), PackOptions{Kind: datasets.KindSFT, Inputs: []string{"pku-saferlhf:" + asset(t, "data/pku-saferlhf/align-anything-preference-sample.json")},
			TokenizerPath: asset(t, "data/models/tokenizer.model"), Out: dir, WriteOptions: WriteOptions{TokenBytes: w, BlockBytes: 2048}})
		if err != nil || m.TokenBytes != w {
			t.Fatalf("width %d: %v (manifest %d)", w, err, m.TokenBytes)
		}
		exs, _, err := ReadAll(dir)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, exs)
	}
	if len(got[0]) != 32 || !reflect.DeepEqual(got[0], got[1]) {
		t.Fatal("uint16 and int32 shards differ")
	}
}

func TestEvalSplit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pref")
	opts := PackOptions{Kind: datasets.KindPreference, Inputs: []string{"pku-saferlhf:" + asset(t, "data/pku-saferlhf/align-anything-preference-sample.json")},
		TokenizerPath: asset(t, "data/models/tok512.bin"), Out: dir, EvalFraction: 0.25}
	m, err := Pack(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	em, err := ReadManifest(dir + "-eval")
	if err != nil {
		t.Fatal(err)
	}
	if m.Split != "train" || em.Split != "eval" || m.Examples != 24 || em.Examples != 8 {
		t.Fatalf("split: train %s %d, eval %s %d", m.Split, m.Examples, em.Split, em.Examples)
	}
	train, _, _ := ReadAll(dir)
	held, _, _ := ReadAll(dir + "-eval")
	for _, h := range held {
		for _, tr := range train {
			if reflect.DeepEqual(h, tr) {
				t.Fatal("an eval example is also in train")
			}
		}
	}
	// Same seed, same split; an existing eval dir is refused without force.
	if _, err := Pack(context.Background(), opts); err == nil {
		t.Fatal("existing output accepted")
	}
	opts.Force = true
	if _, err := Pack(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	held2, _, _ := ReadAll(dir + "-eval")
	if !reflect.DeepEqual(held, held2) {
		t.Fatal("split not deterministic")
	}
}

// A shard replaced by random bytes of the same size reports "bad file magic" in every
// reader (Verify, Open, ReadAll), not a misleading block or checksum error.
func TestRandomBytesShardIsBadMagic(t *testing.T) {
	base := filepath.Join(t.TempDir(), "safety")
	m := packSmall(t, base)
	p := filepath.Join(base, m.Shards[0].File)
	junk := make([]byte, m.Shards[0].Bytes)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range junk {
		junk[i] = byte(rng.Uint32())
	}
	os.WriteFile(p, junk, 0o644)
	rep, err := Verify(base)
	if err != nil || len(rep.Damage) == 0 || !strings.Contains(rep.Damage[0].Error(), "bad file magic") {
		t.Errorf("verify: %+v %v", rep, err)
	}
	if _, err := Open(base); err == nil || !strings.Contains(err.Error(), "bad file magic") || !strings.Contains(err.Error(), p) {
		t.Errorf("open: %v", err)
	}
	if _, _, err := ReadAll(base); err == nil || !strings.Contains(err.Error(), "bad file magic") {
		t.Errorf("read all: %v", err)
	}
}
