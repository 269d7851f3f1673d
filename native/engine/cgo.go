//go:build cgo

package engine

/*
#cgo CFLAGS: -O3 -std=gnu11 -Wall
#cgo LDFLAGS: -lpthread -lm
#include "engine.h"
*/
import "C"

import "unsafe"

// Available reports whether the native engine is compiled into this binary (it needs cgo).
const Available = true

func fp(s []float32) *C.float {
	if len(s) == 0 {
		return nil
	}
	return (*C.float)(unsafe.Pointer(&s[0]))
}

func ip(s []int32) *C.int32_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.int32_t)(unsafe.Pointer(&s[0]))
}

func cb(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

func cThreads() int     { return int(C.eng_threads()) }
func cSetThreads(n int) { C.eng_set_threads(C.int(n)) }
func cISA() int         { return int(C.eng_isa()) }
func cSetISA(i int) int { return int(C.eng_set_isa(C.int(i))) }

func cSgemm(ta, tb bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	C.eng_sgemm(cb(ta), cb(tb), C.int(m), C.int(n), C.int(k), C.float(alpha), fp(a), C.int(lda), fp(b), C.int(ldb), C.float(beta), fp(c), C.int(ldc))
}

func cRMSNormFwd(n, d int, x, w []float32, eps float32, y, rstd []float32) {
	C.eng_rmsnorm_fwd(C.int(n), C.int(d), fp(x), fp(w), C.float(eps), fp(y), fp(rstd))
}

func cRMSNormBwd(n, d int, x, w, rstd, dy, dx []float32, acc bool, dw []float32) {
	C.eng_rmsnorm_bwd(C.int(n), C.int(d), fp(x), fp(w), fp(rstd), fp(dy), fp(dx), cb(acc), fp(dw))
}

func cSwiGLUFwd(gate, up, out []float32) {
	C.eng_swiglu_fwd(C.int(len(gate)), fp(gate), fp(up), fp(out))
}

func cSwiGLUBwd(gate, up, dout, dgate, dup []float32) {
	C.eng_swiglu_bwd(C.int(len(gate)), fp(gate), fp(up), fp(dout), fp(dgate), fp(dup))
}

func cRoPE(n, heads, dh int, pos []int32, cos, sin []float32, scale float32, x []float32, inverse bool) {
	C.eng_rope(C.int(n), C.int(heads), C.int(dh), ip(pos), fp(cos), fp(sin), C.float(scale), fp(x), cb(inverse))
}

func cSoftmax(n, d int, x []float32) { C.eng_softmax(C.int(n), C.int(d), fp(x)) }

func cLogSoftmaxGather(n, v int, logits []float32, ld int, tgt []int32, logp, lse []float32) {
	C.eng_logsoftmax_gather(C.int(n), C.int(v), fp(logits), C.int(ld), ip(tgt), fp(logp), fp(lse))
}

func cLogSoftmaxGatherBwd(n, v int, logits []float32, ld int, tgt []int32, lse, g []float32) {
	C.eng_logsoftmax_gather_bwd(C.int(n), C.int(v), fp(logits), C.int(ld), ip(tgt), fp(lse), fp(g))
}

func cAttnFwd(b, t, hq, hkv, dh int, q, k, v, mask, out, lse []float32) {
	C.eng_attn_fwd(C.int(b), C.int(t), C.int(hq), C.int(hkv), C.int(dh), fp(q), fp(k), fp(v), fp(mask), fp(out), fp(lse))
}

func cAttnBwd(b, t, hq, hkv, dh int, q, k, v, mask, out, lse, dout, dq, dk, dv []float32) {
	C.eng_attn_bwd(C.int(b), C.int(t), C.int(hq), C.int(hkv), C.int(dh), fp(q), fp(k), fp(v), fp(mask), fp(out), fp(lse), fp(dout), fp(dq), fp(dk), fp(dv))
}

func cAttnDecode(b, s, smax, hq, hkv, dh int, q, kc, vc, kmask, out []float32) {
	C.eng_attn_decode(C.int(b), C.int(s), C.int(smax), C.int(hq), C.int(hkv), C.int(dh), fp(q), fp(kc), fp(vc), fp(kmask), fp(out))
}

func cDecodeLayer(b, d, hq, hkv, dh, f, at, smax int, eps, qscale float32, lw []float32, pos []int32, cos, sin, kmask, x, kc, vc []float32) {
	C.eng_decode_layer(C.int(b), C.int(d), C.int(hq), C.int(hkv), C.int(dh), C.int(f), C.int(at), C.int(smax), C.float(eps), C.float(qscale),
		fp(lw), ip(pos), fp(cos), fp(sin), fp(kmask), fp(x), fp(kc), fp(vc))
}

func cAdamW(p, g, m, u []float32, coef, b1, b2, stepSize, invBC2, eps, decay float32) {
	C.eng_adamw(C.int64_t(len(p)), fp(p), fp(g), fp(m), fp(u), C.float(coef), C.float(b1), C.float(b2), C.float(stepSize), C.float(invBC2), C.float(eps), C.float(decay))
}

func cSumSq(x []float32) float64 { return float64(C.eng_sumsq(C.int64_t(len(x)), fp(x))) }
