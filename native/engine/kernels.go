// Package engine is saferlhf's native CPU engine: register- and cache-blocked
// sgemm and fused row-wise kernels in C (AVX-512, AVX2 and portable paths
// chosen at run time; a persistent thread pool; results bit-identical run to
// run at a fixed thread count), and on top of them the LLaMA-family model of
// train/model (forward, backward, AdamW, KV-cache generation).
//
// The Go API exposes slices and ints only; every entry point checks its shapes
// and returns an error instead of letting C read out of bounds. Built without
// cgo the package compiles to a stub whose entry points return ErrUnavailable.
package engine

import (
	"errors"
	"fmt"
)

// ErrUnavailable is returned by every kernel of a build without cgo.
var ErrUnavailable = errors.New("native engine not compiled in (built with CGO_ENABLED=0); rebuild with cgo or use --backend go")

// Threads returns the size of the worker pool (the caller's thread included):
// $SAFERLHF_THREADS, else the number of online CPUs.
func Threads() int { return cThreads() }

// SetThreads resizes the pool (n < 1: the default). Results are bit-identical
// for a fixed thread count.
func SetThreads(n int) { cSetThreads(n) }

var isaNames = []string{"c", "avx2", "avx512"}

// ISA returns the instruction set the kernels use: "avx512", "avx2" or "c".
func ISA() string { return isaNames[cISA()] }

// SetISA selects the kernels' instruction set ("c", "avx2", "avx512"),
// clamped to what the CPU supports; it returns the one in use. For tests and
// benchmarks; $SAFERLHF_NATIVE_ISA sets it at start-up.
func SetISA(name string) (string, error) {
	for i, n := range isaNames {
		if n == name {
			return isaNames[cSetISA(i)], nil
		}
	}
	return ISA(), fmt.Errorf("engine: unknown ISA %q (want c, avx2 or avx512)", name)
}

// need checks that s holds at least n elements.
func need(what string, s int, n int) error {
	if n < 0 || s < n {
		return fmt.Errorf("engine: %s has %d elements, needs %d", what, s, n)
	}
	return nil
}

func positive(what string, vals ...int) error {
	for _, v := range vals {
		if v <= 0 {
			return fmt.Errorf("engine: %s: dimensions %v must be > 0", what, vals)
		}
	}
	return nil
}

// matNeed returns the elements a rows×cols row-major matrix with leading
// dimension ld spans, or an error when ld < cols.
func matNeed(what string, rows, cols, ld int) (int, error) {
	if ld < cols || ld <= 0 {
		return 0, fmt.Errorf("engine: %s leading dimension %d < %d columns", what, ld, cols)
	}
	return (rows-1)*ld + cols, nil
}

// Sgemm computes C = alpha·op(A)·op(B) + beta·C for row-major matrices, where
// op(A) is m×k (A itself k×m when transA) and op(B) is k×n (B is n×k when
// transB). With beta == 0, C is not read.
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) error {
	if !Available {
		return ErrUnavailable
	}
	if m < 0 || n < 0 || k < 0 {
		return fmt.Errorf("engine: sgemm dimensions m=%d n=%d k=%d must be >= 0", m, n, k)
	}
	if m == 0 || n == 0 {
		return nil
	}
	const maxInt32 = 1<<31 - 1
	if m > maxInt32 || n > maxInt32 || k > maxInt32 || lda > maxInt32 || ldb > maxInt32 || ldc > maxInt32 {
		return fmt.Errorf("engine: sgemm dimensions exceed int32")
	}
	if k > 0 {
		ar, ac := m, k
		if transA {
			ar, ac = k, m
		}
		na, err := matNeed("sgemm A", ar, ac, lda)
		if err != nil {
			return err
		}
		if err := need("sgemm A", len(a), na); err != nil {
			return err
		}
		br, bc := k, n
		if transB {
			br, bc = n, k
		}
		nb, err := matNeed("sgemm B", br, bc, ldb)
		if err != nil {
			return err
		}
		if err := need("sgemm B", len(b), nb); err != nil {
			return err
		}
	}
	nc, err := matNeed("sgemm C", m, n, ldc)
	if err != nil {
		return err
	}
	if err := need("sgemm C", len(c), nc); err != nil {
		return err
	}
	cSgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
	return nil
}

// RMSNorm computes y = x/sqrt(mean(x²)+eps)·w over rows of width d (w nil: no
// weight) and stores each row's 1/rms in rstd (may be nil).
func RMSNorm(n, d int, x, w []float32, eps float32, y, rstd []float32) error {
	if !Available {
		return ErrUnavailable
	}
	if err := positive("rmsnorm", n, d); err != nil {
		return err
	}
	if err := errors.Join(need("rmsnorm x", len(x), n*d), need("rmsnorm y", len(y), n*d)); err != nil {
		return err
	}
	if w != nil {
		if err := need("rmsnorm w", len(w), d); err != nil {
			return err
		}
	}
	if rstd != nil {
		if err := need("rmsnorm rstd", len(rstd), n); err != nil {
			return err
		}
	}
	cRMSNormFwd(n, d, x, w, eps, y, rstd)
	return nil
}

// RMSNormBackward computes dx (added to dx when accumulate) and adds the
// weight gradient to dw (may be nil) from the forward's x, w and rstd.
func RMSNormBackward(n, d int, x, w, rstd, dy, dx []float32, accumulate bool, dw []float32) error {
	if !Available {
		return ErrUnavailable
	}
	if err := positive("rmsnorm backward", n, d); err != nil {
		return err
	}
	if err := errors.Join(need("rmsnorm x", len(x), n*d), need("rmsnorm dy", len(dy), n*d),
		need("rmsnorm dx", len(dx), n*d), need("rmsnorm rstd", len(rstd), n)); err != nil {
		return err
	}
	if w != nil {
		if err := need("rmsnorm w", len(w), d); err != nil {
			return err
		}
	}
	if dw != nil {
		if err := need("rmsnorm dw", len(dw), d); err != nil {
			return err
		}
	}
	cRMSNormBwd(n, d, x, w, rstd, dy, dx, accumulate, dw)
	return nil
}

// SwiGLU computes out = silu(gate)·up element-wise.
func SwiGLU(gate, up, out []float32) error {
	if !Available {
		return ErrUnavailable
	}
	n := len(gate)
	if err := errors.Join(need("swiglu up", len(up), n), need("swiglu out", len(out), n)); err != nil {
		return err
	}
	if n > 0 {
		cSwiGLUFwd(gate, up[:n], out[:n])
	}
	return nil
}

// SwiGLUBackward computes the gradients of SwiGLU's inputs.
func SwiGLUBackward(gate, up, dout, dgate, dup []float32) error {
	if !Available {
		return ErrUnavailable
	}
	n := len(gate)
	if err := errors.Join(need("swiglu up", len(up), n), need("swiglu dout", len(dout), n),
		need("swiglu dgate", len(dgate), n), need("swiglu dup", len(dup), n)); err != nil {
		return err
	}
	if n > 0 {
		cSwiGLUBwd(gate, up, dout, dgate, dup)
	}
	return nil
}

// RoPE rotates x [n, heads·dh] in place (HF rotate-half layout) by the angles
// of each row's position pos[r], from tables cos/sin [npos, dh/2], and scales
// by scale; inverse applies the transpose (the backward).
func RoPE(n, heads, dh int, pos []int32, cos, sin []float32, scale float32, x []float32, inverse bool) error {
	if !Available {
		return ErrUnavailable
	}
	if err := positive("rope", n, heads, dh); err != nil {
		return err
	}
	if dh%2 != 0 {
		return fmt.Errorf("engine: rope head dim %d is odd", dh)
	}
	if len(cos) != len(sin) || len(cos)%(dh/2) != 0 {
		return fmt.Errorf("engine: rope tables have %d and %d values, want equal multiples of %d", len(cos), len(sin), dh/2)
	}
	npos := len(cos) / (dh / 2)
	if err := errors.Join(need("rope pos", len(pos), n), need("rope x", len(x), n*heads*dh)); err != nil {
		return err
	}
	for r, p := range pos[:n] {
		if p < 0 || int(p) >= npos {
			return fmt.Errorf("engine: rope position %d of row %d outside the %d-position table", p, r, npos)
		}
	}
	cRoPE(n, heads, dh, pos, cos, sin, scale, x, inverse)
	return nil
}

// Softmax normalises each of n rows of width d in place.
func Softmax(n, d int, x []float32) error {
	if !Available {
		return ErrUnavailable
	}
	if err := positive("softmax", n, d); err != nil {
		return err
	}
	if err := need("softmax x", len(x), n*d); err != nil {
		return err
	}
	cSoftmax(n, d, x)
	return nil
}

func checkTargets(what string, n, v int, tgt []int32) error {
	if err := need(what+" targets", len(tgt), n); err != nil {
		return err
	}
	for r, t := range tgt[:n] {
		if t < 0 || int(t) >= v {
			return fmt.Errorf("engine: %s target %d of row %d outside the vocabulary [0, %d)", what, t, r, v)
		}
	}
	return nil
}

// checkLogitsTargets checks n rows of logits of width v (leading dimension ld) and their n
// target ids, for the log-softmax-gather kernels.
func checkLogitsTargets(what string, n, v int, logits []float32, ld int, tgt []int32) error {
	if err := positive(what, n, v); err != nil {
		return err
	}
	nl, err := matNeed(what+" logits", n, v, ld)
	if err != nil {
		return err
	}
	if err := need(what+" logits", len(logits), nl); err != nil {
		return err
	}
	return checkTargets(what, n, v, tgt)
}

// LogSoftmaxGather computes, for n rows of logits (width v, leading dimension
// ld), lse = logsumexp(row) and logp = row[tgt] − lse, without materialising
// the log-softmax. logp or lse may be nil.
func LogSoftmaxGather(n, v int, logits []float32, ld int, tgt []int32, logp, lse []float32) error {
	if !Available {
		return ErrUnavailable
	}
	if err := checkLogitsTargets("log-softmax-gather", n, v, logits, ld, tgt); err != nil {
		return err
	}
	if logp != nil {
		if err := need("log-softmax-gather logp", len(logp), n); err != nil {
			return err
		}
	}
	if lse != nil {
		if err := need("log-softmax-gather lse", len(lse), n); err != nil {
			return err
		}
	}
	cLogSoftmaxGather(n, v, logits, ld, tgt, logp, lse)
	return nil
}

// LogSoftmaxGatherBackward overwrites logits with d(Σ g·logp)/d logits =
// g·(onehot(tgt) − softmax), given the forward's lse.
func LogSoftmaxGatherBackward(n, v int, logits []float32, ld int, tgt []int32, lse, g []float32) error {
	if !Available {
		return ErrUnavailable
	}
	if err := checkLogitsTargets("log-softmax-gather backward", n, v, logits, ld, tgt); err != nil {
		return err
	}
	if err := errors.Join(need("log-softmax-gather lse", len(lse), n), need("log-softmax-gather g", len(g), n)); err != nil {
		return err
	}
	cLogSoftmaxGatherBwd(n, v, logits, ld, tgt, lse, g)
	return nil
}

func checkAttn(b, t, hq, hkv, dh int) error {
	if err := positive("attention", b, t, hq, hkv, dh); err != nil {
		return err
	}
	if hq%hkv != 0 {
		return fmt.Errorf("engine: attention: %d query heads not a multiple of %d kv heads", hq, hkv)
	}
	if dh > 1024 {
		return fmt.Errorf("engine: attention head dim %d > 1024", dh)
	}
	return nil
}

// Attention computes causal GQA attention for tokens laid out [b·t, heads·dh]
// (q pre-scaled), with keys of mask 0 excluded, into out; lse [b, hq, t]
// receives each query's log-sum-exp for the backward.
func Attention(b, t, hq, hkv, dh int, q, k, v, mask, out, lse []float32) error {
	if !Available {
		return ErrUnavailable
	}
	if err := checkAttn(b, t, hq, hkv, dh); err != nil {
		return err
	}
	nq, nk := b*t*hq*dh, b*t*hkv*dh
	if err := errors.Join(need("attention q", len(q), nq), need("attention k", len(k), nk), need("attention v", len(v), nk),
		need("attention mask", len(mask), b*t), need("attention out", len(out), nq), need("attention lse", len(lse), b*hq*t)); err != nil {
		return err
	}
	cAttnFwd(b, t, hq, hkv, dh, q, k, v, mask, out, lse)
	return nil
}

// AttentionBackward computes dq, dk, dv (overwritten) from the forward's
// inputs, output and lse and the output gradient dout.
func AttentionBackward(b, t, hq, hkv, dh int, q, k, v, mask, out, lse, dout, dq, dk, dv []float32) error {
	if !Available {
		return ErrUnavailable
	}
	if err := checkAttn(b, t, hq, hkv, dh); err != nil {
		return err
	}
	nq, nk := b*t*hq*dh, b*t*hkv*dh
	if err := errors.Join(need("attention q", len(q), nq), need("attention k", len(k), nk), need("attention v", len(v), nk),
		need("attention mask", len(mask), b*t), need("attention out", len(out), nq), need("attention lse", len(lse), b*hq*t),
		need("attention dout", len(dout), nq), need("attention dq", len(dq), nq), need("attention dk", len(dk), nk),
		need("attention dv", len(dv), nk)); err != nil {
		return err
	}
	cAttnBwd(b, t, hq, hkv, dh, q, k, v, mask, out, lse, dout, dq, dk, dv)
	return nil
}

// AttentionDecode attends one query per batch row q [b, hq·dh] to the first s
// positions of KV caches kc, vc whose key mask [b, smax] is 1. The caches are
// head-major and transposed, [b, hkv, dh, smax] so the
// kernel's loops run over positions.
func AttentionDecode(b, s, smax, hq, hkv, dh int, q, kc, vc, kmask, out []float32) error {
	if !Available {
		return ErrUnavailable
	}
	if err := checkAttn(b, s, hq, hkv, dh); err != nil {
		return err
	}
	if s > smax {
		return fmt.Errorf("engine: attention decode: %d positions > cache length %d", s, smax)
	}
	nc := b * smax * hkv * dh
	if err := errors.Join(need("decode q", len(q), b*hq*dh), need("decode k cache", len(kc), nc), need("decode v cache", len(vc), nc),
		need("decode mask", len(kmask), b*smax), need("decode out", len(out), b*hq*dh)); err != nil {
		return err
	}
	cAttnDecode(b, s, smax, hq, hkv, dh, q, kc, vc, kmask, out)
	return nil
}

// AdamWStep applies one AdamW step to p with gradient g·coef and moments m, u
// in train/optim.Apply's order: p ← p − p·decay, m ← β1m + (1−β1)g,
// u ← β2u + (1−β2)g², p ← p − m/(sqrt(u·invBC2)+eps)·stepSize.
func AdamWStep(p, g, m, u []float32, coef, b1, b2, stepSize, invBC2, eps, decay float32) error {
	if !Available {
		return ErrUnavailable
	}
	n := len(p)
	if err := errors.Join(need("adamw g", len(g), n), need("adamw m", len(m), n), need("adamw u", len(u), n)); err != nil {
		return err
	}
	if n > 0 {
		cAdamW(p, g, m, u, coef, b1, b2, stepSize, invBC2, eps, decay)
	}
	return nil
}

// SumSquares returns Σx² accumulated in float64 in a fixed order.
func SumSquares(x []float32) float64 {
	if !Available || len(x) == 0 {
		return 0
	}
	return cSumSq(x)
}

// DecodeLayout returns the offsets of the parts of a decode layer packed for
// DecodeLayer — rms1 [d], wqkv [d, hq·dh+2·hkv·dh] (the q, k and v
// projections transposed side by side), bqkv, wo [hq·dh, d], bo [d], rms2
// [d], wgu [d, 2f] (gate then up, transposed), bgu [2f], wd [f, d], bd [d] —
// and, last, the packed length.
func DecodeLayout(d, hq, hkv, dh, f int) [11]int {
	q, w := hq*dh, hq*dh+2*hkv*dh
	sizes := []int{d, d * w, w, q * d, d, d, d * 2 * f, 2 * f, f * d, d}
	var off [11]int
	for i, s := range sizes {
		off[i+1] = off[i] + s
	}
	return off
}

// DecodeLayer runs one KV-cache decode step of a LLaMA layer for b rows in
// place on x [b, d]: RMSNorm, the q/k/v projections, RoPE at positions pos
// (tables cos, sin [npos, dh/2]; queries scaled by qscale), the new keys and
// values written to position at of the caches kc, vc [b, hkv, dh, smax],
// attention over positions 0..at whose key mask kmask [b, smax] is 1, the
// output projection and residual, RMSNorm, SwiGLU MLP and residual. lw is the
// layer packed as DecodeLayout says. Each row's result does not depend on the
// thread count.
func DecodeLayer(b, d, hq, hkv, dh, f, at, smax int, eps, qscale float32, lw []float32, pos []int32, cos, sin, kmask, x, kc, vc []float32) error {
	if !Available {
		return ErrUnavailable
	}
	if err := positive("decode layer", b, d, hq, hkv, dh, f, smax); err != nil {
		return err
	}
	if hq%hkv != 0 || dh%2 != 0 {
		return fmt.Errorf("engine: decode layer: %d query heads not a multiple of %d KV heads, or odd head dim %d", hq, hkv, dh)
	}
	if at < 0 || at >= smax {
		return fmt.Errorf("engine: decode layer: position %d outside the %d-position cache", at, smax)
	}
	off := DecodeLayout(d, hq, hkv, dh, f)
	const maxInt32 = 1<<31 - 1
	// the C side's per-task scratch is (rows of a task)·(2d + qkv width + hq·dh + 3f) + 2·smax floats
	if off[10] > maxInt32 || b*(2*d+hq*dh+2*hkv*dh+hq*dh+3*f)+2*smax > maxInt32 || b*hkv*dh*smax > maxInt32 || b*max(d, smax) > maxInt32 {
		return fmt.Errorf("engine: decode layer dimensions exceed int32")
	}
	if len(cos) != len(sin) || len(cos)%(dh/2) != 0 {
		return fmt.Errorf("engine: decode layer rope tables have %d and %d values, want equal multiples of %d", len(cos), len(sin), dh/2)
	}
	nc := b * hkv * dh * smax
	if err := errors.Join(need("decode layer weights", len(lw), off[10]), need("decode layer pos", len(pos), b),
		need("decode layer mask", len(kmask), b*smax), need("decode layer x", len(x), b*d),
		need("decode layer k cache", len(kc), nc), need("decode layer v cache", len(vc), nc)); err != nil {
		return err
	}
	npos := len(cos) / (dh / 2)
	for r, p := range pos[:b] {
		if p < 0 || int(p) >= npos {
			return fmt.Errorf("engine: decode layer: rope position %d of row %d outside the %d-position table", p, r, npos)
		}
	}
	cDecodeLayer(b, d, hq, hkv, dh, f, at, smax, eps, qscale, lw, pos, cos, sin, kmask, x, kc, vc)
	return nil
}
