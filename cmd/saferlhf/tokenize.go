package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/saferlhf/saferlhf/data/tokenizer"
)

// runTokenize prints the ids of a text (BOS included), or with --decode the text of ids.
func runTokenize(args []string) error {
	fs := newFlagSet("tokenize", "[TEXT... | IDS...]  (stdin when none)")
	tokPath := fs.String("tokenizer", "assets/data/models/tok512.bin", "tokenizer file: tokenizer.model (SentencePiece) or llama2.c *.bin")
	decode := fs.Bool("decode", false, "read token ids (space/comma separated) and print their text")
	noBOS := fs.Bool("no-bos", false, "do not prepend BOS")
	pieces := fs.Bool("pieces", false, "also print each id's vocabulary piece, one per line")
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	tok, err := tokenizer.Load(*tokPath)
	if err != nil {
		return err
	}
	var input string
	if fs.NArg() > 0 {
		input = strings.Join(fs.Args(), " ")
	} else {
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return fmt.Errorf("reading stdin: %w", err)
		}
		input = string(b)
		if *decode {
			input = strings.TrimSpace(input)
		}
	}
	if *decode {
		fields := strings.FieldsFunc(input, func(r rune) bool { return r == ' ' || r == ',' || r == '\n' || r == '\t' || r == '[' || r == ']' })
		ids := make([]int32, 0, len(fields))
		for _, f := range fields {
			v, err := strconv.ParseInt(f, 10, 32)
			if err != nil || v < 0 || int(v) >= tok.VocabSize() {
				return usagef("token id %q: not an id in [0,%d)", f, tok.VocabSize())
			}
			ids = append(ids, int32(v))
		}
		fmt.Println(tok.Decode(ids))
		return nil
	}
	ids := tok.Encode(input, !*noBOS)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.Itoa(int(id))
	}
	fmt.Println(strings.Join(parts, " "))
	if *pieces {
		for _, id := range ids {
			fmt.Printf("%d\t%q\n", id, tok.Piece(id))
		}
	}
	return nil
}
