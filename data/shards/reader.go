package shards

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/saferlhf/saferlhf/data/datasets"
)

// Dataset is an opened shard directory. It is safe for concurrent use by readers.
type Dataset struct {
	Dir      string
	Manifest *Manifest
	blocks   []blockRef
	files    []*os.File
	dec      *zstd.Decoder
}

type blockRef struct {
	shard int
	BlockInfo
}

// Open reads the manifest of dir and opens its shard files.
func Open(dir string) (*Dataset, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	d := &Dataset{Dir: dir, Manifest: m}
	for i, s := range m.Shards {
		p := filepath.Join(dir, s.File)
		f, err := os.Open(p)
		if err != nil {
			d.Close()
			return nil, err
		}
		d.files = append(d.files, f)
		fi, err := f.Stat()
		if err != nil {
			d.Close()
			return nil, err
		}
		if fi.Size() != s.Bytes {
			d.Close()
			return nil, fmt.Errorf("%s: offset %d: %w: file has %d bytes, manifest says %d (truncated or replaced)", p, min(fi.Size(), s.Bytes), ErrCorrupt, fi.Size(), s.Bytes)
		}
		magic := make([]byte, len(fileMagic))
		if _, err := f.ReadAt(magic, 0); err != nil || string(magic) != fileMagic {
			d.Close()
			return nil, fmt.Errorf("%s: offset 0: %w: bad file magic (not a saferlhf shard, or overwritten)", p, ErrCorrupt)
		}
		for _, b := range s.Blocks {
			d.blocks = append(d.blocks, blockRef{shard: i, BlockInfo: b})
		}
	}
	d.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(1<<31))
	if err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// Close closes the shard files.
func (d *Dataset) Close() error {
	var errs []error
	for _, f := range d.files {
		errs = append(errs, f.Close())
	}
	d.files = nil
	if d.dec != nil {
		d.dec.Close()
		d.dec = nil
	}
	return errors.Join(errs...)
}

// Len is the number of examples.
func (d *Dataset) Len() int { return d.Manifest.Examples }

// NumBlocks is the number of compressed blocks (the unit of read-ahead and shuffling).
func (d *Dataset) NumBlocks() int { return len(d.blocks) }

// bufPool recycles compressed and decompressed block buffers (decoded examples
// never alias them).
var bufPool = sync.Pool{New: func() any { return new([]byte) }}

// readRaw reads and checks block i, returning its decompressed payload.
func (d *Dataset) readRaw(i int, dst []byte) ([]byte, error) {
	b := &d.blocks[i]
	sh := &d.Manifest.Shards[b.shard]
	where := func(off int64, err error) error {
		return fmt.Errorf("%s: offset %d: block %d: %w", filepath.Join(d.Dir, sh.File), off, i, err)
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	if cap(*bp) < blockHeaderSize+int(b.Compressed) {
		*bp = make([]byte, blockHeaderSize+int(b.Compressed))
	}
	buf := (*bp)[:blockHeaderSize+int(b.Compressed)]
	if _, err := d.files[b.shard].ReadAt(buf, b.Offset); err != nil {
		return nil, where(b.Offset, fmt.Errorf("%w: %v", ErrCorrupt, err))
	}
	h, err := parseBlockHeader(buf)
	if err != nil {
		return nil, where(b.Offset, err)
	}
	if h.compressed != b.Compressed || h.raw != b.Raw || h.records != b.Examples || h.crc != b.CRC32C {
		return nil, where(b.Offset, fmt.Errorf("%w: block header disagrees with the manifest", ErrCorrupt))
	}
	payload := buf[blockHeaderSize:]
	if c := crc32Checksum(payload); c != h.crc {
		return nil, where(b.Offset+blockHeaderSize, fmt.Errorf("%w: payload CRC-32C %08x, want %08x", ErrCorrupt, c, h.crc))
	}
	if err := checkFrame(payload, h.raw); err != nil {
		return nil, where(b.Offset+blockHeaderSize, err)
	}
	if cap(dst) < int(h.raw) {
		dst = make([]byte, 0, h.raw)
	}
	raw, err := d.dec.DecodeAll(payload, dst[:0])
	if err != nil {
		return nil, where(b.Offset+blockHeaderSize, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err))
	}
	if len(raw) != int(h.raw) {
		return nil, where(b.Offset+blockHeaderSize, fmt.Errorf("%w: %d raw bytes, want %d", ErrCorrupt, len(raw), h.raw))
	}
	return raw, nil
}

// readBlock reads, checks and decodes block i.
func (d *Dataset) readBlock(i int) ([]datasets.Example, error) {
	var dst []byte
	pooled := d.Manifest.TokenBytes != 4 || !zeroCopy // 4-byte tokens alias the raw block
	if pooled {
		rp := bufPool.Get().(*[]byte)
		defer func() { bufPool.Put(rp) }()
		dst = *rp
		defer func() { *rp = dst }()
	}
	raw, err := d.readRaw(i, dst)
	if err != nil {
		return nil, err
	}
	dst = raw
	b := &d.blocks[i]
	exs, err := decodeRecords(raw, int(b.Examples), d.Manifest.Kind, d.Manifest.TokenBytes, make([]datasets.Example, 0, b.Examples))
	if err != nil {
		sh := &d.Manifest.Shards[b.shard]
		return nil, fmt.Errorf("%s: offset %d: block %d: %w", filepath.Join(d.Dir, sh.File), b.Offset, i, err)
	}
	return exs, nil
}

// ReadAll returns every example in pack order (small sets: evaluation, prompts).
func ReadAll(dir string) ([]datasets.Example, *Manifest, error) {
	d, err := Open(dir)
	if err != nil {
		return nil, nil, err
	}
	defer d.Close()
	out := make([]datasets.Example, 0, d.Len())
	for i := range d.blocks {
		exs, err := d.readBlock(i)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, exs...)
	}
	return out, d.Manifest, nil
}

// ReaderOptions configures a streaming Reader.
type ReaderOptions struct {
	// Seed drives the shuffle (the same seed gives the same order).
	Seed uint64
	// Shuffle permutes the blocks of every epoch across all shards, and the
	// examples within each window of WindowBlocks blocks.
	Shuffle bool
	// Epochs is the number of passes (0 means 1); Loop repeats forever.
	Epochs int
	Loop   bool
	// WindowBlocks is the shuffle window in blocks (default 16, about 4 MiB of raw tokens).
	WindowBlocks int
	// ReadAhead is the number of windows decoded ahead in the background (default 2).
	ReadAhead int
}

// Position is where a Reader stands: the next example is number Offset (in the
// window's possibly shuffled order) of window Window of epoch Epoch. It is
// JSON-serializable for checkpoints; OpenAt resumes at exactly the next example.
type Position struct {
	Epoch  int `json:"epoch"`
	Window int `json:"window"`
	Offset int `json:"offset"`
	// Consumed counts examples delivered since the start of the run (informational).
	Consumed int64 `json:"consumed"`
	// Stream identifies the dataset and the order options; OpenAt refuses a
	// position of another stream (empty: not checked).
	Stream string `json:"stream,omitempty"`
}

// streamKey identifies a dataset's shards and the options that fix the order.
func streamKey(d *Dataset, o ReaderOptions) string {
	h := sha256.New()
	for _, s := range d.Manifest.Shards {
		io.WriteString(h, s.SHA256)
	}
	fmt.Fprintf(h, "|%d|%t|%d", o.Seed, o.Shuffle, o.WindowBlocks)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Reader streams examples with background decompression. Next and Position are
// for one goroutine; Close stops the background work.
type Reader struct {
	ds      *Dataset
	opts    ReaderOptions
	cancel  context.CancelFunc
	futures chan *window
	sem     chan struct{}

	cur      *window
	off      int
	consumed int64
	start    Position
	err      error
	closed   bool
	owned    bool // Close closes ds (OpenReader)
	key      string
}

type window struct {
	epoch, idx int
	exs        []datasets.Example
	order      []int32
	err        error
	done       chan struct{}
}

// NewReader starts streaming ds from the beginning.
func NewReader(ds *Dataset, opts ReaderOptions) (*Reader, error) {
	return OpenAt(ds, opts, Position{})
}

// OpenAt starts streaming ds at pos (from Reader.Position of a run with the same
// options), so a resumed run sees exactly the examples the interrupted run had not.
func OpenAt(ds *Dataset, opts ReaderOptions, pos Position) (*Reader, error) {
	if opts.Epochs <= 0 {
		opts.Epochs = 1
	}
	if opts.WindowBlocks <= 0 {
		opts.WindowBlocks = 16
	}
	if opts.ReadAhead <= 0 {
		opts.ReadAhead = 2
	}
	key := streamKey(ds, opts)
	if pos.Stream != "" && pos.Stream != key {
		return nil, fmt.Errorf("position of stream %s, but %s with these options is stream %s (other data, seed, shuffle or window)", pos.Stream, ds.Dir, key)
	}
	nw := ds.numWindows(opts.WindowBlocks)
	if pos.Epoch < 0 || pos.Window < 0 || pos.Offset < 0 || (nw > 0 && pos.Window >= nw) || (!opts.Loop && pos.Epoch > opts.Epochs) {
		return nil, fmt.Errorf("position %+v outside the dataset (%d windows, %d epochs)", pos, nw, opts.Epochs)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Reader{ds: ds, opts: opts, cancel: cancel, futures: make(chan *window, opts.ReadAhead),
		sem: make(chan struct{}, runtime.GOMAXPROCS(0)), start: pos, consumed: pos.Consumed, key: key}
	go r.produce(ctx, pos)
	return r, nil
}

func (d *Dataset) numWindows(w int) int { return (len(d.blocks) + w - 1) / w }

// blockOrder is the block permutation of an epoch.
func (r *Reader) blockOrder(epoch int) []int {
	n := len(r.ds.blocks)
	if !r.opts.Shuffle {
		order := make([]int, n)
		for i := range order {
			order[i] = i
		}
		return order
	}
	return rand.New(rand.NewPCG(r.opts.Seed, uint64(epoch))).Perm(n)
}

func (r *Reader) produce(ctx context.Context, pos Position) {
	defer close(r.futures)
	W := r.opts.WindowBlocks
	nw := r.ds.numWindows(W)
	if nw == 0 {
		return
	}
	for e := pos.Epoch; r.opts.Loop || e < r.opts.Epochs; e++ {
		order := r.blockOrder(e)
		w0 := 0
		if e == pos.Epoch {
			w0 = pos.Window
		}
		for w := w0; w < nw; w++ {
			fut := &window{epoch: e, idx: w, done: make(chan struct{})}
			select {
			case r.futures <- fut:
			case <-ctx.Done():
				return
			}
			go r.decodeWindow(ctx, fut, order[w*W:min((w+1)*W, len(order))])
		}
	}
}

// decodeWindow reads a window's blocks in parallel and prepares its example order.
func (r *Reader) decodeWindow(ctx context.Context, fut *window, blocks []int) {
	defer close(fut.done)
	parts := make([][]datasets.Example, len(blocks))
	errs := make([]error, len(blocks))
	var wg sync.WaitGroup
	for k, bi := range blocks {
		select {
		case r.sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			fut.err = ctx.Err()
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-r.sem; wg.Done() }()
			parts[k], errs[k] = r.ds.readBlock(bi)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fut.err = err
		return
	}
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	fut.exs = make([]datasets.Example, 0, n)
	for _, p := range parts {
		fut.exs = append(fut.exs, p...)
	}
	if r.opts.Shuffle {
		rng := rand.New(rand.NewPCG(r.opts.Seed^0x9e3779b97f4a7c15, uint64(fut.epoch)<<32|uint64(fut.idx)))
		fut.order = make([]int32, n)
		for i := range fut.order {
			fut.order[i] = int32(i)
		}
		rng.Shuffle(n, func(i, j int) { fut.order[i], fut.order[j] = fut.order[j], fut.order[i] })
	}
}

// Next returns the next example, or io.EOF after the last epoch. A damaged block
// is an error naming its shard and offset.
func (r *Reader) Next() (datasets.Example, error) {
	if r.err != nil {
		return datasets.Example{}, r.err
	}
	for r.cur == nil || r.off >= len(r.cur.exs) {
		fut, ok := <-r.futures
		if !ok {
			r.err = io.EOF
			if r.closed {
				r.err = errors.New("shards: reader closed")
			}
			return datasets.Example{}, r.err
		}
		<-fut.done
		if fut.err != nil {
			r.err = fut.err
			return datasets.Example{}, r.err
		}
		r.cur, r.off = fut, 0
		if fut.epoch == r.start.Epoch && fut.idx == r.start.Window {
			r.off = min(r.start.Offset, len(fut.exs))
			r.start = Position{Epoch: -1}
		}
	}
	i := r.off
	if r.cur.order != nil {
		i = int(r.cur.order[i])
	}
	r.off++
	r.consumed++
	return r.cur.exs[i], nil
}

// Batch returns up to n examples; fewer (and a nil error) at the end of the data,
// io.EOF when none are left.
func (r *Reader) Batch(n int) ([]datasets.Example, error) {
	out := make([]datasets.Example, 0, n)
	for len(out) < n {
		ex, err := r.Next()
		if err == io.EOF && len(out) > 0 {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, ex)
	}
	return out, nil
}

// Position returns the position of the next example.
func (r *Reader) Position() Position {
	if r.cur == nil {
		p := r.start
		if p.Epoch < 0 {
			p = Position{}
		}
		p.Consumed, p.Stream = r.consumed, r.key
		return p
	}
	return Position{Epoch: r.cur.epoch, Window: r.cur.idx, Offset: r.off, Consumed: r.consumed, Stream: r.key}
}

// Close stops the background decoding and waits for it (and closes the Dataset
// when the reader came from OpenReader).
func (r *Reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.stop()
	if r.owned {
		return r.ds.Close()
	}
	return nil
}

func (r *Reader) stop() {
	r.cancel()
	for fut := range r.futures {
		<-fut.done
	}
}

// Seek moves the reader to pos (as OpenAt): the next example is the one at pos.
func (r *Reader) Seek(pos Position) error {
	if r.closed {
		return errors.New("shards: reader closed")
	}
	nr, err := OpenAt(r.ds, r.opts, pos)
	if err != nil {
		return err
	}
	r.stop()
	nr.owned = r.owned
	*r = *nr
	return nil
}

// OpenReader opens dir and streams it from pos (nil: the start); Close closes both.
func OpenReader(dir string, opts ReaderOptions, pos *Position) (*Reader, error) {
	ds, err := Open(dir)
	if err != nil {
		return nil, err
	}
	var p Position
	if pos != nil {
		p = *pos
	}
	r, err := OpenAt(ds, opts, p)
	if err != nil {
		ds.Close()
		return nil, err
	}
	r.owned = true
	return r, nil
}

// Dataset returns the dataset the reader streams (its Manifest has the counts).
func (r *Reader) Dataset() *Dataset { return r.ds }
