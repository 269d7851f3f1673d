/* engine.h: the C side of saferlhf's native CPU engine (package engine).
 * Every array is row-major float32 unless stated; the Go wrapper checks shapes
 * before calling, so these functions trust their arguments. */
#ifndef SAFERLHF_ENGINE_H
#define SAFERLHF_ENGINE_H
#include <stddef.h>
#include <stdint.h>

/* Thread pool. */
int eng_threads(void);
void eng_set_threads(int n);
typedef void (*eng_task_fn)(void *arg, int task);
void eng_parallel(int ntasks, eng_task_fn fn, void *arg);

/* ISA: 0 portable C, 1 AVX2+FMA, 2 AVX-512. eng_set_isa clamps to what the CPU has. */
int eng_isa(void);
int eng_set_isa(int isa);

/* CLONES compiles a function for AVX-512, AVX2 and plain x86-64, picked at load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

/* Grows the caller's (thread-local) scratch *buf of *cap floats to at least n, 64-byte aligned;
 * NULL when allocation fails. The old contents are not kept. */
float *eng_scratch(float **buf, size_t *cap, size_t n);

/* C = alpha*op(A)*op(B) + beta*C; op(A) is MxK, op(B) is KxN. */
void eng_sgemm(int transA, int transB, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* Row-wise ops over n rows of width d. */
void eng_rmsnorm_fwd(int n, int d, const float *x, const float *w, float eps, float *y, float *rstd);
void eng_rmsnorm_bwd(int n, int d, const float *x, const float *w, const float *rstd, const float *dy,
                     float *dx, int accumulate, float *dw);
void eng_swiglu_fwd(int n, const float *gate, const float *up, float *out);
void eng_swiglu_bwd(int n, const float *gate, const float *up, const float *dout, float *dgate, float *dup);
void eng_rope(int n, int heads, int dh, const int32_t *pos, const float *cos, const float *sin, float scale, float *x, int inverse);
void eng_softmax(int n, int d, float *x);
/* Fused log-softmax-gather: lse[i] = logsumexp(logits[i,:]); logp[i] = logits[i,tgt[i]] - lse[i]. */
void eng_logsoftmax_gather(int n, int v, const float *logits, int ldl, const int32_t *tgt, float *logp, float *lse);
/* dlogits[i,:] = g[i]*(onehot(tgt[i]) - exp(logits[i,:]-lse[i])), in place on logits. */
void eng_logsoftmax_gather_bwd(int n, int v, float *logits, int ldl, const int32_t *tgt, const float *lse, const float *g);

/* Attention over tokens laid out [B*T, heads*dh]: causal, keys with mask 0 excluded (a query with no
 * allowed key attends uniformly to its causal prefix). q is pre-scaled. lse is [B, Hq, T]. */
void eng_attn_fwd(int B, int T, int Hq, int Hkv, int dh, const float *q, const float *k, const float *v,
                  const float *mask, float *out, float *lse);
void eng_attn_bwd(int B, int T, int Hq, int Hkv, int dh, const float *q, const float *k, const float *v,
                  const float *mask, const float *out, const float *lse, const float *dout,
                  float *dq, float *dk, float *dv);
/* One decode step: q [B, Hq*dh] against cache positions 0..S-1 of head-major transposed caches
 * [B, Hkv, dh, Smax]; kmask [B, Smax]. */
void eng_attn_decode(int B, int S, int Smax, int Hq, int Hkv, int dh, const float *q, const float *kc,
                     const float *vc, const float *kmask, float *out);

/* A decode layer packed for eng_decode_layer: off[0..10] are the offsets of rms1 [D], wqkv [D][Q+2KW]
 * (q, k, v projections transposed side by side), bqkv, wo [Q][D], bo [D], rms2 [D], wgu [D][2F]
 * (gate then up), bgu [2F], wd [F][D], bd [D], and the total (Q = Hq*dh, KW = Hkv*dh). */
void eng_decode_layout(int D, int Hq, int Hkv, int dh, int F, int64_t *off);
/* One decode step of one layer for B rows: x [B, D] in place; the new keys and values go to cache
 * position at of kc, vc [B, Hkv, dh, Smax], attention covers positions 0..at with kmask [B, Smax];
 * pos [B] are the rotary positions (tables cos, sin [npos, dh/2]); queries are scaled by qscale. */
void eng_decode_layer(int B, int D, int Hq, int Hkv, int dh, int F, int at, int Smax, float eps, float qscale,
                      const float *lw, const int32_t *pos, const float *cos, const float *sin, const float *kmask,
                      float *x, float *kc, float *vc);

/* AdamW on one tensor: see train/optim.Apply. */
void eng_adamw(int64_t n, float *p, const float *g, float *m, float *u, float coef, float b1, float b2,
               float stepSize, float invBC2, float eps, float decay);
double eng_sumsq(int64_t n, const float *x);
#endif
