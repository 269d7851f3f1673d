/* ops.c: fused row-wise ops (RMSNorm, SwiGLU, RoPE, softmax, log-softmax-gather,
 * AdamW), threaded over rows. Loops are written to auto-vectorise and compiled
 * for AVX-512, AVX2 and baseline x86-64 (target_clones, chosen at load time).
 * Cross-row reductions (norm-weight gradients, sums of squares) use fixed
 * chunks summed in order, so results never depend on the thread count. */
#include "engine.h"
#include "fexp.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* rows per task for a row op of width d: about 64K elements per task */
static int row_tasks(int n, int d, int *per) {
	long work = (long)n * d;
	int tasks = (int)(work / 65536);
	int nt = eng_threads() * 4;
	if (tasks > nt) tasks = nt;
	if (tasks > n) tasks = n;
	if (tasks < 1) tasks = 1;
	*per = (n + tasks - 1) / tasks;
	return (n + *per - 1) / *per;
}

/* ---- RMSNorm ---- */
struct rms_job {
	int n, d, per, accumulate;
	const float *x, *w, *rstd, *dy;
	float *y, *rs, *dx, *part;
	float eps;
};

CLONES static void rms_fwd_rows(struct rms_job *j, int r0, int r1) {
	int d = j->d;
	for (int r = r0; r < r1; r++) {
		const float *x = j->x + (size_t)r * d;
		float *y = j->y + (size_t)r * d;
		float ss = 0;
		for (int i = 0; i < d; i++) ss += x[i] * x[i];
		float rs = 1.0f / sqrtf(ss / (float)d + j->eps);
		if (j->rs) j->rs[r] = rs;
		if (j->w)
			for (int i = 0; i < d; i++) y[i] = x[i] * rs * j->w[i];
		else
			for (int i = 0; i < d; i++) y[i] = x[i] * rs;
	}
}

static void rms_fwd_task(void *arg, int t) {
	struct rms_job *j = arg;
	int r0 = t * j->per, r1 = r0 + j->per < j->n ? r0 + j->per : j->n;
	rms_fwd_rows(j, r0, r1);
}

void eng_rmsnorm_fwd(int n, int d, const float *x, const float *w, float eps, float *y, float *rstd) {
	struct rms_job j = {.n = n, .d = d, .x = x, .w = w, .y = y, .rs = rstd, .eps = eps};
	int tasks = row_tasks(n, d, &j.per);
	eng_parallel(tasks, rms_fwd_task, &j);
}

#define RCHUNK 32 /* rows per partial of the weight gradient */

CLONES static void rms_bwd_rows(struct rms_job *j, int r0, int r1) {
	int d = j->d;
	for (int r = r0; r < r1; r++) {
		const float *x = j->x + (size_t)r * d, *dy = j->dy + (size_t)r * d;
		float *dx = j->dx + (size_t)r * d;
		float rs = j->rstd[r], dot = 0;
		if (j->w) {
			for (int i = 0; i < d; i++) dot += j->w[i] * dy[i] * x[i];
		} else {
			for (int i = 0; i < d; i++) dot += dy[i] * x[i];
		}
		float c = rs * rs * rs * dot / (float)d;
		if (j->w) {
			if (j->accumulate)
				for (int i = 0; i < d; i++) dx[i] += rs * j->w[i] * dy[i] - c * x[i];
			else
				for (int i = 0; i < d; i++) dx[i] = rs * j->w[i] * dy[i] - c * x[i];
		} else {
			if (j->accumulate)
				for (int i = 0; i < d; i++) dx[i] += rs * dy[i] - c * x[i];
			else
				for (int i = 0; i < d; i++) dx[i] = rs * dy[i] - c * x[i];
		}
		if (j->part) {
			float *p = j->part + (size_t)(r / RCHUNK) * d;
			for (int i = 0; i < d; i++) p[i] += dy[i] * x[i] * rs;
		}
	}
}

static void rms_bwd_task(void *arg, int t) {
	struct rms_job *j = arg;
	int r0 = t * j->per, r1 = r0 + j->per < j->n ? r0 + j->per : j->n;
	rms_bwd_rows(j, r0, r1);
}

void eng_rmsnorm_bwd(int n, int d, const float *x, const float *w, const float *rstd, const float *dy, float *dx,
                     int accumulate, float *dw) {
	struct rms_job j = {.n = n, .d = d, .x = x, .w = w, .rstd = rstd, .dy = dy, .dx = dx, .accumulate = accumulate};
	int nch = (n + RCHUNK - 1) / RCHUNK;
	if (dw) {
		j.part = calloc((size_t)nch * d, sizeof(float));
		if (!j.part) abort();
	}
	int tasks = row_tasks(n, d, &j.per);
	j.per = (j.per + RCHUNK - 1) / RCHUNK * RCHUNK; /* chunks never straddle tasks */
	tasks = (n + j.per - 1) / j.per;
	eng_parallel(tasks, rms_bwd_task, &j);
	if (dw) {
		for (int c = 0; c < nch; c++)
			for (int i = 0; i < d; i++) dw[i] += j.part[(size_t)c * d + i];
		free(j.part);
	}
}

/* ---- SwiGLU: out = silu(gate)*up ---- */
struct glu_job {
	int n, per;
	const float *g, *u, *dout;
	float *out, *dg, *du;
};

CLONES static void glu_fwd_range(struct glu_job *j, int a, int b) {
	for (int i = a; i < b; i++) {
		float g = j->g[i];
		float s = 1.0f / (1.0f + fexp(-g));
		j->out[i] = g * s * j->u[i];
	}
}

CLONES static void glu_bwd_range(struct glu_job *j, int a, int b) {
	for (int i = a; i < b; i++) {
		float g = j->g[i], u = j->u[i], d = j->dout[i];
		float s = 1.0f / (1.0f + fexp(-g));
		float silu = g * s;
		j->du[i] = d * silu;
		j->dg[i] = d * u * s * (1.0f + g * (1.0f - s));
	}
}

static void glu_fwd_task(void *arg, int t) {
	struct glu_job *j = arg;
	int a = t * j->per, b = a + j->per < j->n ? a + j->per : j->n;
	glu_fwd_range(j, a, b);
}

static void glu_bwd_task(void *arg, int t) {
	struct glu_job *j = arg;
	int a = t * j->per, b = a + j->per < j->n ? a + j->per : j->n;
	glu_bwd_range(j, a, b);
}

void eng_swiglu_fwd(int n, const float *gate, const float *up, float *out) {
	struct glu_job j = {.n = n, .g = gate, .u = up, .out = out};
	int tasks = row_tasks(n, 1, &j.per);
	eng_parallel(tasks, glu_fwd_task, &j);
}

void eng_swiglu_bwd(int n, const float *gate, const float *up, const float *dout, float *dgate, float *dup) {
	struct glu_job j = {.n = n, .g = gate, .u = up, .dout = dout, .dg = dgate, .du = dup};
	int tasks = row_tasks(n, 1, &j.per);
	eng_parallel(tasks, glu_bwd_task, &j);
}

/* ---- RoPE (HF rotate-half layout), in place ---- */
struct rope_job {
	int n, heads, dh, per, inverse;
	const int32_t *pos;
	const float *cos, *sin;
	float scale;
	float *x;
};

CLONES static void rope_rows(struct rope_job *j, int r0, int r1) {
	int half = j->dh / 2, w = j->heads * j->dh;
	float sc = j->scale;
	for (int r = r0; r < r1; r++) {
		const float *c = j->cos + (size_t)j->pos[r] * half, *s = j->sin + (size_t)j->pos[r] * half;
		for (int h = 0; h < j->heads; h++) {
			float *x = j->x + (size_t)r * w + h * j->dh;
			if (!j->inverse) {
				for (int i = 0; i < half; i++) {
					float a = x[i], b = x[i + half];
					x[i] = (a * c[i] - b * s[i]) * sc;
					x[i + half] = (b * c[i] + a * s[i]) * sc;
				}
			} else {
				for (int i = 0; i < half; i++) {
					float a = x[i], b = x[i + half];
					x[i] = (a * c[i] + b * s[i]) * sc;
					x[i + half] = (b * c[i] - a * s[i]) * sc;
				}
			}
		}
	}
}

static void rope_task(void *arg, int t) {
	struct rope_job *j = arg;
	int r0 = t * j->per, r1 = r0 + j->per < j->n ? r0 + j->per : j->n;
	rope_rows(j, r0, r1);
}

void eng_rope(int n, int heads, int dh, const int32_t *pos, const float *cos, const float *sin, float scale, float *x,
              int inverse) {
	struct rope_job j = {.n = n, .heads = heads, .dh = dh, .inverse = inverse, .pos = pos, .cos = cos, .sin = sin,
	                     .scale = scale, .x = x};
	int tasks = row_tasks(n, heads * dh, &j.per);
	eng_parallel(tasks, rope_task, &j);
}

/* ---- softmax and log-softmax-gather ---- */
struct lsm_job {
	int n, v, ldl, per;
	const float *logits;
	float *x;
	const int32_t *tgt;
	float *logp, *lse;
	const float *g;
};

CLONES static float row_max(const float *x, int v) {
	float m = x[0];
	for (int i = 1; i < v; i++) m = x[i] > m ? x[i] : m;
	return m;
}

CLONES static float row_sumexp(const float *x, int v, float m) {
	float acc[16] = {0};
	int i = 0;
	for (; i + 16 <= v; i += 16)
		for (int l = 0; l < 16; l++) acc[l] += fexp(x[i + l] - m);
	for (; i < v; i++) acc[i & 15] += fexp(x[i] - m);
	float s = 0;
	for (int l = 0; l < 16; l++) s += acc[l];
	return s;
}

CLONES static void softmax_rows(struct lsm_job *j, int r0, int r1) {
	for (int r = r0; r < r1; r++) {
		float *x = j->x + (size_t)r * j->v;
		float m = row_max(x, j->v);
		float s = row_sumexp(x, j->v, m), inv = 1.0f / s;
		for (int i = 0; i < j->v; i++) x[i] = fexp(x[i] - m) * inv;
	}
}

static void softmax_task(void *arg, int t) {
	struct lsm_job *j = arg;
	int r0 = t * j->per, r1 = r0 + j->per < j->n ? r0 + j->per : j->n;
	softmax_rows(j, r0, r1);
}

void eng_softmax(int n, int d, float *x) {
	struct lsm_job j = {.n = n, .v = d, .x = x};
	int tasks = row_tasks(n, d, &j.per);
	eng_parallel(tasks, softmax_task, &j);
}

static void lsm_task(void *arg, int t) {
	struct lsm_job *j = arg;
	int r0 = t * j->per, r1 = r0 + j->per < j->n ? r0 + j->per : j->n;
	for (int r = r0; r < r1; r++) {
		const float *x = j->logits + (size_t)r * j->ldl;
		float m = row_max(x, j->v);
		float l = m + logf(row_sumexp(x, j->v, m));
		if (j->lse) j->lse[r] = l;
		if (j->logp) j->logp[r] = x[j->tgt[r]] - l;
	}
}

void eng_logsoftmax_gather(int n, int v, const float *logits, int ldl, const int32_t *tgt, float *logp, float *lse) {
	struct lsm_job j = {.n = n, .v = v, .ldl = ldl, .logits = logits, .tgt = tgt, .logp = logp, .lse = lse};
	int tasks = row_tasks(n, v, &j.per);
	eng_parallel(tasks, lsm_task, &j);
}

CLONES static void lsm_bwd_rows(struct lsm_job *j, int r0, int r1) {
	for (int r = r0; r < r1; r++) {
		float *x = j->x + (size_t)r * j->ldl;
		float g = j->g[r], l = j->lse[r];
		for (int i = 0; i < j->v; i++) x[i] = -g * fexp(x[i] - l);
		x[j->tgt[r]] += g;
	}
}

static void lsm_bwd_task(void *arg, int t) {
	struct lsm_job *j = arg;
	int r0 = t * j->per, r1 = r0 + j->per < j->n ? r0 + j->per : j->n;
	lsm_bwd_rows(j, r0, r1);
}

void eng_logsoftmax_gather_bwd(int n, int v, float *logits, int ldl, const int32_t *tgt, const float *lse,
                               const float *g) {
	struct lsm_job j = {.n = n, .v = v, .ldl = ldl, .x = logits, .tgt = tgt, .lse = (float *)lse, .g = g};
	int tasks = row_tasks(n, v, &j.per);
	eng_parallel(tasks, lsm_bwd_task, &j);
}

/* ---- AdamW (train/optim.Apply's op order) ---- */
struct adam_job {
	int64_t n, per;
	float *p, *m, *u;
	const float *g;
	float coef, b1, b2, omb1, omb2, stepSize, invBC2, eps, decay;
};

CLONES static void adam_range(struct adam_job *j, int64_t a, int64_t b) {
	for (int64_t i = a; i < b; i++) {
		float gr = j->g[i] * j->coef;
		float m = j->m[i] * j->b1 + gr * j->omb1;
		float u = j->u[i] * j->b2 + (gr * gr) * j->omb2;
		j->m[i] = m;
		j->u[i] = u;
		float p = j->p[i];
		if (j->decay != 0) p = p - p * j->decay;
		float den = sqrtf(u * j->invBC2) + j->eps;
		j->p[i] = p - (m / den) * j->stepSize;
	}
}

static void adam_task(void *arg, int t) {
	struct adam_job *j = arg;
	int64_t a = t * j->per, b = a + j->per < j->n ? a + j->per : j->n;
	adam_range(j, a, b);
}

void eng_adamw(int64_t n, float *p, const float *g, float *m, float *u, float coef, float b1, float b2, float stepSize,
               float invBC2, float eps, float decay) {
	/* (1-β) as train/optim computes it: in float64, then rounded to float32 */
	struct adam_job j = {.n = n, .p = p, .m = m, .u = u, .g = g, .coef = coef, .b1 = b1, .b2 = b2,
	                     .omb1 = (float)(1.0 - (double)b1), .omb2 = (float)(1.0 - (double)b2), .stepSize = stepSize,
	                     .invBC2 = invBC2, .eps = eps, .decay = decay};
	int64_t tasks = n / 65536;
	if (tasks > eng_threads() * 4) tasks = eng_threads() * 4;
	if (tasks < 1) tasks = 1;
	j.per = (n + tasks - 1) / tasks;
	eng_parallel((int)((n + j.per - 1) / j.per), adam_task, &j);
}

#define SQCHUNK 16384
struct sq_job {
	int64_t n;
	const float *x;
	double *part;
};

CLONES static double sumsq_range(const float *x, int64_t a, int64_t b) {
	double acc[8] = {0};
	int64_t i = a;
	for (; i + 8 <= b; i += 8)
		for (int l = 0; l < 8; l++) acc[l] += (double)x[i + l] * x[i + l];
	for (; i < b; i++) acc[0] += (double)x[i] * x[i];
	double s = 0;
	for (int l = 0; l < 8; l++) s += acc[l];
	return s;
}

static void sq_task(void *arg, int t) {
	struct sq_job *j = arg;
	int64_t a = (int64_t)t * SQCHUNK, b = a + SQCHUNK < j->n ? a + SQCHUNK : j->n;
	j->part[t] = sumsq_range(j->x, a, b);
}

double eng_sumsq(int64_t n, const float *x) {
	if (n <= 0) return 0;
	int nch = (int)((n + SQCHUNK - 1) / SQCHUNK);
	struct sq_job j = {n, x, calloc(nch, sizeof(double))};
	if (!j.part) abort();
	eng_parallel(nch, sq_task, &j);
	double s = 0;
	for (int c = 0; c < nch; c++) s += j.part[c];
	free(j.part);
	return s;
}
