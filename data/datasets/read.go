package datasets

import (
	"bytes"
	"compress/gzip"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// maxFileBytes bounds a decompressed input file (a guard against decompression bombs).
const maxFileBytes = 4 << 30

// ReadFileBytes reads path, decompressing gzip or zstd content (by magic bytes).
func ReadFileBytes(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out, err := Decompress(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// Decompress returns b, or its decompressed content when it starts with a gzip or
// zstd magic number.
func Decompress(b []byte) ([]byte, error) {
	switch {
	case len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b:
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		out, err := io.ReadAll(io.LimitReader(zr, maxFileBytes))
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return out, nil
	case len(b) >= 4 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd:
		zr, err := zstd.NewReader(bytes.NewReader(b), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxFileBytes))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		out, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return out, nil
	}
	return b, nil
}

// record is one JSON object (or CSV row turned into an object) and its 1-based line.
type record struct {
	raw  json.RawMessage
	line int
}

// lineCounter maps byte offsets of a file to 1-based line numbers, counting
// incrementally (offsets are requested in increasing order).
type lineCounter struct {
	b    []byte
	off  int
	line int
}

func (lc *lineCounter) at(off int) int {
	if off > len(lc.b) {
		off = len(lc.b)
	}
	if off < lc.off {
		lc.off, lc.line = 0, 1
	}
	lc.line += bytes.Count(lc.b[lc.off:off], []byte{'\n'})
	lc.off = off
	return lc.line
}

// skipSpace returns the offset of the first byte at or after off that is not JSON
// whitespace or a comma.
func skipSpace(b []byte, off int) int {
	for off < len(b) {
		switch b[off] {
		case ' ', '\t', '\r', '\n', ',':
			off++
		default:
			return off
		}
	}
	return off
}

// jsonRecords splits b (a JSON array or JSON Lines) into records. Errors name the line.
func jsonRecords(name string, b []byte) ([]record, error) {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")) // UTF-8 BOM
	start := skipSpace(b, 0)
	if start == len(b) {
		return nil, nil
	}
	lc := &lineCounter{b: b, line: 1}
	if b[start] != '[' {
		return jsonLines(name, b)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", name, lc.at(start), err)
	}
	var recs []record
	for dec.More() {
		off := skipSpace(b, int(dec.InputOffset()))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%s:%d: malformed JSON: %w", name, jsonErrLine(lc, err, off), err)
		}
		recs = append(recs, record{raw: raw, line: lc.at(off)})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%s:%d: malformed JSON array end: %w", name, lc.at(int(dec.InputOffset())), err)
	}
	if rest := skipSpace(b, int(dec.InputOffset())); rest != len(b) {
		return nil, fmt.Errorf("%s:%d: data after the JSON array", name, lc.at(rest))
	}
	return recs, nil
}

func jsonErrLine(lc *lineCounter, err error, off int) int {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return lc.at(int(se.Offset))
	}
	return lc.at(off)
}

// jsonLines splits JSON Lines; blank lines are skipped.
func jsonLines(name string, b []byte) ([]record, error) {
	var recs []record
	line := 0
	for len(b) > 0 {
		line++
		i := bytes.IndexByte(b, '\n')
		var l []byte
		if i < 0 {
			l, b = b, nil
		} else {
			l, b = b[:i], b[i+1:]
		}
		l = bytes.TrimSpace(l)
		if len(l) == 0 {
			continue
		}
		if !json.Valid(l) {
			var v any
			err := json.Unmarshal(l, &v)
			return nil, fmt.Errorf("%s:%d: malformed JSON line: %v", name, line, err)
		}
		recs = append(recs, record{raw: json.RawMessage(l), line: line})
	}
	return recs, nil
}

// csvRecords reads a CSV file with a header into records (objects keyed by the
// header's column names, all values strings). Errors name the line.
func csvRecords(name string, b []byte) ([]record, error) {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = 0
	header, err := r.Read()
	if err == io.EOF {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: malformed CSV header: %w", name, err)
	}
	for i := range header {
		header[i] = strings.ToLower(strings.TrimSpace(header[i]))
	}
	var recs []record
	for {
		row, err := r.Read()
		if err == io.EOF {
			return recs, nil
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("%s:%d: malformed CSV: %v", name, pe.StartLine, pe.Err)
			}
			return nil, fmt.Errorf("%s: malformed CSV: %w", name, err)
		}
		line, _ := r.FieldPos(0)
		obj := make(map[string]string, len(header))
		for i, h := range header {
			obj[h] = row[i]
		}
		raw, err := json.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		recs = append(recs, record{raw: raw, line: line})
	}
}

// isCSV reports whether a file should be parsed as CSV: by extension, or when its
// first non-space byte cannot start JSON.
func isCSV(name string, b []byte) bool {
	n := strings.ToLower(name)
	n = strings.TrimSuffix(strings.TrimSuffix(n, ".gz"), ".zst")
	if strings.HasSuffix(n, ".csv") {
		return true
	}
	if strings.HasSuffix(n, ".json") || strings.HasSuffix(n, ".jsonl") {
		return false
	}
	i := skipSpace(bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")), 0)
	return i < len(b) && b[i] != '[' && b[i] != '{'
}

// fieldError formats a field-level error of a record.
func fieldError(name string, line int, field, msg string) error {
	return fmt.Errorf("%s:%d: field %q: %s", name, line, field, msg)
}

// unmarshalRecord decodes a record into v, naming file, line and field on error.
func unmarshalRecord(name string, rec record, v any) error {
	if err := json.Unmarshal(rec.raw, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fieldError(name, rec.line, te.Field, fmt.Sprintf("got JSON %s, want %s", te.Value, te.Type))
		}
		return fmt.Errorf("%s:%d: %w", name, rec.line, err)
	}
	return nil
}
