/* decode.c: one KV-cache decode step of a LLaMA layer for a whole batch.
 *
 * Batched generation is many tiny kernels per step (a few rows, d = 64 at
 * stories260K): run one by one, each behind its own parallel region, the step
 * costs more in thread wake-ups and B-packing than in arithmetic. Here a layer
 * is one parallel region over fixed chunks of DEC_ROWS rows; each task runs the
 * whole layer for its rows with the serial kernels (norm, fused QKV matmul,
 * RoPE, cache write, attention, output projection, norm, fused gate/up matmul,
 * SwiGLU, down projection, residuals). The weights come pre-transposed to
 * [in, out] so the small-M sgemm streams them without packing. Chunks do not
 * depend on the thread count, so results are bit-identical at any count. */
#include "engine.h"
#include "fexp.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEC_ROWS 8

/* Separate from sgemm's scratch: a decode task holds this one across eng_sgemm calls. */
static __thread float *dec_buf;
static __thread size_t dec_cap;

/* 16 fixed lanes: vectorisable without reassociation, deterministic. */
static inline float lanes16(const float *acc) {
	float s = 0;
	for (int l = 0; l < 16; l++) s += acc[l];
	return s;
}

/* Attention of one batch row's Hq query heads q [Hq*dh] (pre-scaled) to the
 * first S positions of its caches kt, vt [Hkv][dh][Smax]; keys with mask 0 are
 * excluded, and when every key is masked all get the graph's -1e9 bias
 * (see attn.c). s is scratch of S floats (2*S for the AVX-512 path). */
CLONES static void dec_attn_row(int S, int Smax, int Hq, int Hkv, int dh, const float *q, const float *kt,
                                const float *vt, const float *mask, float *o, float *s) {
	int G = Hq / Hkv, uni = 1, x0 = 0;
	for (int x = 0; x < S; x++)
		if (mask[x] != 0) {
			uni = 0;
			x0 = x & ~15; /* keys before the first real one weigh exactly 0: skip whole lane groups of them */
			break;
		}
	for (int h = 0; h < Hq; h++) {
		const float *qh = q + h * dh, *k = kt + (size_t)(h / G) * dh * Smax, *v = vt + (size_t)(h / G) * dh * Smax;
		int x = x0;
		for (; x + 16 <= S; x += 16) {
			float a[16] = {0};
			for (int d = 0; d < dh; d++) {
				float qd = qh[d];
				const float *kr = k + (size_t)d * Smax + x;
				for (int l = 0; l < 16; l++) a[l] += qd * kr[l];
			}
			for (int l = 0; l < 16; l++) s[x + l] = a[l];
		}
		for (; x < S; x++) {
			float a = 0;
			for (int d = 0; d < dh; d++) a += qh[d] * k[(size_t)d * Smax + x];
			s[x] = a;
		}
		if (uni)
			for (x = 0; x < S; x++) s[x] = s[x] + -1e9f;
		else
			for (x = x0; x < S; x++) s[x] = mask[x] != 0 ? s[x] : -INFINITY;
		float mx[16];
		for (int l = 0; l < 16; l++) mx[l] = -INFINITY;
		for (x = x0; x < S; x++) mx[x & 15] = s[x] > mx[x & 15] ? s[x] : mx[x & 15];
		float m = mx[0];
		for (int l = 1; l < 16; l++) m = mx[l] > m ? mx[l] : m;
		float acc[16] = {0};
		for (x = x0; x + 16 <= S; x += 16)
			for (int l = 0; l < 16; l++) {
				s[x + l] = fexp(s[x + l] - m);
				acc[l] += s[x + l];
			}
		for (; x < S; x++) {
			s[x] = fexp(s[x] - m);
			acc[x & 15] += s[x];
		}
		float inv = 1.0f / lanes16(acc);
		float *oh = o + h * dh;
		for (int d = 0; d < dh; d++) {
			const float *vr = v + (size_t)d * Smax;
			float a[16] = {0};
			for (x = x0; x + 16 <= S; x += 16)
				for (int l = 0; l < 16; l++) a[l] += s[x + l] * vr[x + l];
			for (; x < S; x++) a[x & 15] += s[x] * vr[x];
			oh[d] = lanes16(a) * inv;
		}
	}
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f,fma")))

AVX512 static inline __mmask16 tail16(int n) {
	return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* fexp (fexp.h) on 16 lanes, the same operations in the same order. */
AVX512 static inline __m512 fexp16(__m512 x) {
	__mmask16 z = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
	x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
	__m512 t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _mm512_set1_ps(12582912.0f));
	__m512 n = _mm512_sub_ps(t, _mm512_set1_ps(12582912.0f));
	__m512i ni = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B400000));
	__m512 r = _mm512_add_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
	                         _mm512_mul_ps(n, _mm512_set1_ps(2.12194440e-4f)));
	__m512 q = _mm512_set1_ps(1.9875691500E-4f);
	q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(1.3981999507E-3f));
	q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(8.3334519073E-3f));
	q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(4.1665795894E-2f));
	q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(1.6666665459E-1f));
	q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(5.0000001201E-1f));
	__m512 p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(q, r), r), r), _mm512_set1_ps(1.0f));
	p = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), _mm512_slli_epi32(ni, 23)));
	return _mm512_maskz_mov_ps(~z, p);
}

/* The attention of NH (1 or 2) query heads qh [NH*dh] that share one KV head
 * k, v [dh][Smax], from key xs on: each key block and each V row is loaded
 * once for both heads. Per head, every operation is the one (and in the order)
 * a head alone would do, so the result does not depend on NH. s is scratch of
 * NH*S floats. */
AVX512 static inline __attribute__((always_inline)) void dec_heads_avx512(int NH, int S, int Smax, int dh, int xs, int uni,
                                                                          const float *qh, const float *k, const float *v,
                                                                          const float *mask, float *oh, float *s) {
	const __m512 ninf = _mm512_set1_ps(-INFINITY), zero = _mm512_setzero_ps();
	__m512 mv[2] = {ninf, ninf};
	for (int x0 = xs; x0 < S; x0 += 64) {
		__mmask16 mk[4] = {tail16(S - x0), tail16(S - x0 - 16), tail16(S - x0 - 32), tail16(S - x0 - 48)};
		__m512 a[2][4];
		for (int e = 0; e < NH; e++)
			for (int c = 0; c < 4; c++) a[e][c] = zero;
		for (int d = 0; d < dh; d++) {
			const float *kr = k + (size_t)d * Smax + x0;
			__m512 k0 = _mm512_maskz_loadu_ps(mk[0], kr), k1 = _mm512_maskz_loadu_ps(mk[1], kr + 16),
			       k2 = _mm512_maskz_loadu_ps(mk[2], kr + 32), k3 = _mm512_maskz_loadu_ps(mk[3], kr + 48);
			for (int e = 0; e < NH; e++) {
				__m512 qd = _mm512_set1_ps(qh[e * dh + d]);
				a[e][0] = _mm512_fmadd_ps(qd, k0, a[e][0]);
				a[e][1] = _mm512_fmadd_ps(qd, k1, a[e][1]);
				a[e][2] = _mm512_fmadd_ps(qd, k2, a[e][2]);
				a[e][3] = _mm512_fmadd_ps(qd, k3, a[e][3]);
			}
		}
		for (int c = 0; c < 4; c++) {
			if (!mk[c]) break;
			__mmask16 keep = 0xFFFF;
			if (!uni)
				keep = _mm512_mask_cmp_ps_mask(mk[c], _mm512_maskz_loadu_ps(mk[c], mask + x0 + 16 * c), zero, _CMP_NEQ_UQ);
			for (int e = 0; e < NH; e++) {
				__m512 sv = a[e][c];
				if (uni)
					sv = _mm512_add_ps(sv, _mm512_set1_ps(-1e9f));
				else
					sv = _mm512_mask_mov_ps(ninf, keep, sv);
				_mm512_mask_storeu_ps(s + (size_t)e * S + x0 + 16 * c, mk[c], sv);
				mv[e] = _mm512_mask_max_ps(mv[e], mk[c], mv[e], sv);
			}
		}
	}
	float inv[2];
	for (int e = 0; e < NH; e++) {
		float *se = s + (size_t)e * S;
		__m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mv[e])), acc = zero;
		for (int x0 = xs; x0 < S; x0 += 16) {
			__mmask16 mk = tail16(S - x0);
			__m512 p = fexp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, se + x0), m));
			_mm512_mask_storeu_ps(se + x0, mk, p);
			acc = _mm512_mask_add_ps(acc, mk, acc, p);
		}
		inv[e] = 1.0f / _mm512_reduce_add_ps(acc);
	}
	int d0 = 0;
	for (; d0 + 4 <= dh; d0 += 4) {
		const float *v0 = v + (size_t)d0 * Smax;
		__m512 b[2][4];
		for (int e = 0; e < NH; e++)
			for (int c = 0; c < 4; c++) b[e][c] = zero;
		for (int x0 = xs; x0 < S; x0 += 16) {
			__mmask16 mk = tail16(S - x0);
			__m512 w0 = _mm512_maskz_loadu_ps(mk, v0 + x0), w1 = _mm512_maskz_loadu_ps(mk, v0 + Smax + x0),
			       w2 = _mm512_maskz_loadu_ps(mk, v0 + 2 * (size_t)Smax + x0),
			       w3 = _mm512_maskz_loadu_ps(mk, v0 + 3 * (size_t)Smax + x0);
			for (int e = 0; e < NH; e++) {
				__m512 p = _mm512_maskz_loadu_ps(mk, s + (size_t)e * S + x0);
				b[e][0] = _mm512_fmadd_ps(p, w0, b[e][0]);
				b[e][1] = _mm512_fmadd_ps(p, w1, b[e][1]);
				b[e][2] = _mm512_fmadd_ps(p, w2, b[e][2]);
				b[e][3] = _mm512_fmadd_ps(p, w3, b[e][3]);
			}
		}
		for (int e = 0; e < NH; e++)
			for (int c = 0; c < 4; c++) oh[e * dh + d0 + c] = _mm512_reduce_add_ps(b[e][c]) * inv[e];
	}
	for (; d0 < dh; d0++) {
		const float *v0 = v + (size_t)d0 * Smax;
		__m512 b[2] = {zero, zero};
		for (int x0 = xs; x0 < S; x0 += 16) {
			__mmask16 mk = tail16(S - x0);
			__m512 w = _mm512_maskz_loadu_ps(mk, v0 + x0);
			for (int e = 0; e < NH; e++)
				b[e] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, s + (size_t)e * S + x0), w, b[e]);
		}
		for (int e = 0; e < NH; e++) oh[e * dh + d0] = _mm512_reduce_add_ps(b[e]) * inv[e];
	}
}

/* dec_attn_row with AVX-512: keys in blocks of 64 (four independent
 * accumulators), masked loads and stores for the tail; the query heads that
 * share a KV head go through it in pairs, so the cache is read once per pair.
 * s is scratch of 2*S floats. */
AVX512 static void dec_attn_row_avx512(int S, int Smax, int Hq, int Hkv, int dh, const float *q, const float *kt,
                                       const float *vt, const float *mask, float *o, float *s) {
	int G = Hq / Hkv, uni = 1, xs = 0;
	for (int x = 0; x < S; x++)
		if (mask[x] != 0) {
			uni = 0;
			xs = x & ~15; /* as dec_attn_row */
			break;
		}
	for (int g = 0; g < Hkv; g++) {
		const float *k = kt + (size_t)g * dh * Smax, *v = vt + (size_t)g * dh * Smax;
		for (int h = g * G; h < (g + 1) * G; h += 2) {
			if (h + 1 < (g + 1) * G)
				dec_heads_avx512(2, S, Smax, dh, xs, uni, q + h * dh, k, v, mask, o + h * dh, s);
			else
				dec_heads_avx512(1, S, Smax, dh, xs, uni, q + h * dh, k, v, mask, o + h * dh, s);
		}
	}
}
#endif

/* The row kernel for the ISA in use. */
static void dec_row(int S, int Smax, int Hq, int Hkv, int dh, const float *q, const float *kt, const float *vt,
                    const float *mask, float *o, float *s) {
#if defined(__x86_64__) && defined(__GNUC__)
	if (eng_isa() == 2) {
		dec_attn_row_avx512(S, Smax, Hq, Hkv, dh, q, kt, vt, mask, o, s);
		return;
	}
#endif
	dec_attn_row(S, Smax, Hq, Hkv, dh, q, kt, vt, mask, o, s);
}

struct dec_att_job {
	int S, Smax, Hq, Hkv, dh;
	const float *q, *kc, *vc, *mask;
	float *o;
};

static void dec_att_task(void *arg, int b) {
	struct dec_att_job *j = arg;
	size_t cw = (size_t)j->Hkv * j->dh * j->Smax, qw = (size_t)j->Hq * j->dh;
	float *s = eng_scratch(&dec_buf, &dec_cap, 2 * (size_t)j->S);
	if (!s) abort();
	dec_row(j->S, j->Smax, j->Hq, j->Hkv, j->dh, j->q + b * qw, j->kc + b * cw, j->vc + b * cw,
	             j->mask + (size_t)b * j->Smax, j->o + b * qw, s);
}

void eng_attn_decode(int B, int S, int Smax, int Hq, int Hkv, int dh, const float *q, const float *kc, const float *vc,
                     const float *kmask, float *out) {
	struct dec_att_job j = {S, Smax, Hq, Hkv, dh, q, kc, vc, kmask, out};
	if ((long)B * Hq * S * dh < 32768)
		for (int b = 0; b < B; b++) dec_att_task(&j, b);
	else
		eng_parallel(B, dec_att_task, &j);
}

/* Offsets of the parts of a packed decode layer (see engine.h). */
void eng_decode_layout(int D, int Hq, int Hkv, int dh, int F, int64_t *off) {
	int64_t Q = (int64_t)Hq * dh, W = Q + 2 * (int64_t)Hkv * dh, o = 0;
	off[0] = o, o += D;                 /* rms1 */
	off[1] = o, o += (int64_t)D * W;    /* wqkv [D][W] */
	off[2] = o, o += W;                 /* bqkv */
	off[3] = o, o += Q * D;             /* wo [Q][D] */
	off[4] = o, o += D;                 /* bo */
	off[5] = o, o += D;                 /* rms2 */
	off[6] = o, o += (int64_t)D * 2 * F; /* wgu [D][2F] */
	off[7] = o, o += 2 * (int64_t)F;    /* bgu */
	off[8] = o, o += (int64_t)F * D;    /* wd [F][D] */
	off[9] = o, o += D;                 /* bd */
	off[10] = o;
}

struct dec_job {
	int B, D, Hq, Hkv, dh, F, at, Smax;
	float eps, qscale;
	const float *lw, *cos, *sin, *mask;
	const int32_t *pos;
	float *x, *kc, *vc;
};

static void add_rows(int n, int w, float *y, const float *b) {
	for (int r = 0; r < n; r++)
		for (int i = 0; i < w; i++) y[(size_t)r * w + i] += b[i];
}

static void dec_task(void *arg, int t) {
	struct dec_job *j = arg;
	int r0 = t * DEC_ROWS, n = j->B - r0 < DEC_ROWS ? j->B - r0 : DEC_ROWS;
	int D = j->D, dh = j->dh, F = j->F, Smax = j->Smax, S = j->at + 1;
	int Q = j->Hq * dh, KW = j->Hkv * dh, W = Q + 2 * KW;
	int64_t off[11];
	eng_decode_layout(D, j->Hq, j->Hkv, dh, F, off);
	const float *lw = j->lw;
	size_t need = (size_t)n * (2 * D + W + Q + 3 * F) + 2 * (size_t)S;
	float *buf = eng_scratch(&dec_buf, &dec_cap, need);
	if (!buf) abort();
	float *h = buf, *qkv = h + (size_t)n * D, *att = qkv + (size_t)n * W, *y = att + (size_t)n * Q;
	float *gu = y + (size_t)n * D, *act = gu + (size_t)n * 2 * F, *s = act + (size_t)n * F;
	float *x = j->x + (size_t)r0 * D;

	eng_rmsnorm_fwd(n, D, x, lw + off[0], j->eps, h, NULL);
	eng_sgemm(0, 0, n, W, D, 1, h, D, lw + off[1], W, 0, qkv, W);
	add_rows(n, W, qkv, lw + off[2]);
	for (int r = 0; r < n; r++) {
		int b = r0 + r;
		float *qr = qkv + (size_t)r * W;
		eng_rope(1, j->Hq, dh, j->pos + b, j->cos, j->sin, j->qscale, qr, 0);
		eng_rope(1, j->Hkv, dh, j->pos + b, j->cos, j->sin, 1, qr + Q, 0);
		size_t cb = (size_t)b * KW * Smax;
		for (int c = 0; c < KW; c++) {
			j->kc[cb + (size_t)c * Smax + j->at] = qr[Q + c];
			j->vc[cb + (size_t)c * Smax + j->at] = qr[Q + KW + c];
		}
		dec_row(S, Smax, j->Hq, j->Hkv, dh, qr, j->kc + cb, j->vc + cb, j->mask + (size_t)b * Smax,
		             att + (size_t)r * Q, s);
	}
	eng_sgemm(0, 0, n, D, Q, 1, att, Q, lw + off[3], D, 0, y, D);
	add_rows(n, D, y, lw + off[4]);
	for (size_t i = 0; i < (size_t)n * D; i++) x[i] += y[i];
	eng_rmsnorm_fwd(n, D, x, lw + off[5], j->eps, h, NULL);
	eng_sgemm(0, 0, n, 2 * F, D, 1, h, D, lw + off[6], 2 * F, 0, gu, 2 * F);
	add_rows(n, 2 * F, gu, lw + off[7]);
	for (int r = 0; r < n; r++)
		eng_swiglu_fwd(F, gu + (size_t)r * 2 * F, gu + (size_t)r * 2 * F + F, act + (size_t)r * F);
	eng_sgemm(0, 0, n, D, F, 1, act, F, lw + off[8], D, 0, y, D);
	add_rows(n, D, y, lw + off[9]);
	for (size_t i = 0; i < (size_t)n * D; i++) x[i] += y[i];
}

void eng_decode_layer(int B, int D, int Hq, int Hkv, int dh, int F, int at, int Smax, float eps, float qscale,
                      const float *lw, const int32_t *pos, const float *cos, const float *sin, const float *kmask,
                      float *x, float *kc, float *vc) {
	struct dec_job j = {B, D, Hq, Hkv, dh, F, at, Smax, eps, qscale, lw, cos, sin, kmask, pos, x, kc, vc};
	eng_parallel((B + DEC_ROWS - 1) / DEC_ROWS, dec_task, &j);
}
