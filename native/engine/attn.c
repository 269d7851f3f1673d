/* attn.c: causal GQA attention with padding masks, FlashAttention-style:
 * scores are computed one key block (KB keys) at a time with an online
 * softmax, so no more than a block of scores per query exists; the backward
 * recomputes them from the saved log-sum-exp. Each task first transposes its
 * head's keys and values to [dh][T], so every inner loop runs over keys,
 * contiguous and vectorisable.
 *
 * Masked queries follow the GoMLX graph (train/model), whose bias is a finite
 * -1e9 per violated condition (future key, pad key) added in float32: a query
 * whose causal prefix holds no real key (a left-pad query) attends to the keys
 * with exactly one violation (its pad prefix and the real keys after it) with
 * scores fl32(q·k − 1e9), which tie within ±32 and otherwise move in steps of
 * 64; its score gradient flows through q·k as in the graph. */
#include "engine.h"
#include "fexp.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define KB 128

struct attn_job {
	int B, T, Hq, Hkv, dh, S, Smax;
	const float *q, *k, *v, *mask, *out, *lse, *dout;
	float *o, *l, *dq, *dk, *dv;
};

static inline float dot(const float *a, const float *b, int n) {
	float s = 0;
	for (int i = 0; i < n; i++) s += a[i] * b[i];
	return s;
}

/* Reductions in 16 fixed lanes: vectorisable without reassociation, and
 * deterministic. */
static inline float lanes_sum(const float *acc) {
	float s = 0;
	for (int l = 0; l < 16; l++) s += acc[l];
	return s;
}

static inline float sum_prod(const float *a, const float *b, int n) {
	float acc[16] = {0};
	int x = 0;
	for (; x + 16 <= n; x += 16)
		for (int l = 0; l < 16; l++) acc[l] += a[x + l] * b[x + l];
	for (; x < n; x++) acc[x & 15] += a[x] * b[x];
	return lanes_sum(acc);
}

static inline float vsum(const float *a, int n) {
	float acc[16] = {0};
	int x = 0;
	for (; x + 16 <= n; x += 16)
		for (int l = 0; l < 16; l++) acc[l] += a[x + l];
	for (; x < n; x++) acc[x & 15] += a[x];
	return lanes_sum(acc);
}

static inline float vmax(const float *a, int n) {
	float acc[16];
	for (int l = 0; l < 16; l++) acc[l] = -INFINITY;
	int x = 0;
	for (; x + 16 <= n; x += 16)
		for (int l = 0; l < 16; l++) acc[l] = a[x + l] > acc[l] ? a[x + l] : acc[l];
	for (; x < n; x++) acc[x & 15] = a[x] > acc[x & 15] ? a[x] : acc[x & 15];
	float m = acc[0];
	for (int l = 1; l < 16; l++) m = acc[l] > m ? acc[l] : m;
	return m;
}

/* any[i] = 1 when some key j <= i of the row is real */
static void prefix_any(const float *mask, int T, unsigned char *any) {
	int a = 0;
	for (int i = 0; i < T; i++) {
		a |= mask[i] != 0;
		any[i] = (unsigned char)a;
	}
}

/* dst[d*T + t] = src[(row0+t)*ld + d] */
static void transpose_in(const float *src, int ld, int T, int dh, float *dst) {
	for (int t = 0; t < T; t++)
		for (int d = 0; d < dh; d++) dst[(size_t)d * T + t] = src[(size_t)t * ld + d];
}

/* The score of a key of a query with no real key in its causal prefix, as
 * the graph computes it: q·k plus a -1e9 bias, rounded to float32 (so scores
 * within ±32 tie, and larger ones move in steps of 64). */
static inline float pad_query_score(float s) { return s + -1e9f; }

/* Scores of a left-pad query i for keys [j0, j0+n) from transposed keys kt
 * [dh][T]: fl32(q·k − 1e9) for its included keys (j <= i or real), -inf else. */
static inline void pad_scores(const float *q, const float *kt, int T, int dh, int j0, int n, int i, const float *mask,
                              float *s) {
	for (int x = 0; x < n; x++) s[x] = 0;
	for (int d = 0; d < dh; d++) {
		float qd = q[d];
		const float *kr = kt + (size_t)d * T + j0;
		for (int x = 0; x < n; x++) s[x] += qd * kr[x];
	}
	for (int x = 0; x < n; x++) s[x] = (j0 + x <= i || mask[j0 + x] != 0) ? pad_query_score(s[x]) : -INFINITY;
}

/* Forward of a left-pad query: softmax over its included keys (its pad prefix
 * and the real keys after it, each with exactly one -1e9 violation), blockwise. */
static inline void fwd_pad(struct attn_job *j, const float *mask, const float *kt, const float *vt, int b, int h, int i,
                           float *o, float *s, float *acc) {
	int T = j->T, dh = j->dh, qw = j->Hq * dh;
	const float *q = j->q + (size_t)(b * T + i) * qw + h * dh;
	float m = -INFINITY, l = 0;
	for (int d = 0; d < dh; d++) acc[d] = 0;
	for (int j0 = 0; j0 < T; j0 += KB) {
		int n = T - j0 < KB ? T - j0 : KB;
		pad_scores(q, kt, T, dh, j0, n, i, mask, s);
		float bm = vmax(s, n);
		if (bm == -INFINITY) continue;
		float mn = bm > m ? bm : m;
		float corr = m == -INFINITY ? 0.0f : fexp(m - mn);
		for (int x = 0; x < n; x++) s[x] = fexp(s[x] - mn);
		l = l * corr + vsum(s, n);
		for (int d = 0; d < dh; d++) acc[d] = acc[d] * corr + sum_prod(s, vt + (size_t)d * T + j0, n);
		m = mn;
	}
	for (int d = 0; d < dh; d++) o[d] = acc[d] / l;
	j->l[((size_t)b * j->Hq + h) * T + i] = m + logf(l);
}

CLONES static void attn_fwd_head(struct attn_job *j, int b, int h) {
	int T = j->T, dh = j->dh, G = j->Hq / j->Hkv, kvh = h / G;
	int qw = j->Hq * dh, kw = j->Hkv * dh;
	const float *mask = j->mask + (size_t)b * T;
	unsigned char *any = malloc(T);
	float *kt = malloc(sizeof(float) * (size_t)2 * dh * T + sizeof(float) * T);
	if (!any || !kt) abort();
	float *vt = kt + (size_t)dh * T, *madd = vt + (size_t)dh * T;
	prefix_any(mask, T, any);
	transpose_in(j->k + (size_t)b * T * kw + kvh * dh, kw, T, dh, kt);
	transpose_in(j->v + (size_t)b * T * kw + kvh * dh, kw, T, dh, vt);
	for (int t = 0; t < T; t++) madd[t] = mask[t] != 0 ? 0.0f : -INFINITY;
	float s[KB], acc[dh];
	for (int i = 0; i < T; i++) {
		float *o = j->o + (size_t)(b * T + i) * qw + h * dh;
		if (!any[i]) {
			fwd_pad(j, mask, kt, vt, b, h, i, o, s, acc);
			continue;
		}
		const float *q = j->q + (size_t)(b * T + i) * qw + h * dh;
		float m = -INFINITY, l = 0;
		for (int d = 0; d < dh; d++) acc[d] = 0;
		for (int j0 = 0; j0 <= i; j0 += KB) {
			int n = i + 1 - j0 < KB ? i + 1 - j0 : KB;
			for (int x = 0; x < n; x++) s[x] = madd[j0 + x];
			for (int d = 0; d < dh; d++) {
				float qd = q[d];
				const float *kr = kt + (size_t)d * T + j0;
				for (int x = 0; x < n; x++) s[x] += qd * kr[x];
			}
			float bm = vmax(s, n);
			if (bm == -INFINITY) continue;
			float mn = bm > m ? bm : m;
			float corr = m == -INFINITY ? 0.0f : fexp(m - mn);
			for (int x = 0; x < n; x++) s[x] = fexp(s[x] - mn);
			l = l * corr + vsum(s, n);
			for (int d = 0; d < dh; d++) acc[d] = acc[d] * corr + sum_prod(s, vt + (size_t)d * T + j0, n);
			m = mn;
		}
		float inv = 1.0f / l;
		for (int d = 0; d < dh; d++) o[d] = acc[d] * inv;
		j->l[((size_t)b * j->Hq + h) * T + i] = m + logf(l);
	}
	free(kt);
	free(any);
}

static void attn_fwd_task(void *arg, int t) {
	struct attn_job *j = arg;
	attn_fwd_head(j, t / j->Hq, t % j->Hq);
}

void eng_attn_fwd(int B, int T, int Hq, int Hkv, int dh, const float *q, const float *k, const float *v,
                  const float *mask, float *out, float *lse) {
	struct attn_job j = {.B = B, .T = T, .Hq = Hq, .Hkv = Hkv, .dh = dh, .q = q, .k = k, .v = v, .mask = mask,
	                     .o = out, .l = lse};
	eng_parallel(B * Hq, attn_fwd_task, &j);
}

/* Backward of a left-pad query, blockwise. The saved lse ≈ -1e9 has lost
 * log(l) to rounding, so the softmax's max and sum are recomputed first. */
static inline void bwd_pad(struct attn_job *j, const float *mask, const float *kt, const float *vt, int b, int h, int i,
                           float *dkt, float *dvt, float *p, float *ds) {
	int T = j->T, dh = j->dh, qw = j->Hq * dh;
	size_t qo = (size_t)(b * T + i) * qw + h * dh;
	const float *q = j->q + qo, *o = j->out + qo, *dout = j->dout + qo;
	float *dq = j->dq + qo;
	float m = -INFINITY, l = 0;
	for (int j0 = 0; j0 < T; j0 += KB) {
		int n = T - j0 < KB ? T - j0 : KB;
		pad_scores(q, kt, T, dh, j0, n, i, mask, p);
		float bm = vmax(p, n);
		m = bm > m ? bm : m;
	}
	for (int j0 = 0; j0 < T; j0 += KB) {
		int n = T - j0 < KB ? T - j0 : KB;
		pad_scores(q, kt, T, dh, j0, n, i, mask, p);
		for (int x = 0; x < n; x++) p[x] = fexp(p[x] - m);
		l += vsum(p, n);
	}
	float inv = 1.0f / l, D = dot(dout, o, dh);
	for (int d = 0; d < dh; d++) dq[d] = 0;
	for (int j0 = 0; j0 < T; j0 += KB) {
		int n = T - j0 < KB ? T - j0 : KB;
		pad_scores(q, kt, T, dh, j0, n, i, mask, p);
		for (int x = 0; x < n; x++) {
			p[x] = fexp(p[x] - m) * inv;
			ds[x] = 0;
		}
		for (int d = 0; d < dh; d++) {
			float od = dout[d];
			const float *vr = vt + (size_t)d * T + j0;
			for (int x = 0; x < n; x++) ds[x] += od * vr[x];
		}
		for (int x = 0; x < n; x++) ds[x] = p[x] * (ds[x] - D);
		for (int d = 0; d < dh; d++) {
			float *dkr = dkt + (size_t)d * T + j0, *dvr = dvt + (size_t)d * T + j0;
			float qd = q[d], od = dout[d];
			for (int x = 0; x < n; x++) {
				dkr[x] += ds[x] * qd;
				dvr[x] += p[x] * od;
			}
			dq[d] += sum_prod(ds, kt + (size_t)d * T + j0, n);
		}
	}
}

/* One task per (batch row, kv head): it owns dk/dv of that head and dq of its query group. */
CLONES static void attn_bwd_kv(struct attn_job *j, int b, int kvh) {
	int T = j->T, dh = j->dh, G = j->Hq / j->Hkv;
	int qw = j->Hq * dh, kw = j->Hkv * dh;
	const float *mask = j->mask + (size_t)b * T;
	unsigned char *any = malloc(T);
	float *kt = malloc(sizeof(float) * ((size_t)4 * dh * T + T));
	if (!any || !kt) abort();
	float *vt = kt + (size_t)dh * T, *dkt = vt + (size_t)dh * T, *dvt = dkt + (size_t)dh * T;
	float *mk = dvt + (size_t)dh * T;
	prefix_any(mask, T, any);
	transpose_in(j->k + (size_t)b * T * kw + kvh * dh, kw, T, dh, kt);
	transpose_in(j->v + (size_t)b * T * kw + kvh * dh, kw, T, dh, vt);
	memset(dkt, 0, sizeof(float) * (size_t)2 * dh * T);
	for (int t = 0; t < T; t++) mk[t] = mask[t] != 0 ? 1.0f : 0.0f;
	float p[KB], ds[KB];
	for (int g = 0; g < G; g++) {
		int h = kvh * G + g;
		for (int i = 0; i < T; i++) {
			if (!any[i]) {
				bwd_pad(j, mask, kt, vt, b, h, i, dkt, dvt, p, ds);
				continue;
			}
			size_t qo = (size_t)(b * T + i) * qw + h * dh;
			const float *q = j->q + qo, *o = j->out + qo, *dout = j->dout + qo;
			float *dq = j->dq + qo;
			float lse = j->lse[((size_t)b * j->Hq + h) * T + i];
			float D = dot(dout, o, dh);
			for (int d = 0; d < dh; d++) dq[d] = 0;
			for (int j0 = 0; j0 <= i; j0 += KB) {
				int n = i + 1 - j0 < KB ? i + 1 - j0 : KB;
				for (int x = 0; x < n; x++) p[x] = -lse;
				for (int d = 0; d < dh; d++) {
					float qd = q[d];
					const float *kr = kt + (size_t)d * T + j0;
					for (int x = 0; x < n; x++) p[x] += qd * kr[x];
				}
				for (int x = 0; x < n; x++) {
					p[x] = fexp(p[x]) * mk[j0 + x];
					ds[x] = 0;
				}
				for (int d = 0; d < dh; d++) {
					float od = dout[d];
					const float *vr = vt + (size_t)d * T + j0;
					for (int x = 0; x < n; x++) ds[x] += od * vr[x];
				}
				for (int x = 0; x < n; x++) ds[x] = p[x] * (ds[x] - D);
				for (int d = 0; d < dh; d++) {
					float *dkr = dkt + (size_t)d * T + j0, *dvr = dvt + (size_t)d * T + j0;
					float qd = q[d], od = dout[d];
					for (int x = 0; x < n; x++) {
						dkr[x] += ds[x] * qd;
						dvr[x] += p[x] * od;
					}
					dq[d] += sum_prod(ds, kt + (size_t)d * T + j0, n);
				}
			}
		}
	}
	for (int t = 0; t < T; t++) {
		float *dk = j->dk + (size_t)(b * T + t) * kw + kvh * dh, *dv = j->dv + (size_t)(b * T + t) * kw + kvh * dh;
		for (int d = 0; d < dh; d++) {
			dk[d] = dkt[(size_t)d * T + t];
			dv[d] = dvt[(size_t)d * T + t];
		}
	}
	free(kt);
	free(any);
}

static void attn_bwd_task(void *arg, int t) {
	struct attn_job *j = arg;
	attn_bwd_kv(j, t / j->Hkv, t % j->Hkv);
}

void eng_attn_bwd(int B, int T, int Hq, int Hkv, int dh, const float *q, const float *k, const float *v,
                  const float *mask, const float *out, const float *lse, const float *dout, float *dq, float *dk,
                  float *dv) {
	struct attn_job j = {.B = B, .T = T, .Hq = Hq, .Hkv = Hkv, .dh = dh, .q = q, .k = k, .v = v, .mask = mask,
	                     .out = out, .lse = lse, .dout = dout, .dq = dq, .dk = dk, .dv = dv};
	eng_parallel(B * Hkv, attn_bwd_task, &j);
}
