// Package shards stores tokenized examples as zstd-compressed token shards with a
// manifest (counts, tokenizer hash, source files and hashes, per-shard and
// per-block checksums), and streams them back with background read-ahead,
// deterministic seeded shuffling across shards and an exactly resumable position.
//
// Layout of a dataset directory:
//
//	manifest.json          Manifest (written last: a directory without it is not a dataset)
//	shard-00000.bin ...    "SRLHFSH1", then blocks
//
// A block is a 24-byte header — "BLK1", uint32 compressed size, uint32 raw size,
// uint32 record count, uint32 CRC-32C of the compressed payload, uint32 CRC-32C of
// the header's first 20 bytes — followed by one zstd frame holding the records.
// A record (little-endian) is: uint8 sequence count, int8 sign 0, int8 sign 1,
// uint8 span count, uint32 prompt length, uint32 length per sequence, uint32
// (start, end) per span of trained SFT label positions, then the tokens of every
// sequence as little-endian int32 (the default: every field is 4-byte aligned, so
// readers alias the decompressed block) or uint16 (WriteOptions.TokenBytes = 2).
// Manifest.TokenBytes says which.
package shards

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"unsafe"

	"github.com/klauspost/compress/zstd"

	"github.com/saferlhf/saferlhf/data/datasets"
)

const (
	fileMagic       = "SRLHFSH1"
	blockMagic      = "BLK1"
	blockHeaderSize = 24
	// FormatVersion is the manifest's format number.
	FormatVersion = 1
	// maxRecordTokens bounds one sequence (a guard against corrupt lengths).
	maxRecordTokens = 1 << 24
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// maxBlockRaw bounds a block's decompressed size (a guard against crafted headers).
const maxBlockRaw = 1 << 30

// checkFrame checks that payload is one zstd frame declaring raw bytes of content
// (EncodeAll writes the content size), before anything is allocated for it.
func checkFrame(payload []byte, raw uint32) error {
	var zh zstd.Header
	if err := zh.Decode(payload); err != nil {
		return fmt.Errorf("%w: zstd frame header: %v", ErrCorrupt, err)
	}
	if !zh.HasFCS || zh.FrameContentSize != uint64(raw) || raw > maxBlockRaw {
		return fmt.Errorf("%w: zstd frame declares %d bytes (known %v), block header %d", ErrCorrupt, zh.FrameContentSize, zh.HasFCS, raw)
	}
	return nil
}

// ErrCorrupt is wrapped by every error about damaged shard bytes.
var ErrCorrupt = errors.New("corrupt shard data")

// blockHeader is the fixed header in front of each block's payload.
type blockHeader struct {
	compressed, raw, records, crc uint32
}

func (h blockHeader) put(b []byte) {
	copy(b, blockMagic)
	binary.LittleEndian.PutUint32(b[4:], h.compressed)
	binary.LittleEndian.PutUint32(b[8:], h.raw)
	binary.LittleEndian.PutUint32(b[12:], h.records)
	binary.LittleEndian.PutUint32(b[16:], h.crc)
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], castagnoli))
}

func parseBlockHeader(b []byte) (blockHeader, error) {
	if len(b) < blockHeaderSize {
		return blockHeader{}, fmt.Errorf("%w: block header truncated (%d of %d bytes)", ErrCorrupt, len(b), blockHeaderSize)
	}
	if string(b[:4]) != blockMagic {
		return blockHeader{}, fmt.Errorf("%w: bad block magic %q", ErrCorrupt, b[:4])
	}
	if crc32.Checksum(b[:20], castagnoli) != binary.LittleEndian.Uint32(b[20:]) {
		return blockHeader{}, fmt.Errorf("%w: block header checksum mismatch", ErrCorrupt)
	}
	return blockHeader{
		compressed: binary.LittleEndian.Uint32(b[4:]),
		raw:        binary.LittleEndian.Uint32(b[8:]),
		records:    binary.LittleEndian.Uint32(b[12:]),
		crc:        binary.LittleEndian.Uint32(b[16:]),
	}, nil
}

// appendRecord encodes one example.
func appendRecord(b []byte, ex *datasets.Example, width int) ([]byte, error) {
	seqs := ex.Sequences()
	var spans [][2]uint32
	if ex.Kind == datasets.KindSFT {
		if len(ex.Labels) != len(ex.InputIDs) {
			return b, fmt.Errorf("sft example: %d labels for %d ids", len(ex.Labels), len(ex.InputIDs))
		}
		for i := 0; i < len(ex.Labels); {
			if ex.Labels[i] == datasets.IgnoreIndex {
				i++
				continue
			}
			j := i
			for j < len(ex.Labels) && ex.Labels[j] != datasets.IgnoreIndex {
				if ex.Labels[j] != ex.InputIDs[j] {
					return b, fmt.Errorf("sft example: label %d = %d differs from id %d (only masking is stored)", j, ex.Labels[j], ex.InputIDs[j])
				}
				j++
			}
			spans = append(spans, [2]uint32{uint32(i), uint32(j)})
			i = j
		}
		if len(spans) > 255 {
			return b, fmt.Errorf("sft example: %d label spans, at most 255", len(spans))
		}
	}
	b = append(b, byte(len(seqs)), byte(int8(ex.SaferSign)), byte(int8(ex.UnsaferSign)), byte(len(spans)))
	b = binary.LittleEndian.AppendUint32(b, uint32(ex.PromptLen))
	for _, s := range seqs {
		if len(s) > maxRecordTokens {
			return b, fmt.Errorf("sequence of %d tokens, at most %d", len(s), maxRecordTokens)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	}
	for _, sp := range spans {
		b = binary.LittleEndian.AppendUint32(b, sp[0])
		b = binary.LittleEndian.AppendUint32(b, sp[1])
	}
	for _, s := range seqs {
		for _, id := range s {
			if width == 2 {
				if id < 0 || id > 0xFFFF {
					return b, fmt.Errorf("token id %d does not fit 16 bits", id)
				}
				b = binary.LittleEndian.AppendUint16(b, uint16(id))
			} else {
				b = binary.LittleEndian.AppendUint32(b, uint32(id))
			}
		}
	}
	return b, nil
}

// decodeRecords parses n records of the given kind from a block's raw bytes. The
// token slices of all records share one allocation.
func decodeRecords(raw []byte, n int, kind datasets.Kind, width int, dst []datasets.Example) ([]datasets.Example, error) {
	// First pass: count tokens to size the arena; validates the framing.
	total := 0
	off := 0
	for r := 0; r < n; r++ {
		if off+8 > len(raw) {
			return dst, fmt.Errorf("%w: record %d: header past the end of the block", ErrCorrupt, r)
		}
		nseq, nspan := int(raw[off]), int(raw[off+3])
		if nseq < 1 || nseq > 2 {
			return dst, fmt.Errorf("%w: record %d: %d sequences", ErrCorrupt, r, nseq)
		}
		off += 8
		if off+4*nseq+8*nspan > len(raw) {
			return dst, fmt.Errorf("%w: record %d: lengths past the end of the block", ErrCorrupt, r)
		}
		toks := 0
		for s := 0; s < nseq; s++ {
			l := int(binary.LittleEndian.Uint32(raw[off+4*s:]))
			if l > maxRecordTokens {
				return dst, fmt.Errorf("%w: record %d: sequence length %d", ErrCorrupt, r, l)
			}
			toks += l
		}
		off += 4*nseq + 8*nspan
		if toks*width > len(raw)-off {
			return dst, fmt.Errorf("%w: record %d: tokens past the end of the block", ErrCorrupt, r)
		}
		off += toks * width
		total += toks
	}
	if off != len(raw) {
		return dst, fmt.Errorf("%w: %d trailing bytes after %d records", ErrCorrupt, len(raw)-off, n)
	}
	var arena []int32
	if width != 4 || !zeroCopy {
		arena = make([]int32, total)
	}
	off = 0
	for r := 0; r < n; r++ {
		nseq, nspan := int(raw[off]), int(raw[off+3])
		ex := datasets.Example{Kind: kind, SaferSign: datasets.Safety(int8(raw[off+1])), UnsaferSign: datasets.Safety(int8(raw[off+2]))}
		ex.PromptLen = int(binary.LittleEndian.Uint32(raw[off+4:]))
		off += 8
		var lens [2]int
		for s := 0; s < nseq; s++ {
			lens[s] = int(binary.LittleEndian.Uint32(raw[off:]))
			off += 4
		}
		spanOff := off
		off += 8 * nspan
		var seqs [2][]int32
		for s := 0; s < nseq; s++ {
			if width == 4 && zeroCopy && lens[s] > 0 && uintptr(unsafe.Pointer(&raw[off]))%4 == 0 {
				// Little-endian int32 tokens, 4-byte aligned: alias the decompressed
				// block (the caller hands it over) instead of copying.
				seqs[s] = unsafe.Slice((*int32)(unsafe.Pointer(&raw[off])), lens[s])
				off += 4 * lens[s]
				continue
			}
			if len(arena) < lens[s] {
				arena = make([]int32, total) // misaligned block: copy after all
			}
			seq := arena[:lens[s]:lens[s]]
			arena = arena[lens[s]:]
			if width == 2 {
				src := raw[off : off+2*len(seq)]
				for i := range seq {
					seq[i] = int32(uint16(src[2*i]) | uint16(src[2*i+1])<<8)
				}
			} else {
				src := raw[off : off+4*len(seq)]
				for i := range seq {
					seq[i] = int32(binary.LittleEndian.Uint32(src[4*i:]))
				}
			}
			off += width * lens[s]
			seqs[s] = seq
		}
		switch kind {
		case datasets.KindPreference, datasets.KindSafetyPreference:
			if nseq != 2 {
				return dst, fmt.Errorf("%w: record %d: %s record with %d sequence(s)", ErrCorrupt, r, kind, nseq)
			}
			if kind == datasets.KindPreference {
				ex.Better, ex.Worse = seqs[0], seqs[1]
			} else {
				ex.Safer, ex.Unsafer = seqs[0], seqs[1]
			}
		default:
			if nseq != 1 {
				return dst, fmt.Errorf("%w: record %d: %s record with %d sequences", ErrCorrupt, r, kind, nseq)
			}
			ex.InputIDs = seqs[0]
			if kind == datasets.KindSFT {
				ex.Labels = make([]int32, len(seqs[0]))
				for i := range ex.Labels {
					ex.Labels[i] = datasets.IgnoreIndex
				}
				for k := 0; k < nspan; k++ {
					a := int(binary.LittleEndian.Uint32(raw[spanOff+8*k:]))
					e := int(binary.LittleEndian.Uint32(raw[spanOff+8*k+4:]))
					if a > e || e > len(seqs[0]) {
						return dst, fmt.Errorf("%w: record %d: label span [%d,%d) outside %d tokens", ErrCorrupt, r, a, e, len(seqs[0]))
					}
					copy(ex.Labels[a:e], seqs[0][a:e])
				}
			}
		}
		dst = append(dst, ex)
	}
	return dst, nil
}

func crc32Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// zeroCopy: int32 tokens can alias decompressed bytes on little-endian machines.
var zeroCopy = binary.NativeEndian.Uint16([]byte{1, 0}) == 1
