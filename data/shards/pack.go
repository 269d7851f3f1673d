package shards

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/schollz/progressbar/v3"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
	"github.com/saferlhf/saferlhf/internal/atomicfile"
)

// PackOptions configures Pack.
type PackOptions struct {
	// Kind of examples to build.
	Kind datasets.Kind
	// Inputs are dataset specs "[format:[proportion:]]path" (datasets.ParseSpec).
	Inputs []string
	// Format applies to inputs that name none (default auto-detection).
	Format string
	// Tokenizer encodes the text; TokenizerPath is loaded when Tokenizer is nil.
	Tokenizer     tokenizer.Tokenizer
	TokenizerPath string
	// Out is the dataset directory to create.
	Out string
	// Force replaces an existing Out (otherwise refused).
	Force bool
	// Build holds MaxLength, Overlong, Strict and Workers.
	Build datasets.BuildOptions
	// Seed drives proportion sub-sampling (default 42 as the reference).
	Seed uint64
	// Progress, when non-nil, receives progress bars (os.Stderr in the CLI).
	Progress io.Writer
	// EvalFraction > 0 holds out that fraction of the samples (seeded by Seed)
	// into a second dataset at EvalOut (default Out + "-eval"); Pack returns the
	// training manifest.
	EvalFraction float64
	EvalOut      string
	// WriteOptions tunes the shard layout.
	WriteOptions
}

// WriteOptions tunes the shard layout.
type WriteOptions struct {
	// BlockBytes is the target raw size of a block (default 256 KiB).
	BlockBytes int
	// ShardBytes is the target compressed size of a shard file (default 64 MiB).
	ShardBytes int64
	// Level is the zstd level (default zstd.SpeedDefault).
	Level zstd.EncoderLevel
	// Workers compress blocks in parallel (0: GOMAXPROCS).
	Workers int
	// TokenBytes is the stored token width: 4 (default: readers alias the
	// decompressed bytes, no conversion) or 2 (vocabularies up to 65536; smaller
	// raw blocks, one conversion pass on read).
	TokenBytes int
}

// Pack reads the inputs, tokenizes them in parallel into examples of opts.Kind and
// writes a shard directory atomically (Write). It returns the manifest.
func Pack(ctx context.Context, opts PackOptions) (*Manifest, error) {
	kind, err := datasets.ParseKind(string(opts.Kind))
	if err != nil {
		return nil, err
	}
	if len(opts.Inputs) == 0 {
		return nil, errors.New("pack: no inputs")
	}
	if err := checkOut(opts.Out, opts.Force); err != nil {
		return nil, err
	}
	tok := opts.Tokenizer
	if tok == nil {
		if tok, err = tokenizer.Load(opts.TokenizerPath); err != nil {
			return nil, err
		}
	}
	seed := opts.Seed
	if seed == 0 {
		seed = 42
	}
	var samples []datasets.RawSample
	var sources []Source
	var rs datasets.ReadStats
	for i, in := range opts.Inputs {
		sp, err := datasets.ParseSpec(in)
		if err != nil {
			return nil, err
		}
		if sp.Format == datasets.FormatAuto && opts.Format != "" {
			sp.Format = opts.Format
		}
		raw, err := os.ReadFile(sp.Path)
		if err != nil {
			return nil, fmt.Errorf("pack: %w", err)
		}
		sum := sha256.Sum256(raw)
		b, err := datasets.Decompress(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", sp.Path, err)
		}
		s, st, err := datasets.Parse(sp.Path, b, sp.Format)
		if err != nil {
			return nil, err
		}
		s = datasets.Subsample(s, sp, seed+uint64(i))
		if st.Format != "" {
			sp.Format = st.Format
		}
		rs.Add(st)
		sources = append(sources, Source{Spec: in, Path: sp.Path, Format: sp.Format, SHA256: hex.EncodeToString(sum[:]),
			Bytes: int64(len(raw)), Records: st.Records, Samples: len(s)})
		samples = append(samples, s...)
	}
	if opts.EvalFraction > 0 {
		if opts.EvalFraction >= 1 {
			return nil, fmt.Errorf("pack: eval fraction %g, want in [0, 1)", opts.EvalFraction)
		}
		evalOut := opts.EvalOut
		if evalOut == "" {
			evalOut = strings.TrimRight(opts.Out, `/\`) + "-eval"
		}
		if err := checkOut(evalOut, opts.Force); err != nil {
			return nil, err
		}
		// A seeded held-out split of the samples (the reference's --eval_split_ratio),
		// each side kept in input order.
		ne := int(math.Round(float64(len(samples)) * opts.EvalFraction))
		isEval := make([]bool, len(samples))
		for _, k := range mrand.New(mrand.NewPCG(seed, 0xe7a1)).Perm(len(samples))[:ne] {
			isEval[k] = true
		}
		var train, held []datasets.RawSample
		for k := range samples {
			if isEval[k] {
				held = append(held, samples[k])
			} else {
				train = append(train, samples[k])
			}
		}
		em, err := buildAndWrite(ctx, opts, tok, kind, held, evalOut, "eval", sources, rs)
		if err != nil {
			return nil, err
		}
		m, err := buildAndWrite(ctx, opts, tok, kind, train, opts.Out, "train", sources, rs)
		if err != nil {
			return nil, err
		}
		m.EvalFraction, em.EvalFraction = opts.EvalFraction, opts.EvalFraction
		return m, nil
	}
	return buildAndWrite(ctx, opts, tok, kind, samples, opts.Out, "", sources, rs)
}

// buildAndWrite tokenizes samples and writes them to out.
func buildAndWrite(ctx context.Context, opts PackOptions, tok tokenizer.Tokenizer, kind datasets.Kind, samples []datasets.RawSample,
	out, split string, sources []Source, rs datasets.ReadStats) (*Manifest, error) {
	bopts := opts.Build
	var bar *progressbar.ProgressBar
	if opts.Progress != nil {
		bar = newBar(opts.Progress, len(samples), "tokenizing")
		var mu sync.Mutex
		last := 0
		bopts.Progress = func(done int) {
			mu.Lock()
			if done > last {
				_ = bar.Add(done - last)
				last = done
			}
			mu.Unlock()
		}
	}
	exs, bst, err := datasets.BuildAll(ctx, tok, kind, samples, bopts)
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(opts.Progress)
	}
	if err != nil {
		return nil, err
	}
	if len(exs) == 0 {
		return nil, fmt.Errorf("pack %s: no %s examples from %d samples (%d dropped over-long, %d unusable, %d identical pairs, %d contradictory): nothing written",
			out, kind, len(samples), bst.DroppedOverlong, bst.SkippedUnusable, bst.DroppedIdentical, bst.SkippedContradictory)
	}
	if bopts.Overlong == "" {
		bopts.Overlong = datasets.OverlongTruncate
	}
	m := &Manifest{Kind: kind, Split: split, EvalFraction: opts.EvalFraction, Tokenizer: tok.Info(), MaxLength: bopts.MaxLength,
		Overlong: bopts.Overlong, Sources: sources, Read: rs, Build: bst}
	if err := Write(ctx, out, m, exs, opts.Force, opts.WriteOptions, opts.Progress); err != nil {
		return nil, err
	}
	return m, nil
}

func newBar(w io.Writer, n int, desc string) *progressbar.ProgressBar {
	return progressbar.NewOptions(n, progressbar.OptionSetWriter(w), progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100_000_000))
}

// checkOut refuses an existing output directory unless force is set.
func checkOut(out string, force bool) error {
	if out == "" {
		return errors.New("pack: no output directory")
	}
	st, err := os.Stat(out)
	switch {
	case err != nil:
		return nil
	case !force:
		return fmt.Errorf("pack: output %s exists (use --force to replace it)", out)
	case !st.IsDir():
		return fmt.Errorf("pack: --force replaces only a packed dataset directory, and %s is a file", out)
	}
	if _, err := os.Stat(filepath.Join(out, ManifestName)); err != nil {
		return fmt.Errorf("pack: --force replaces only a packed dataset directory, and %s has no %s", out, ManifestName)
	}
	return nil
}

// block is one encoded block on its way to a shard.
type block struct {
	payload        []byte // compressed
	raw, records   int
	tokens         int64
	first          int64
	rawLen, crcSum uint32
}

// Write stores examples (all of m.Kind) under dir: blocks are encoded and zstd
// compressed in parallel, shard files and then the manifest are written into a
// temporary sibling directory that is renamed to dir at the end, so an interrupted
// write leaves nothing that looks like a dataset. m's counts, shard list and token
// width are filled in; its other fields (kind, tokenizer, sources, stats) are kept.
func Write(ctx context.Context, dir string, m *Manifest, exs []datasets.Example, force bool, wo WriteOptions, progress io.Writer) error {
	if err := checkOut(dir, force); err != nil {
		return err
	}
	if wo.BlockBytes <= 0 {
		wo.BlockBytes = 256 << 10
	}
	if wo.ShardBytes <= 0 {
		wo.ShardBytes = 64 << 20
	}
	if wo.Level == 0 {
		wo.Level = zstd.SpeedDefault
	}
	if wo.Workers <= 0 {
		wo.Workers = runtime.GOMAXPROCS(0)
	}
	m.Format = FormatVersion
	m.TokenBytes = 4
	if wo.TokenBytes == 2 && m.Tokenizer.VocabSize > 0 && m.Tokenizer.VocabSize <= 1<<16 {
		m.TokenBytes = 2
	}
	for i := range exs {
		if exs[i].Kind != m.Kind {
			return fmt.Errorf("example %d: kind %q in a %q dataset", i, exs[i].Kind, m.Kind)
		}
	}
	// Cut the examples into blocks by estimated raw size.
	type span struct{ lo, hi int }
	var spans []span
	lo, size := 0, 0
	for i := range exs {
		size += 16 + exs[i].Tokens()*m.TokenBytes
		if size >= wo.BlockBytes || i == len(exs)-1 {
			spans = append(spans, span{lo, i + 1})
			lo, size = i+1, 0
		}
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(wo.Level), zstd.WithEncoderConcurrency(wo.Workers), zstd.WithEncoderCRC(false))
	if err != nil {
		return err
	}
	defer enc.Close()
	blocks := make([]block, len(spans))
	var bar *progressbar.ProgressBar
	if progress != nil {
		bar = newBar(progress, len(spans), "compressing")
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, wo.Workers)
	for w := 0; w < wo.Workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var raw []byte
			for {
				i := int(next.Add(1)) - 1
				if i >= len(spans) || ctx.Err() != nil {
					return
				}
				raw = raw[:0]
				var toks int64
				for k := spans[i].lo; k < spans[i].hi; k++ {
					var err error
					if raw, err = appendRecord(raw, &exs[k], m.TokenBytes); err != nil {
						errs[w] = fmt.Errorf("example %d: %w", k, err)
						return
					}
					toks += int64(exs[k].Tokens())
				}
				p := enc.EncodeAll(raw, nil)
				blocks[i] = block{payload: p, raw: len(raw), records: spans[i].hi - spans[i].lo, tokens: toks,
					first: int64(spans[i].lo), crcSum: crc32.Checksum(p, castagnoli)}
				if bar != nil {
					_ = bar.Add(1)
				}
			}
		}(w)
	}
	wg.Wait()
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(progress)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tmp, err := tempDir(dir)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	m.Shards = nil
	m.Examples, m.Tokens, m.RawBytes, m.CompressedBytes = 0, 0, 0, 0
	for bi := 0; bi < len(blocks) || (bi == 0 && len(m.Shards) == 0); {
		si := ShardInfo{File: fmt.Sprintf("shard-%05d.bin", len(m.Shards))}
		f, err := os.Create(filepath.Join(tmp, si.File))
		if err != nil {
			return err
		}
		h := sha256.New()
		bw := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
		bw.WriteString(fileMagic)
		off := int64(len(fileMagic))
		var hdr [blockHeaderSize]byte
		for ; bi < len(blocks) && (off == int64(len(fileMagic)) || off+int64(len(blocks[bi].payload)) <= wo.ShardBytes); bi++ {
			b := &blocks[bi]
			bh := blockHeader{compressed: uint32(len(b.payload)), raw: uint32(b.raw), records: uint32(b.records), crc: b.crcSum}
			bh.put(hdr[:])
			bw.Write(hdr[:])
			bw.Write(b.payload)
			si.Blocks = append(si.Blocks, BlockInfo{Offset: off, Compressed: bh.compressed, Raw: bh.raw, Examples: bh.records, CRC32C: bh.crc, First: b.first})
			off += blockHeaderSize + int64(len(b.payload))
			si.Examples += b.records
			si.Tokens += b.tokens
			m.RawBytes += int64(b.raw)
			m.CompressedBytes += int64(len(b.payload))
			b.payload = nil
		}
		err = bw.Flush()
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", si.File, err)
		}
		si.Bytes = off
		si.SHA256 = hex.EncodeToString(h.Sum(nil))
		m.Examples += si.Examples
		m.Tokens += si.Tokens
		m.Shards = append(m.Shards, si)
		if len(blocks) == 0 {
			break
		}
	}
	mb, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteBytes(filepath.Join(tmp, ManifestName), append(mb, '\n'), 0o644); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return err
	}
	// Swap into place: an existing dir (force) is moved aside first and removed last.
	var old string
	if _, err := os.Stat(dir); err == nil {
		old = tmp + ".old"
		if err := os.Rename(dir, old); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if old != "" {
			os.Rename(old, dir)
		}
		return err
	}
	ok = true
	if old != "" {
		os.RemoveAll(old)
	}
	return atomicfile.SyncDir(filepath.Dir(dir))
}

// tempDir creates a hidden temporary directory beside dir.
func tempDir(dir string) (string, error) {
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", err
	}
	var r [6]byte
	_, _ = rand.Read(r[:])
	tmp := filepath.Join(parent, "."+filepath.Base(filepath.Clean(dir))+".tmp-"+hex.EncodeToString(r[:]))
	return tmp, os.Mkdir(tmp, 0o755)
}
