/* attn.c: causal GQA attention with padding masks, FlashAttention-style:
 * scores are computed one key block at a time with an online softmax, so no
 * more than a block of scores per query exists; the backward recomputes them
 * from the saved log-sum-exp.
 *
 * Masked queries follow the GoMLX graph (train/model), whose bias is a finite
 * -1e9 per violated condition (future key, pad key) added in float32: a query
 * whose causal prefix holds no real key (a left-pad query) sees every key with
 * exactly one violation (its pad prefix and the real keys after it) at the
 * same rounded score, so it attends uniformly to them; its score gradient
 * still flows through q·k as in the graph. */
#include "engine.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

float eng_fexp(float x);
#define KB 64

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

/* any[i] = 1 when some key j <= i of row b is real */
static void prefix_any(const float *mask, int T, unsigned char *any) {
	int a = 0;
	for (int i = 0; i < T; i++) {
		a |= mask[i] != 0;
		any[i] = (unsigned char)a;
	}
}

CLONES static void attn_fwd_head(struct attn_job *j, int b, int h) {
	int T = j->T, dh = j->dh, G = j->Hq / j->Hkv, kvh = h / G;
	int qw = j->Hq * dh, kw = j->Hkv * dh;
	const float *mask = j->mask + (size_t)b * T;
	unsigned char any[T];
	prefix_any(mask, T, any);
	float s[KB], acc[dh];
	for (int i = 0; i < T; i++) {
		const float *q = j->q + (size_t)(b * T + i) * qw + h * dh;
		float m = -INFINITY, l = 0;
		for (int d = 0; d < dh; d++) acc[d] = 0;
		int uni = !any[i], last = uni ? T - 1 : i;
		for (int j0 = 0; j0 <= last; j0 += KB) {
			int j1 = j0 + KB - 1 < last ? j0 + KB - 1 : last;
			float bm = -INFINITY;
			for (int jj = j0; jj <= j1; jj++) {
				if (uni ? (jj > i && mask[jj] == 0) : mask[jj] == 0) {
					s[jj - j0] = -INFINITY;
					continue;
				}
				float sc = uni ? 0.0f : dot(q, j->k + (size_t)(b * T + jj) * kw + kvh * dh, dh);
				s[jj - j0] = sc;
				bm = sc > bm ? sc : bm;
			}
			if (bm == -INFINITY) continue;
			float mn = bm > m ? bm : m;
			float corr = m == -INFINITY ? 0.0f : eng_fexp(m - mn);
			l *= corr;
			for (int d = 0; d < dh; d++) acc[d] *= corr;
			for (int jj = j0; jj <= j1; jj++) {
				if (s[jj - j0] == -INFINITY) continue;
				float p = eng_fexp(s[jj - j0] - mn);
				l += p;
				const float *vv = j->v + (size_t)(b * T + jj) * kw + kvh * dh;
				for (int d = 0; d < dh; d++) acc[d] += p * vv[d];
			}
			m = mn;
		}
		float *o = j->o + (size_t)(b * T + i) * qw + h * dh;
		float inv = 1.0f / l;
		for (int d = 0; d < dh; d++) o[d] = acc[d] * inv;
		j->l[((size_t)b * j->Hq + h) * T + i] = m + logf(l);
	}
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

/* One task per (batch row, kv head): it owns dk/dv of that head and dq of its query group. */
CLONES static void attn_bwd_kv(struct attn_job *j, int b, int kvh) {
	int T = j->T, dh = j->dh, G = j->Hq / j->Hkv;
	int qw = j->Hq * dh, kw = j->Hkv * dh;
	const float *mask = j->mask + (size_t)b * T;
	unsigned char any[T];
	prefix_any(mask, T, any);
	for (int t = 0; t < T; t++) {
		memset(j->dk + (size_t)(b * T + t) * kw + kvh * dh, 0, dh * sizeof(float));
		memset(j->dv + (size_t)(b * T + t) * kw + kvh * dh, 0, dh * sizeof(float));
	}
	for (int g = 0; g < G; g++) {
		int h = kvh * G + g;
		for (int i = 0; i < T; i++) {
			size_t qo = (size_t)(b * T + i) * qw + h * dh;
			const float *q = j->q + qo, *o = j->out + qo, *dout = j->dout + qo;
			float *dq = j->dq + qo;
			float lse = j->lse[((size_t)b * j->Hq + h) * T + i];
			float D = dot(dout, o, dh);
			int uni = !any[i], last = uni ? T - 1 : i;
			for (int d = 0; d < dh; d++) dq[d] = 0;
			for (int jj = 0; jj <= last; jj++) {
				if (uni ? (jj > i && mask[jj] == 0) : mask[jj] == 0) continue;
				size_t ko = (size_t)(b * T + jj) * kw + kvh * dh;
				const float *k = j->k + ko, *v = j->v + ko;
				float sc = uni ? 0.0f : dot(q, k, dh);
				float p = eng_fexp(sc - lse);
				float dp = dot(dout, v, dh);
				float ds = p * (dp - D);
				float *dk = j->dk + ko, *dv = j->dv + ko;
				for (int d = 0; d < dh; d++) {
					dq[d] += ds * k[d];
					dk[d] += ds * q[d];
					dv[d] += p * dout[d];
				}
			}
		}
	}
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

/* ---- decode: one query per row against a KV cache ---- */
CLONES static void attn_dec_head(struct attn_job *j, int b, int h) {
	int S = j->S, dh = j->dh, G = j->Hq / j->Hkv, kvh = h / G;
	int qw = j->Hq * dh, kw = j->Hkv * dh;
	const float *mask = j->mask + (size_t)b * j->Smax;
	const float *q = j->q + (size_t)b * qw + h * dh;
	int uni = 1;
	for (int jj = 0; jj < S; jj++)
		if (mask[jj] != 0) {
			uni = 0;
			break;
		}
	float s[KB], acc[dh], m = -INFINITY, l = 0;
	for (int d = 0; d < dh; d++) acc[d] = 0;
	for (int j0 = 0; j0 < S; j0 += KB) {
		int j1 = j0 + KB < S ? j0 + KB : S;
		float bm = -INFINITY;
		for (int jj = j0; jj < j1; jj++) {
			if (!uni && mask[jj] == 0) {
				s[jj - j0] = -INFINITY;
				continue;
			}
			float sc = uni ? 0.0f : dot(q, j->k + ((size_t)b * j->Smax + jj) * kw + kvh * dh, dh);
			s[jj - j0] = sc;
			bm = sc > bm ? sc : bm;
		}
		if (bm == -INFINITY) continue;
		float mn = bm > m ? bm : m;
		float corr = m == -INFINITY ? 0.0f : eng_fexp(m - mn);
		l *= corr;
		for (int d = 0; d < dh; d++) acc[d] *= corr;
		for (int jj = j0; jj < j1; jj++) {
			if (s[jj - j0] == -INFINITY) continue;
			float p = eng_fexp(s[jj - j0] - mn);
			l += p;
			const float *vv = j->v + ((size_t)b * j->Smax + jj) * kw + kvh * dh;
			for (int d = 0; d < dh; d++) acc[d] += p * vv[d];
		}
		m = mn;
	}
	float *o = j->o + (size_t)b * qw + h * dh;
	for (int d = 0; d < dh; d++) o[d] = acc[d] / l;
}

static void attn_dec_task(void *arg, int t) {
	struct attn_job *j = arg;
	attn_dec_head(j, t / j->Hq, t % j->Hq);
}

void eng_attn_decode(int B, int S, int Smax, int Hq, int Hkv, int dh, const float *q, const float *kc, const float *vc,
                     const float *kmask, float *out) {
	struct attn_job j = {.B = B, .S = S, .Smax = Smax, .Hq = Hq, .Hkv = Hkv, .dh = dh, .q = q, .k = kc, .v = vc,
	                     .mask = kmask, .o = out};
	int tasks = B * Hq;
	if ((long)B * Hq * S * dh < 32768) {
		for (int t = 0; t < tasks; t++) attn_dec_task(&j, t);
		return;
	}
	eng_parallel(tasks, attn_dec_task, &j);
}
