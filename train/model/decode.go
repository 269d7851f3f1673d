package model

import "fmt"

// Decode is the host side of generation that every generator shares (the GoMLX graphs, sampling
// on the host or in graph, and native/llama): the prompts' validation and left padding, each
// row's response and EOS state, the key mask and RoPE positions of the token fed next, and the
// assembled rollout. Only the forward passes differ between generators.
type Decode struct {
	B, PW, S int       // rows, prompt width (left padded), cache length
	IDs      []int32   // [B, PW] left-padded prompts
	KeyMask  []float32 // [B, S]: 1 where a real token sits
	NReal    []int32   // real tokens per row
	Tok      []int32   // the tokens fed next: this round's samples, Pad for finished rows
	Pos      []int32   // their RoPE positions
	Resp     [][]int32 // sampled tokens per row, EOS included
	// Keys are the rows' sampling streams: DeriveSeed(Seed, FirstRow+r) (see Uniform).
	Keys []uint64

	opts    *GenerateOptions
	history [][]int32 // prompt + response per row (repetition penalty)
	done    []bool
	sc      sampler
}

// NewDecode validates prompts (token ids, BOS included, no padding) against a vocabulary of
// vocab ids and lays them out left padded to a multiple of promptBucket, with cacheLen(pw)
// cache slots per row.
func NewDecode(prompts [][]int32, opts *GenerateOptions, vocab, promptBucket int, cacheLen func(pw int) int) (*Decode, error) {
	b := len(prompts)
	if b == 0 {
		return nil, fmt.Errorf("generate: no prompts")
	}
	if opts.MaxNewTokens <= 0 {
		return nil, fmt.Errorf("generate: MaxNewTokens %d must be > 0", opts.MaxNewTokens)
	}
	maxLen := 0
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, fmt.Errorf("generate: prompt %d is empty (it needs at least BOS)", i)
		}
		for _, id := range p {
			if id < 0 || int(id) >= vocab {
				return nil, fmt.Errorf("generate: prompt %d: token %d outside vocabulary [0, %d)", i, id, vocab)
			}
		}
		maxLen = max(maxLen, len(p))
	}
	pw := roundUp(maxLen, promptBucket)
	s := cacheLen(pw)
	d := &Decode{B: b, PW: pw, S: s, IDs: make([]int32, b*pw), KeyMask: make([]float32, b*s),
		NReal: make([]int32, b), Tok: make([]int32, b), Pos: make([]int32, b), Resp: make([][]int32, b),
		Keys: make([]uint64, b), opts: opts, history: make([][]int32, b), done: make([]bool, b)}
	for r, p := range prompts {
		off := pw - len(p)
		for i := 0; i < pw; i++ {
			d.IDs[r*pw+i] = opts.Pad
		}
		copy(d.IDs[r*pw+off:], p)
		for i := off; i < pw; i++ {
			d.KeyMask[r*s+i] = 1
		}
		d.history[r] = append([]int32(nil), p...)
		d.NReal[r] = int32(len(p))
		d.Keys[r] = DeriveSeed(opts.Seed, opts.FirstRow+uint64(r))
	}
	return d, nil
}

// Record takes round i's token of every unfinished row from pick(r) and reports whether
// decoding is over (every row ended with EOS, or the MaxNewTokens budget is spent).
func (d *Decode) Record(i int, pick func(r int) int32) (over bool) {
	allDone := true
	for r := 0; r < d.B; r++ {
		if d.done[r] {
			d.Tok[r] = d.opts.Pad
			continue
		}
		t := pick(r)
		d.Resp[r] = append(d.Resp[r], t)
		d.history[r] = append(d.history[r], t)
		d.Tok[r] = t
		if t == d.opts.EOS && d.opts.EOS >= 0 {
			d.done[r] = true
		} else {
			allDone = false
		}
	}
	return allDone || i == d.opts.MaxNewTokens-1
}

// Sample is Record with the host sampler on logits [B, V].
func (d *Decode) Sample(i int, logits []float32) (over bool) {
	v := len(logits) / d.B
	return d.Record(i, func(r int) int32 {
		return d.sc.sample(logits[r*v:(r+1)*v], d.history[r], d.opts, d.Uniform(r, i))
	})
}

// Uniform is row r's uniform draw for its token i (response position i).
func (d *Decode) Uniform(r, i int) float64 { return Uniform(d.Keys[r], i) }

// Next prepares the feed of round i's tokens: they go to cache slot PW+i, which becomes visible
// for the rows that sampled a real token (EOS included), at positions Pos. It returns the slot.
func (d *Decode) Next(i int) (slot int) {
	at := d.PW + i
	for r := 0; r < d.B; r++ {
		d.Pos[r] = d.NReal[r]
		if len(d.Resp[r]) == i+1 {
			d.KeyMask[r*d.S+at] = 1
			d.NReal[r]++
		}
	}
	return at
}

// Rollout assembles the padded rows of prompts and responses.
func (d *Decode) Rollout() *Rollout {
	longest := 0
	for _, rr := range d.Resp {
		longest = max(longest, len(rr))
	}
	pw, pad, unk := d.PW, d.opts.Pad, d.opts.Unk
	ro := &Rollout{PromptWidth: pw, Seq: make([][]int32, d.B), AttentionMask: make([][]int32, d.B), ResponseLen: make([]int, d.B)}
	t := pw + longest
	for r := 0; r < d.B; r++ {
		row := make([]int32, t)
		copy(row, d.IDs[r*pw:(r+1)*pw])
		copy(row[pw:], d.Resp[r])
		for i := pw + len(d.Resp[r]); i < t; i++ {
			row[i] = pad
		}
		m := make([]int32, t)
		for i, id := range row {
			if id != pad && (unk < 0 || id != unk) {
				m[i] = 1
			}
		}
		ro.Seq[r], ro.AttentionMask[r], ro.ResponseLen[r] = row, m, len(d.Resp[r])
	}
	return ro
}
