package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/shards"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/train/config"
)

const dataUsage = `usage: saferlhf data <subcommand> [flags] [args]

subcommands:
  pack     tokenize raw datasets into zstd token shards
  inspect  print a packed dataset's manifest, statistics and first examples
  verify   check every shard's checksums
  demo     pack the demo's datasets from the bundled assets

Run 'saferlhf data <subcommand> -h' for its flags.
`

// runData dispatches `saferlhf data pack|inspect|verify`.
func runData(args []string) error {
	if len(args) == 0 {
		return usagef("want a subcommand: pack, inspect, verify or demo (saferlhf data -h)")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(os.Stderr, dataUsage)
		return flag.ErrHelp
	case "pack":
		return runDataPack(args[1:])
	case "inspect":
		return runDataInspect(args[1:])
	case "verify":
		return runDataVerify(args[1:])
	case "demo":
		return runDataDemo(args[1:])
	}
	return usagef("unknown subcommand %q: want pack, inspect, verify or demo", args[0])
}

func runDataPack(args []string) error {
	fs := newFlagSet("data pack", "INPUT...  (each INPUT is [format:[proportion:]]path; proportion a float or N/-1)")
	kind := fs.String("kind", "", "example kind: sft, preference, safety-preference or prompts (required)")
	format := fs.String("format", "auto", "input format for inputs that name none: "+strings.Join(datasets.Formats, ", ")+" or auto")
	tokPath := fs.String("tokenizer", "assets/data/models/tok512.bin", "tokenizer file (tokenizer.model or llama2.c *.bin)")
	out := fs.String("out", "", "output dataset directory (required)")
	force := fs.Bool("force", false, "replace an existing output directory")
	maxLen := fs.Int("max-length", 512, "maximum tokens per sequence, BOS included (0: no cap)")
	overlong := fs.String("overlong", datasets.OverlongTruncate, "longer samples: truncate (on the right, as the reference), drop, or prompt-left (cut the oldest prompt tokens first)")
	strict := fs.Bool("strict", false, "fail on contradictory safety labels instead of skipping them")
	workers := fs.Int("workers", 0, "tokenizing goroutines (0: all cores)")
	seed := fs.Uint64("seed", 42, "seed of proportion sub-sampling")
	blockKiB := fs.Int("block-kib", 256, "target raw block size in KiB (the unit of read-ahead and shuffling)")
	shardMiB := fs.Int("shard-mib", 64, "target shard file size in MiB")
	quiet := fs.Bool("quiet", false, "no progress bars")
	evalFrac := fs.Float64("eval-fraction", 0, "hold out this fraction of the samples (seeded by --seed) as a second dataset")
	evalOut := fs.String("eval-out", "", "directory of the held-out dataset (default OUT-eval)")
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if *kind == "" || *out == "" || fs.NArg() == 0 {
		return usagef("--kind, --out and at least one INPUT are required")
	}
	k, err := datasets.ParseKind(*kind)
	if err != nil {
		return usagef("%v", err)
	}
	if _, ok := datasets.CanonicalFormat(*format); !ok {
		return usagef("unknown --format %q", *format)
	}
	var ck config.Checker
	ck.NonNegativeInt("max-length", *maxLen)
	ck.NonNegativeInt("workers", *workers)
	ck.PositiveInt("block-kib", *blockKiB)
	ck.PositiveInt("shard-mib", *shardMiB)
	ck.Check(*evalFrac >= 0 && *evalFrac < 1, "--eval-fraction must be in [0, 1), got %v", *evalFrac)
	if err := ck.Err(); err != nil {
		return usagef("%v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	progress := progressOut(*quiet)
	start := time.Now()
	m, err := shards.Pack(ctx, shards.PackOptions{
		Kind: k, Inputs: fs.Args(), Format: *format, TokenizerPath: *tokPath, Out: *out, Force: *force, Seed: *seed,
		Build:        datasets.BuildOptions{MaxLength: *maxLen, Overlong: *overlong, Strict: *strict, Workers: *workers},
		Progress:     progress,
		WriteOptions: shards.WriteOptions{BlockBytes: *blockKiB << 10, ShardBytes: int64(*shardMiB) << 20},
		EvalFraction: *evalFrac, EvalOut: *evalOut,
	})
	if err != nil {
		return err
	}
	var inBytes int64
	for _, s := range m.Sources {
		inBytes += s.Bytes
	}
	el := time.Since(start).Seconds()
	fmt.Printf("packed %s: %d %s examples, %d tokens, %d shard(s), %.1f MB -> %.1f MB (ratio %.2f) in %.2fs (%.0f tokens/s)\n",
		*out, m.Examples, m.Kind, m.Tokens, len(m.Shards), float64(m.RawBytes)/1e6, float64(m.CompressedBytes)/1e6,
		float64(m.RawBytes)/max(1, float64(m.CompressedBytes)), el, float64(m.Tokens)/el)
	printStats(os.Stdout, m)
	if *evalFrac > 0 {
		eo := *evalOut
		if eo == "" {
			eo = strings.TrimRight(*out, `/\`) + "-eval"
		}
		em, err := shards.ReadManifest(eo)
		if err != nil {
			return err
		}
		fmt.Printf("held out %s: %d %s examples, %d tokens\n", eo, em.Examples, em.Kind, em.Tokens)
		printStats(os.Stdout, em)
	}
	return nil
}

func printStats(w io.Writer, m *shards.Manifest) {
	b, r := m.Build, m.Read
	fmt.Fprintf(w, "  read: %d records, %d samples; dropped: %d hh prefix mismatches, %d unparsable dialogues\n",
		r.Records, b.Samples, r.PrefixMismatch, r.Unparsable)
	fmt.Fprintf(w, "  build: %d truncated, %d dropped over-long, %d identical pairs dropped, %d contradictory safety labels skipped, %d unusable, %d duplicate prompts, %d with unknown safety sign; longest %d tokens (max-length %d)\n",
		b.Truncated, b.DroppedOverlong, b.DroppedIdentical, b.SkippedContradictory, b.SkippedUnusable, b.DuplicatePrompts, b.UnknownSafety, b.MaxSeqLen, m.MaxLength)
}

func runDataInspect(args []string) error {
	fs := newFlagSet("data inspect", "DIR")
	n := fs.Int("n", 2, "decoded examples to print")
	tokPath := fs.String("tokenizer", "", "tokenizer for decoding (default: the manifest's)")
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want one DIR")
	}
	s, err := shards.Inspect(fs.Arg(0), *n)
	if err != nil {
		return err
	}
	m := s.Manifest
	fmt.Printf("%s: %s, %d examples, %d tokens, %d shard(s), tokenizer %s (%s, vocab %d, sha256 %.12s)\n",
		fs.Arg(0), m.Kind, m.Examples, m.Tokens, len(m.Shards), m.Tokenizer.Path, m.Tokenizer.Kind, m.Tokenizer.VocabSize, m.Tokenizer.SHA256)
	fmt.Printf("  compressed %d bytes, raw %d bytes (ratio %.2f)\n", m.CompressedBytes, m.RawBytes, float64(m.RawBytes)/max(1, float64(m.CompressedBytes)))
	for _, src := range m.Sources {
		fmt.Printf("  source %s (%s): %d records, %d samples, sha256 %.12s\n", src.Path, src.Format, src.Records, src.Samples, src.SHA256)
	}
	printStats(os.Stdout, m)
	fmt.Println("  sequence lengths:")
	total := 0
	for _, b := range s.Histogram {
		total += b.Count
	}
	for _, b := range s.Histogram {
		bar := strings.Repeat("#", int(50*float64(b.Count)/float64(max(total, 1))+0.5))
		fmt.Printf("    [%5d,%5d) %7d %s\n", b.Lo, b.Hi, b.Count, bar)
	}
	for k, c := range s.SignCounts {
		fmt.Printf("  safety signs safer/unsafer %s: %d\n", k, c)
	}
	if len(s.First) == 0 {
		return nil
	}
	tp := *tokPath
	if tp == "" {
		tp = m.Tokenizer.Path
	}
	tok, err := tokenizer.Load(tp)
	if err != nil {
		return fmt.Errorf("decoding examples (pass --tokenizer): %w", err)
	}
	if tok.Info().SHA256 != m.Tokenizer.SHA256 {
		fmt.Printf("  warning: %s differs from the packing tokenizer (sha256)\n", tp)
	}
	names := map[datasets.Kind][]string{
		datasets.KindSFT: {"input"}, datasets.KindPrompts: {"prompt"},
		datasets.KindPreference: {"better", "worse"}, datasets.KindSafetyPreference: {"safer", "unsafer"},
	}[m.Kind]
	for i, ex := range s.First {
		fmt.Printf("--- example %d (prompt %d tokens", i, ex.PromptLen)
		if m.Kind == datasets.KindSafetyPreference {
			fmt.Printf(", signs safer %v unsafer %v", ex.SaferSign, ex.UnsaferSign)
		}
		fmt.Println(")")
		for j, q := range ex.Sequences() {
			fmt.Printf("[%s, %d tokens] %q\n", names[j], len(q), tok.Decode(q))
		}
		if m.Kind == datasets.KindSFT {
			var trained []int32
			for j, l := range ex.Labels {
				if l != datasets.IgnoreIndex {
					trained = append(trained, ex.InputIDs[j])
				}
			}
			fmt.Printf("[trained, %d tokens] %q\n", len(trained), tok.Decode(trained))
		}
	}
	return nil
}

func runDataVerify(args []string) error {
	fs := newFlagSet("data verify", "DIR")
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want one DIR")
	}
	rep, err := shards.Verify(fs.Arg(0))
	if err != nil {
		return err
	}
	for _, d := range rep.Damage {
		fmt.Fprintf(os.Stderr, "DAMAGED %s\n", d.Error())
	}
	if len(rep.Damage) > 0 {
		return fmt.Errorf("%d of %d shard(s) damaged", len(rep.Damage), rep.Shards)
	}
	fmt.Printf("ok: %s: %d shard(s), %d blocks, %d examples, %d tokens, all checksums match\n", fs.Arg(0), rep.Shards, rep.Blocks, rep.Examples, rep.Tokens)
	return nil
}

// runDataDemo packs the demo's datasets (shards.DemoSets) from the bundled assets.
func runDataDemo(args []string) error {
	fs := newFlagSet("data demo", "")
	assets := fs.String("assets", "assets/data", "the bundled assets/data directory")
	out := fs.String("out", "", "output directory; one dataset per subdirectory (required)")
	tokPath := fs.String("tokenizer", "assets/data/models/tok512.bin", "tokenizer file")
	maxLen := fs.Int("max-length", 512, "maximum tokens per sequence (prompts: half)")
	force := fs.Bool("force", false, "replace existing datasets")
	quiet := fs.Bool("quiet", false, "no progress bars")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if *out == "" {
		return usagef("--out is required")
	}
	tok, err := tokenizer.Load(*tokPath)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	progress := progressOut(*quiet)
	start := time.Now()
	ms, err := shards.PackDemo(ctx, *assets, *out, tok, *maxLen, *force, progress)
	if err != nil {
		return err
	}
	for _, set := range shards.DemoSets() {
		for _, name := range []string{set.Name, set.Name + "-eval"} {
			m, ok := ms[name]
			if !ok {
				continue
			}
			fmt.Printf("%-23s %6d %-17s examples, %8d tokens\n", name, m.Examples, m.Kind, m.Tokens)
			printStats(os.Stdout, m)
		}
	}
	fmt.Printf("packed %d datasets into %s in %.2fs\n", len(ms), *out, time.Since(start).Seconds())
	return nil
}

// progressOut is where the data commands report progress: stderr, or nowhere
// (a nil writer, which the packers treat as silent) under --quiet.
func progressOut(quiet bool) io.Writer {
	if quiet {
		return nil
	}
	return os.Stderr
}
