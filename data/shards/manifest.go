package shards

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/saferlhf/saferlhf/data/datasets"
	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// ManifestName is the manifest's file name inside a dataset directory.
const ManifestName = "manifest.json"

// Manifest describes a packed dataset.
type Manifest struct {
	Format int           `json:"format"`
	Kind   datasets.Kind `json:"kind"`
	// Split is "train" or "eval" for a pack with an eval fraction, else "".
	Split        string         `json:"split,omitempty"`
	EvalFraction float64        `json:"eval_fraction,omitempty"`
	Tokenizer    tokenizer.Info `json:"tokenizer"`
	// TokenBytes is the stored width of a token id: 2 or 4.
	TokenBytes int   `json:"token_bytes"`
	Examples   int   `json:"examples"`
	Tokens     int64 `json:"tokens"`
	// RawBytes and CompressedBytes total the blocks' payloads.
	RawBytes        int64 `json:"raw_bytes"`
	CompressedBytes int64 `json:"compressed_bytes"`
	// MaxLength and Overlong are the build options used (0: no cap).
	MaxLength int    `json:"max_length"`
	Overlong  string `json:"overlong"`
	// Sources are the input files with their hashes and counts.
	Sources []Source `json:"sources"`
	// Read and Build count what the readers and builders kept and dropped.
	Read   datasets.ReadStats  `json:"read"`
	Build  datasets.BuildStats `json:"build"`
	Shards []ShardInfo         `json:"shards"`
}

// Source is one input file of a pack.
type Source struct {
	Spec   string `json:"spec"`
	Path   string `json:"path"`
	Format string `json:"format"`
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
	// Records is the file's record count; Samples what was kept after reading and
	// sub-sampling.
	Records int `json:"records"`
	Samples int `json:"samples"`
}

// ShardInfo describes one shard file.
type ShardInfo struct {
	File     string      `json:"file"`
	Examples int         `json:"examples"`
	Tokens   int64       `json:"tokens"`
	Bytes    int64       `json:"bytes"`
	SHA256   string      `json:"sha256"`
	Blocks   []BlockInfo `json:"blocks"`
}

// BlockInfo locates one block inside its shard.
type BlockInfo struct {
	// Offset is the byte offset of the block header in the shard file.
	Offset     int64  `json:"offset"`
	Compressed uint32 `json:"compressed"`
	Raw        uint32 `json:"raw"`
	Examples   uint32 `json:"examples"`
	CRC32C     uint32 `json:"crc32c"`
	// First is the pack-order index of the block's first example.
	First int64 `json:"first"`
}

// ReadManifest reads and validates dir/manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	p := filepath.Join(dir, ManifestName)
	b, err := os.ReadFile(p)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: not a packed dataset (no %s; an interrupted pack leaves none)", dir, ManifestName)
		}
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return &m, nil
}

func (m *Manifest) validate() error {
	if m.Format != FormatVersion {
		return fmt.Errorf("format %d, this build reads %d", m.Format, FormatVersion)
	}
	if _, err := datasets.ParseKind(string(m.Kind)); err != nil {
		return err
	}
	if m.TokenBytes != 2 && m.TokenBytes != 4 {
		return fmt.Errorf("token_bytes %d, want 2 or 4", m.TokenBytes)
	}
	n := 0
	for i, s := range m.Shards {
		if s.File == "" || strings.ContainsAny(s.File, `/\`) || s.File == ".." {
			return fmt.Errorf("shard %d: bad file name %q", i, s.File)
		}
		e := 0
		for j, b := range s.Blocks {
			if b.Offset < int64(len(fileMagic)) || b.Offset+blockHeaderSize+int64(b.Compressed) > s.Bytes {
				return fmt.Errorf("shard %s: block %d: offset %d size %d outside %d bytes", s.File, j, b.Offset, b.Compressed, s.Bytes)
			}
			if b.First != int64(n+e) {
				return fmt.Errorf("shard %s: block %d: first example %d, want %d", s.File, j, b.First, n+e)
			}
			e += int(b.Examples)
		}
		if e != s.Examples {
			return fmt.Errorf("shard %s: blocks hold %d examples, shard says %d", s.File, e, s.Examples)
		}
		n += e
	}
	if n != m.Examples {
		return fmt.Errorf("shards hold %d examples, manifest says %d", n, m.Examples)
	}
	return nil
}

// CheckTokenizer returns an error naming dir unless tok is the tokenizer the
// dataset was packed with (same kind, vocabulary size and file hash): token ids
// of another vocabulary would train or score silently wrong.
func (m *Manifest) CheckTokenizer(dir string, tok tokenizer.Info) error {
	p := m.Tokenizer
	if p.Kind != tok.Kind || p.VocabSize != tok.VocabSize || p.SHA256 != tok.SHA256 {
		return fmt.Errorf("%s: packed with tokenizer %s (%s, vocab %d, sha256 %.12s), but the model uses %s (%s, vocab %d, sha256 %.12s): repack it with --tokenizer %s",
			dir, p.Path, p.Kind, p.VocabSize, p.SHA256, tok.Path, tok.Kind, tok.VocabSize, tok.SHA256, tok.Path)
	}
	return nil
}

// IsDataset reports whether path is a packed dataset directory (has a manifest).
func IsDataset(path string) bool {
	st, err := os.Stat(filepath.Join(path, ManifestName))
	return err == nil && !st.IsDir()
}

// ReadAllFor is ReadAll after checking the manifest's tokenizer against tok.
func ReadAllFor(dir string, tok tokenizer.Info) ([]datasets.Example, *Manifest, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, nil, err
	}
	if err := m.CheckTokenizer(dir, tok); err != nil {
		return nil, nil, err
	}
	return ReadAll(dir)
}

// AllDatasets reports whether every spec is a packed dataset directory; mixing
// them with raw files is an error.
func AllDatasets(specs []string) (bool, error) {
	n := 0
	for _, s := range specs {
		if IsDataset(s) {
			n++
		}
	}
	if n > 0 && n < len(specs) {
		return false, fmt.Errorf("data %v: mix of shard directories and raw files (pack them all, or give raw files only)", specs)
	}
	return n > 0 && n == len(specs), nil
}

// ReadKind reads every example of the dataset directories, checking they were
// packed with tok and are of kind (who names the reader in the error).
func ReadKind(dirs []string, kind datasets.Kind, tok tokenizer.Info, who string) ([]datasets.Example, error) {
	var out []datasets.Example
	for _, d := range dirs {
		exs, _, err := ReadAllFor(d, tok)
		if err != nil {
			return nil, err
		}
		for i := range exs {
			if exs[i].Kind != kind {
				return nil, fmt.Errorf("%s: example %d is %v, %s needs %v examples", d, i, exs[i].Kind, who, kind)
			}
		}
		out = append(out, exs...)
	}
	return out, nil
}
