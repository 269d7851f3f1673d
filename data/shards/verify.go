package shards

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/klauspost/compress/zstd"

	"github.com/saferlhf/saferlhf/data/datasets"
)

// Damage locates one damaged shard.
type Damage struct {
	Shard  string `json:"shard"`
	Offset int64  `json:"offset"`
	Err    string `json:"error"`
}

// Error implements error: "shard: offset N: what".
func (d Damage) Error() string { return fmt.Sprintf("%s: offset %d: %s", d.Shard, d.Offset, d.Err) }

// VerifyReport is the result of Verify.
type VerifyReport struct {
	Shards   int   `json:"shards"`
	Blocks   int   `json:"blocks"`
	Examples int   `json:"examples"`
	Tokens   int64 `json:"tokens"`
	// Damage lists the first damage found in each damaged shard.
	Damage []Damage `json:"damage,omitempty"`
}

// Verify checks every shard of dir: size, SHA-256, and walking the file itself,
// every block header, CRC-32C, zstd frame and record against the manifest. The
// error is for an unreadable manifest only; damage is listed in the report.
func Verify(dir string) (*VerifyReport, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<31))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	rep := &VerifyReport{Shards: len(m.Shards)}
	for _, sh := range m.Shards {
		p := filepath.Join(dir, sh.File)
		if off, err := verifyShard(p, &sh, m, dec, rep); err != nil {
			rep.Damage = append(rep.Damage, Damage{Shard: p, Offset: off, Err: err.Error()})
		}
	}
	return rep, nil
}

func verifyShard(path string, sh *ShardInfo, m *Manifest, dec *zstd.Decoder, rep *VerifyReport) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sum := sha256.Sum256(b)
	shaOK := hex.EncodeToString(sum[:]) == sh.SHA256
	if len(b) < len(fileMagic) || string(b[:len(fileMagic)]) != fileMagic {
		return 0, fmt.Errorf("%w: bad file magic", ErrCorrupt)
	}
	off := int64(len(fileMagic))
	for i, bi := range sh.Blocks {
		if off != bi.Offset {
			return off, fmt.Errorf("%w: block %d expected at offset %d", ErrCorrupt, i, bi.Offset)
		}
		if off+blockHeaderSize > int64(len(b)) {
			return int64(len(b)), fmt.Errorf("%w: truncated: block %d header missing (file has %d bytes, manifest says %d)", ErrCorrupt, i, len(b), sh.Bytes)
		}
		h, err := parseBlockHeader(b[off:])
		if err != nil {
			return off, fmt.Errorf("block %d: %w", i, err)
		}
		if h.compressed != bi.Compressed || h.raw != bi.Raw || h.records != bi.Examples || h.crc != bi.CRC32C {
			return off, fmt.Errorf("%w: block %d header disagrees with the manifest", ErrCorrupt, i)
		}
		pstart := off + blockHeaderSize
		pend := pstart + int64(h.compressed)
		if pend > int64(len(b)) {
			return int64(len(b)), fmt.Errorf("%w: truncated: block %d payload ends at %d, file has %d bytes", ErrCorrupt, i, pend, len(b))
		}
		payload := b[pstart:pend]
		if c := crc32Checksum(payload); c != h.crc {
			return pstart, fmt.Errorf("%w: block %d payload CRC-32C %08x, want %08x", ErrCorrupt, i, c, h.crc)
		}
		if err := checkFrame(payload, h.raw); err != nil {
			return pstart, fmt.Errorf("block %d: %w", i, err)
		}
		raw, err := dec.DecodeAll(payload, make([]byte, 0, h.raw))
		if err != nil || len(raw) != int(h.raw) {
			return pstart, fmt.Errorf("%w: block %d: zstd: %v (%d raw bytes, want %d)", ErrCorrupt, i, err, len(raw), h.raw)
		}
		exs, err := decodeRecords(raw, int(h.records), m.Kind, m.TokenBytes, nil)
		if err != nil {
			return pstart, fmt.Errorf("block %d: %w", i, err)
		}
		for j := range exs {
			rep.Tokens += int64(exs[j].Tokens())
		}
		rep.Examples += len(exs)
		rep.Blocks++
		off = pend
	}
	if off != int64(len(b)) {
		return off, fmt.Errorf("%w: %d unexpected bytes after the last block", ErrCorrupt, int64(len(b))-off)
	}
	if !shaOK {
		return 0, fmt.Errorf("%w: SHA-256 mismatch (all blocks check; file header altered?)", ErrCorrupt)
	}
	return 0, nil
}

// Summary describes a dataset for `saferlhf data inspect`.
type Summary struct {
	Manifest *Manifest
	// Histogram counts sequences by length bucket: [0,16), [16,32), [32,64), ...
	Histogram []Bucket
	// First holds the first examples in pack order.
	First []datasets.Example
	// SignCounts counts safety signs (safety-preference) by "safer/unsafer" value.
	SignCounts map[string]int
}

// Bucket is one histogram bucket of sequence lengths [Lo, Hi).
type Bucket struct {
	Lo, Hi, Count int
}

// Inspect reads the whole dataset and summarizes it, keeping the first n examples.
func Inspect(dir string, n int) (*Summary, error) {
	d, err := Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	r, err := NewReader(d, ReaderOptions{})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	s := &Summary{Manifest: d.Manifest, SignCounts: map[string]int{}}
	hist := map[int]int{}
	for {
		ex, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if len(s.First) < n {
			s.First = append(s.First, ex)
		}
		for _, q := range ex.Sequences() {
			lo := 0
			if len(q) >= 16 {
				lo = 16
				for lo*2 <= len(q) {
					lo *= 2
				}
			}
			hist[lo]++
		}
		if ex.Kind == datasets.KindSafetyPreference {
			s.SignCounts[fmt.Sprintf("%v/%v", ex.SaferSign, ex.UnsaferSign)]++
		}
	}
	for lo, c := range hist {
		hi := 16
		if lo > 0 {
			hi = lo * 2
		}
		s.Histogram = append(s.Histogram, Bucket{Lo: lo, Hi: hi, Count: c})
	}
	sort.Slice(s.Histogram, func(i, j int) bool { return s.Histogram[i].Lo < s.Histogram[j].Lo })
	return s, nil
}
