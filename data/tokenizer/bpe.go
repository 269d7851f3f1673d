package tokenizer

import (
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
)

// symbol is one current piece of the sequence being merged (a doubly linked list
// over a slice, as in SentencePiece's bpe_model.cc).
type symbol struct {
	piece      string // current text of the piece
	id         int32  // vocabulary id, -1 when the piece is not in the vocabulary
	prev, next int32  // neighbours, -1 at the ends
}

// candidate is a possible merge of symbols left and right into id.
type candidate struct {
	score       float32
	left, right int32
	size        int32 // len(left.piece)+len(right.piece) when pushed: a stale entry has another size
	id          int32
}

// better orders candidates as SentencePiece's SymbolPairComparator and run.c's
// scan (strict >): the highest score first, ties to the leftmost pair.
func (a *candidate) better(b *candidate) bool {
	return a.score > b.score || (a.score == b.score && a.left < b.left)
}

// mergeTable is what the BPE loop needs from a vocabulary.
type mergeTable struct {
	mergeable map[string]int32 // pieces a merge may produce
	scores    []float32
	pieces    []string
}

// bpeState is the reusable scratch of one encoding.
type bpeState struct {
	syms    []symbol
	heap    []candidate
	scratch []byte
}

var statePool = sync.Pool{New: func() any { return &bpeState{} }}

// push adds the merge of symbols l and r when their concatenation is mergeable.
func (st *bpeState) push(t *mergeTable, l, r int32) {
	if l < 0 || r < 0 {
		return
	}
	a, b := &st.syms[l], &st.syms[r]
	st.scratch = append(append(st.scratch[:0], a.piece...), b.piece...)
	id, ok := t.mergeable[string(st.scratch)]
	if !ok {
		return
	}
	c := candidate{score: t.scores[id], left: l, right: r, size: int32(len(st.scratch)), id: id}
	// Sift up.
	h := append(st.heap, c)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].better(&h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	st.heap = h
}

// pop removes and returns the best candidate.
func (st *bpeState) pop() candidate {
	h := st.heap
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		best := l
		if r := l + 1; r < n && h[r].better(&h[l]) {
			best = r
		}
		if !h[best].better(&h[i]) {
			break
		}
		h[i], h[best] = h[best], h[i]
		i = best
	}
	st.heap = h
	return top
}

// merge runs score-ordered BPE over st.syms (already filled, linked in order):
// repeatedly merge the adjacent pair whose concatenation is a mergeable piece with
// the highest score, ties to the leftmost. This is both SentencePiece's BPE
// (bpe_model.cc Model::SampleEncode without dropout) and llama2.c run.c's encode
// loop; the heap makes it O(n log n) instead of run.c's O(n^2).
func (st *bpeState) merge(t *mergeTable) {
	st.heap = st.heap[:0]
	for i := 0; i+1 < len(st.syms); i++ {
		st.push(t, int32(i), int32(i+1))
	}
	for len(st.heap) > 0 {
		c := st.pop()
		l, r := &st.syms[c.left], &st.syms[c.right]
		if l.piece == "" || r.piece == "" || l.next != c.right || int32(len(l.piece)+len(r.piece)) != c.size {
			continue // stale: one side changed since the candidate was pushed
		}
		l.piece = t.pieces[c.id]
		l.id = c.id
		l.next = r.next
		if r.next >= 0 {
			st.syms[r.next].prev = c.left
		}
		r.piece = ""
		st.push(t, l.prev, c.left)
		st.push(t, c.left, l.next)
	}
}

// link sets prev/next of st.syms in order.
func (st *bpeState) link() {
	n := int32(len(st.syms))
	for i := range st.syms {
		st.syms[i].prev = int32(i) - 1
		st.syms[i].next = int32(i) + 1
		if int32(i)+1 == n {
			st.syms[i].next = -1
		}
	}
}

// Chunking. When no vocabulary piece contains a non-space followed by a space
// (true of Llama 2's and tok512's vocabularies: checked at load), no merge can
// cross the start of a space run, so BPE of the whole text equals BPE of each
// chunk "<spaces><non-spaces>" on its own: merges in different chunks never
// interact, and within a chunk their order (score, then position) is unchanged.
// Chunks repeat (words), so their ids are cached.

// crossesSpace reports whether piece has a non-space followed by space.
func crossesSpace(piece, space string) bool {
	for i := 1; i < len(piece); i++ {
		if strings.HasPrefix(piece[i:], space) && !strings.HasSuffix(piece[:i], space) {
			return true
		}
	}
	return false
}

// nextChunk returns the end of the chunk starting at i: the next start of a space
// run after at least one non-space.
func nextChunk(text string, i int, space string) int {
	j := i
	for strings.HasPrefix(text[j:], space) {
		j += len(space)
	}
	k := strings.Index(text[j:], space)
	if k < 0 {
		return len(text)
	}
	return j + k
}

// encode appends the ids of text split into chunks by nextChunk (each a run of
// space symbols and the word after it): a chunk's ids come from the cache, or from
// enc, whose result is then cached. Only valid for a chunked vocabulary (see
// Chunking above), where the concatenation equals enc(text).
func (c *chunkCache) encode(text, space string, out []int32, enc func(chunk string, out []int32) []int32) []int32 {
	for i := 0; i < len(text); {
		j := nextChunk(text, i, space)
		chunk := text[i:j]
		if ids, ok := c.get(chunk); ok {
			out = append(out, ids...)
		} else {
			n := len(out)
			out = enc(chunk, out)
			c.put(chunk, out[n:])
		}
		i = j
	}
	return out
}

const (
	maxCachedChunk  = 64      // bytes; longer chunks are encoded but not cached
	maxCacheEntries = 1 << 18 // bounded memory (a few tens of MB at most)
)

// chunkCache maps chunk text to its ids; safe for concurrent use. It is sharded
// plain maps under read-write locks (sync.Map's interface hashing cost more than
// the BPE it saved).
type chunkCache struct {
	shards [64]cacheShard
	seed   maphash.Seed
	once   sync.Once
	n      atomic.Int64
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]int32
}

func (c *chunkCache) shard(s string) *cacheShard {
	c.once.Do(func() { c.seed = maphash.MakeSeed() })
	return &c.shards[maphash.String(c.seed, s)&63]
}

func (c *chunkCache) get(s string) ([]int32, bool) {
	sh := c.shard(s)
	sh.mu.RLock()
	ids, ok := sh.m[s]
	sh.mu.RUnlock()
	return ids, ok
}

func (c *chunkCache) put(s string, ids []int32) {
	if len(s) > maxCachedChunk || c.n.Load() >= maxCacheEntries {
		return
	}
	sh := c.shard(s)
	sh.mu.Lock()
	if sh.m == nil {
		sh.m = map[string][]int32{}
	}
	if _, ok := sh.m[s]; !ok {
		sh.m[strings.Clone(s)] = append([]int32(nil), ids...)
		c.n.Add(1)
	}
	sh.mu.Unlock()
}
