/* sgemm.c: C = alpha*op(A)*op(B) + beta*C, row-major, all transpositions.
 *
 * Goto/BLIS structure: op(A) and op(B) are packed per cache block (KC deep,
 * MC rows, nc columns) into MR-row and NR-column panels, and a register-blocked
 * micro-kernel computes each MRxNR tile. Micro-kernels exist for AVX-512
 * (8x32), AVX2+FMA (6x16) and portable C (4x16); the ISA is chosen at run time
 * from cpuid (function target attributes, not -march). Work is split into
 * output tiles only, each reduced over K in a fixed order by one thread, so
 * results are bit-identical run to run and independent of the thread count. */
#include "engine.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define KC 320
#define MC 144 /* a multiple of every MR */
#define NCMAX 2048

/* Row r of op(A) at step k is a[r*ars + k*aks] (packed: ars 1, aks MR; read in
 * place: the matrix's strides); b advances ldb floats per k (nr when packed,
 * the row stride of B when read in place). */
typedef void (*ukern_fn)(int kc, const float *a, int ars, int aks, const float *b, int ldb, float *c, int ldc,
                         float alpha, float beta);

/* ---- portable micro-kernel (4x16) ---- */
static void kern_c(int kc, const float *a, int ars, int aks, const float *b, int ldb, float *c, int ldc, float alpha,
                   float beta) {
	float acc[4][16];
	memset(acc, 0, sizeof acc);
	for (int k = 0; k < kc; k++) {
		for (int i = 0; i < 4; i++) {
			float ai = a[(size_t)i * ars + (size_t)k * aks];
			for (int j = 0; j < 16; j++) acc[i][j] += ai * b[(size_t)k * ldb + j];
		}
	}
	for (int i = 0; i < 4; i++)
		for (int j = 0; j < 16; j++) {
			float v = alpha * acc[i][j];
			c[i * ldc + j] = beta == 0 ? v : beta * c[i * ldc + j] + v;
		}
}

/* ---- AVX2 + FMA micro-kernel (6x16) ---- */
__attribute__((target("avx2,fma"))) static void kern_avx2(int kc, const float *a, int ars, int aks, const float *b,
                                                            int ldb, float *c, int ldc, float alpha, float beta) {
	const float *a0 = a, *a1 = a + ars, *a2 = a + 2 * ars, *a3 = a + 3 * ars, *a4 = a + 4 * ars, *a5 = a + 5 * ars;
	__m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
	__m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
	for (int k = 0; k < kc; k++) {
		__m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), t;
		size_t o = (size_t)k * aks;
		t = _mm256_broadcast_ss(a0 + o); c00 = _mm256_fmadd_ps(t, b0, c00); c01 = _mm256_fmadd_ps(t, b1, c01);
		t = _mm256_broadcast_ss(a1 + o); c10 = _mm256_fmadd_ps(t, b0, c10); c11 = _mm256_fmadd_ps(t, b1, c11);
		t = _mm256_broadcast_ss(a2 + o); c20 = _mm256_fmadd_ps(t, b0, c20); c21 = _mm256_fmadd_ps(t, b1, c21);
		t = _mm256_broadcast_ss(a3 + o); c30 = _mm256_fmadd_ps(t, b0, c30); c31 = _mm256_fmadd_ps(t, b1, c31);
		t = _mm256_broadcast_ss(a4 + o); c40 = _mm256_fmadd_ps(t, b0, c40); c41 = _mm256_fmadd_ps(t, b1, c41);
		t = _mm256_broadcast_ss(a5 + o); c50 = _mm256_fmadd_ps(t, b0, c50); c51 = _mm256_fmadd_ps(t, b1, c51);
		b += ldb;
	}
	__m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#define ST2(r, x0, x1)                                                                              \
	do {                                                                                            \
		float *cr = c + (r) * ldc;                                                                  \
		__m256 y0 = _mm256_mul_ps(va, x0), y1 = _mm256_mul_ps(va, x1);                               \
		if (beta != 0) {                                                                            \
			y0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), y0);                                      \
			y1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), y1);                                  \
		}                                                                                           \
		_mm256_storeu_ps(cr, y0);                                                                   \
		_mm256_storeu_ps(cr + 8, y1);                                                               \
	} while (0)
	ST2(0, c00, c01); ST2(1, c10, c11); ST2(2, c20, c21); ST2(3, c30, c31); ST2(4, c40, c41); ST2(5, c50, c51);
#undef ST2
}

/* ---- AVX-512 micro-kernel (8x32) ---- */
__attribute__((target("avx512f,fma"))) static void kern_avx512(int kc, const float *a, int ars, int aks,
                                                                 const float *b, int ldb, float *c, int ldc,
                                                                 float alpha, float beta) {
	const float *a0 = a, *a1 = a + ars, *a2 = a + 2 * ars, *a3 = a + 3 * ars, *a4 = a + 4 * ars, *a5 = a + 5 * ars,
	            *a6 = a + 6 * ars, *a7 = a + 7 * ars;
	__m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
	__m512 c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
	for (int k = 0; k < kc; k++) {
		__m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), t;
		size_t o = (size_t)k * aks;
		t = _mm512_set1_ps(a0[o]); c00 = _mm512_fmadd_ps(t, b0, c00); c01 = _mm512_fmadd_ps(t, b1, c01);
		t = _mm512_set1_ps(a1[o]); c10 = _mm512_fmadd_ps(t, b0, c10); c11 = _mm512_fmadd_ps(t, b1, c11);
		t = _mm512_set1_ps(a2[o]); c20 = _mm512_fmadd_ps(t, b0, c20); c21 = _mm512_fmadd_ps(t, b1, c21);
		t = _mm512_set1_ps(a3[o]); c30 = _mm512_fmadd_ps(t, b0, c30); c31 = _mm512_fmadd_ps(t, b1, c31);
		t = _mm512_set1_ps(a4[o]); c40 = _mm512_fmadd_ps(t, b0, c40); c41 = _mm512_fmadd_ps(t, b1, c41);
		t = _mm512_set1_ps(a5[o]); c50 = _mm512_fmadd_ps(t, b0, c50); c51 = _mm512_fmadd_ps(t, b1, c51);
		t = _mm512_set1_ps(a6[o]); c60 = _mm512_fmadd_ps(t, b0, c60); c61 = _mm512_fmadd_ps(t, b1, c61);
		t = _mm512_set1_ps(a7[o]); c70 = _mm512_fmadd_ps(t, b0, c70); c71 = _mm512_fmadd_ps(t, b1, c71);
		b += ldb;
	}
	__m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#define ST5(r, x0, x1)                                                                              \
	do {                                                                                            \
		float *cr = c + (r) * ldc;                                                                  \
		__m512 y0 = _mm512_mul_ps(va, x0), y1 = _mm512_mul_ps(va, x1);                               \
		if (beta != 0) {                                                                            \
			y0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr), y0);                                      \
			y1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(cr + 16), y1);                                 \
		}                                                                                           \
		_mm512_storeu_ps(cr, y0);                                                                   \
		_mm512_storeu_ps(cr + 16, y1);                                                              \
	} while (0)
	ST5(0, c00, c01); ST5(1, c10, c11); ST5(2, c20, c21); ST5(3, c30, c31);
	ST5(4, c40, c41); ST5(5, c50, c51); ST5(6, c60, c61); ST5(7, c70, c71);
#undef ST5
}

/* ---- ISA selection ---- */
static int isa_have = -1, isa_cur = -1;

static void isa_init(void) {
	if (isa_have >= 0) return;
	__builtin_cpu_init();
	int h = 0;
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) h = 1;
	if (h == 1 && __builtin_cpu_supports("avx512f")) h = 2;
	isa_have = h;
	const char *e = getenv("SAFERLHF_NATIVE_ISA");
	int want = h;
	if (e) {
		if (!strcmp(e, "c")) want = 0;
		else if (!strcmp(e, "avx2")) want = 1;
		else if (!strcmp(e, "avx512")) want = 2;
	}
	isa_cur = want < h ? want : h;
}

int eng_isa(void) {
	isa_init();
	return isa_cur;
}

int eng_set_isa(int isa) {
	isa_init();
	if (isa < 0 || isa > isa_have) isa = isa_have;
	isa_cur = isa;
	return isa_cur;
}

/* ---- packing ---- */
/* ap[p][k][r] = opA(i0+p*mr+r, k0+k), zero-padded to whole panels. */
static void pack_a(int transA, const float *A, int lda, int i0, int mc, int k0, int kc, int mr, float *ap) {
	for (int p = 0; p < mc; p += mr) {
		int rows = mc - p < mr ? mc - p : mr;
		float *dst = ap + (size_t)p * kc;
		if (!transA) {
			for (int r = 0; r < rows; r++) {
				const float *src = A + (size_t)(i0 + p + r) * lda + k0;
				for (int k = 0; k < kc; k++) dst[k * mr + r] = src[k];
			}
		} else {
			for (int k = 0; k < kc; k++) {
				const float *src = A + (size_t)(k0 + k) * lda + i0 + p;
				for (int r = 0; r < rows; r++) dst[k * mr + r] = src[r];
			}
		}
		if (rows < mr)
			for (int k = 0; k < kc; k++)
				for (int r = rows; r < mr; r++) dst[k * mr + r] = 0;
	}
}

/* bp[q][k][c] = opB(k0+k, j0+q*nr+c), zero-padded. */
static void pack_b(int transB, const float *B, int ldb, int k0, int kc, int j0, int nc, int nr, float *bp) {
	for (int q = 0; q < nc; q += nr) {
		int cols = nc - q < nr ? nc - q : nr;
		float *dst = bp + (size_t)q * kc;
		if (!transB) {
			for (int k = 0; k < kc; k++) {
				const float *src = B + (size_t)(k0 + k) * ldb + j0 + q;
				memcpy(dst + k * nr, src, cols * sizeof(float));
				for (int c = cols; c < nr; c++) dst[k * nr + c] = 0;
			}
		} else {
			for (int c = 0; c < cols; c++) {
				const float *src = B + (size_t)(j0 + q + c) * ldb + k0;
				for (int k = 0; k < kc; k++) dst[k * nr + c] = src[k];
			}
			for (int k = 0; k < kc; k++)
				for (int c = cols; c < nr; c++) dst[k * nr + c] = 0;
		}
	}
}

float *eng_scratch(float **buf, size_t *cap, size_t n) {
	if (n > *cap) {
		free(*buf);
		*buf = aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
		*cap = *buf ? n : 0;
	}
	return *buf;
}

static __thread float *tl_buf;
static __thread size_t tl_cap;

struct gemm_job {
	int transA, transB, M, N, K, lda, ldb, ldc, mr, nr, nc, mtiles, mper, kc;
	float alpha, beta;
	const float *A, *B;
	float *C;
	ukern_fn kern;
};

/* A task computes the output tiles of M tiles [mt0, mt0+mper) in one column
 * block; each B block it packs serves all of them. */
static void gemm_tile(void *arg, int task) {
	struct gemm_job *j = arg;
	int mr = j->mr, nr = j->nr;
	int mgroups = (j->mtiles + j->mper - 1) / j->mper;
	int mt0 = (task % mgroups) * j->mper, j0 = (task / mgroups) * j->nc;
	int mt1 = mt0 + j->mper < j->mtiles ? mt0 + j->mper : j->mtiles;
	int nc = j->N - j0 < j->nc ? j->N - j0 : j->nc;
	int kcmax = j->K < j->kc ? j->K : j->kc;
	int ncp = (nc + nr - 1) / nr * nr, mcp = MC;
	float *buf = eng_scratch(&tl_buf, &tl_cap, (size_t)kcmax * (ncp + mcp) + (size_t)mr * nr);
	if (!buf) abort();
	float *bp = buf, *ap = buf + (size_t)kcmax * ncp, *tmp = ap + (size_t)kcmax * mcp;
	/* Few rows: packing B would cost as much as using it; whole panels of an
	 * untransposed B are read in place and only the edge panel is packed.
	 * Few columns: likewise for A (either transposition), whose packed panels
	 * would serve only ncp/nr micro-kernel calls. */
	int bdirect = !j->transB && j->M <= 4 * mr, adirect = ncp <= 4 * nr && (!j->transA || j->lda <= 256);
	for (int k0 = 0; k0 < j->K; k0 += j->kc) {
		int kc = j->K - k0 < j->kc ? j->K - k0 : j->kc;
		float beta = k0 == 0 ? j->beta : 1.0f;
		if (!bdirect)
			pack_b(j->transB, j->B, j->ldb, k0, kc, j0, nc, nr, bp);
		else if (nc % nr)
			pack_b(0, j->B, j->ldb, k0, kc, j0 + nc / nr * nr, nc % nr, nr, bp + (size_t)(nc / nr * nr) * kc);
		for (int mt = mt0; mt < mt1; mt++) {
			int i0 = mt * MC;
			int mc = j->M - i0 < MC ? j->M - i0 : MC, full = mc / mr * mr;
			if (!adirect)
				pack_a(j->transA, j->A, j->lda, i0, mc, k0, kc, mr, ap);
			else if (full < mc)
				pack_a(j->transA, j->A, j->lda, i0 + full, mc - full, k0, kc, mr, ap + (size_t)full * kc);
			for (int q = 0; q < nc; q += nr) {
				int cols = nc - q < nr ? nc - q : nr;
				for (int p = 0; p < mc; p += mr) {
					int rows = mc - p < mr ? mc - p : mr;
					float *c = j->C + (size_t)(i0 + p) * j->ldc + j0 + q;
					const float *a = ap + (size_t)p * kc, *b = bp + (size_t)q * kc;
					int ars = 1, aks = mr, ldb = nr;
					if (adirect && rows == mr) {
						if (j->transA) {
							a = j->A + (size_t)k0 * j->lda + i0 + p;
							aks = j->lda;
						} else {
							a = j->A + (size_t)(i0 + p) * j->lda + k0;
							ars = j->lda;
							aks = 1;
						}
					}
					if (bdirect && cols == nr) {
						b = j->B + (size_t)k0 * j->ldb + j0 + q;
						ldb = j->ldb;
					}
					if (rows == mr && cols == nr) {
						j->kern(kc, a, ars, aks, b, ldb, c, j->ldc, j->alpha, beta);
					} else {
						j->kern(kc, a, ars, aks, b, ldb, tmp, nr, 1.0f, 0.0f);
						for (int r = 0; r < rows; r++)
							for (int cc = 0; cc < cols; cc++) {
								float v = j->alpha * tmp[r * nr + cc];
								c[(size_t)r * j->ldc + cc] =
								    beta == 0 ? v : beta * c[(size_t)r * j->ldc + cc] + v;
							}
					}
				}
			}
		}
	}
}

/* Small-M path (decode, matrix-vector): each output is one dot product or
 * axpy chain in fixed order, no packing. */
struct gemv_job {
	int transA, transB, M, N, K, lda, ldb, ldc, chunk;
	float alpha, beta;
	const float *A, *B;
	float *C;
};

__attribute__((target_clones("avx512f", "avx2", "default"))) static void gemv_cols(struct gemv_job *j, int n0,
                                                                                     int n1) {
	for (int i = 0; i < j->M; i++) {
		float *c = j->C + (size_t)i * j->ldc;
		if (j->transB) {
			for (int n = n0; n < n1; n++) {
				const float *brow = j->B + (size_t)n * j->ldb;
				float acc[16] = {0};
				int k = 0;
				if (!j->transA) {
					const float *arow = j->A + (size_t)i * j->lda;
					for (; k + 16 <= j->K; k += 16)
						for (int l = 0; l < 16; l++) acc[l] += arow[k + l] * brow[k + l];
					for (; k < j->K; k++) acc[k & 15] += arow[k] * brow[k];
				} else {
					for (; k < j->K; k++) acc[k & 15] += j->A[(size_t)k * j->lda + i] * brow[k];
				}
				float s = 0;
				for (int l = 0; l < 16; l++) s += acc[l];
				float v = j->alpha * s;
				c[n] = j->beta == 0 ? v : j->beta * c[n] + v;
			}
		} else {
			float acc[256];
			for (int n = n0; n < n1; n += 256) {
				int w = n1 - n < 256 ? n1 - n : 256;
				for (int l = 0; l < w; l++) acc[l] = 0;
				for (int k = 0; k < j->K; k++) {
					float a = j->transA ? j->A[(size_t)k * j->lda + i] : j->A[(size_t)i * j->lda + k];
					const float *brow = j->B + (size_t)k * j->ldb + n;
					for (int l = 0; l < w; l++) acc[l] += a * brow[l];
				}
				for (int l = 0; l < w; l++) {
					float v = j->alpha * acc[l];
					c[n + l] = j->beta == 0 ? v : j->beta * c[n + l] + v;
				}
			}
		}
	}
}

static inline __attribute__((target("avx512f"))) __mmask16 tailm(int n) {
	return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* The untransposed case with AVX-512 (decode's matmuls on pre-transposed
 * weights): 64 columns at a time in four accumulators, each output one FMA
 * chain over k, as in gemv_cols. */
__attribute__((target("avx512f,fma"))) static void gemv_nn_avx512(struct gemv_job *j, int n0, int n1) {
	__m512 va = _mm512_set1_ps(j->alpha), vb = _mm512_set1_ps(j->beta);
	for (int i = 0; i < j->M; i++) {
		const float *arow = j->A + (size_t)i * j->lda;
		float *c = j->C + (size_t)i * j->ldc;
		for (int n = n0; n < n1; n += 64) {
			__mmask16 m[4] = {tailm(n1 - n), tailm(n1 - n - 16), tailm(n1 - n - 32), tailm(n1 - n - 48)};
			__m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
			const float *b = j->B + n;
			for (int k = 0; k < j->K; k++, b += j->ldb) {
				__m512 a = _mm512_set1_ps(arow[k]);
				c0 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[0], b), c0);
				c1 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[1], b + 16), c1);
				c2 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[2], b + 32), c2);
				c3 = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m[3], b + 48), c3);
			}
			__m512 acc[4] = {c0, c1, c2, c3};
			for (int q = 0; q < 4 && m[q]; q++) {
				__m512 y = _mm512_mul_ps(va, acc[q]);
				if (j->beta != 0) y = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[q], c + n + 16 * q), y);
				_mm512_mask_storeu_ps(c + n + 16 * q, m[q], y);
			}
		}
	}
}

static void gemv_task(void *arg, int task) {
	struct gemv_job *j = arg;
	int n0 = task * j->chunk, n1 = n0 + j->chunk < j->N ? n0 + j->chunk : j->N;
	if (!j->transA && !j->transB && eng_isa() == 2)
		gemv_nn_avx512(j, n0, n1);
	else
		gemv_cols(j, n0, n1);
}

void eng_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
               int ldb, float beta, float *C, int ldc) {
	if (M <= 0 || N <= 0) return;
	if (K <= 0 || alpha == 0) {
		for (int i = 0; i < M; i++)
			for (int n = 0; n < N; n++) C[(size_t)i * ldc + n] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + n];
		return;
	}
	int nt = eng_threads();
	double flops = 2.0 * M * N * K;
	if (M <= 4) {
		/* chunks are a multiple of 256 so the axpy path's inner blocking is thread-count independent */
		struct gemv_job j = {transA, transB, M, N, K, lda, ldb, ldc, 0, alpha, beta, A, B, C};
		int tasks = flops < 2e5 ? 1 : nt * 2;
		int chunk = (N + tasks - 1) / tasks;
		chunk = (chunk + 255) / 256 * 256;
		j.chunk = chunk;
		eng_parallel((N + chunk - 1) / chunk, gemv_task, &j);
		return;
	}
	struct gemm_job j = {transA, transB, M, N, K, lda, ldb, ldc, 0, 0, 0, 0, 1, 0, alpha, beta, A, B, C, 0};
	/* K in equal blocks of at most KC (no thin last block) */
	int nkb = (K + KC - 1) / KC;
	j.kc = (K + nkb - 1) / nkb;
	switch (eng_isa()) {
	case 2: j.mr = 8; j.nr = 32; j.kern = kern_avx512; break;
	case 1: j.mr = 6; j.nr = 16; j.kern = kern_avx2; break;
	default: j.mr = 4; j.nr = 16; j.kern = kern_c; break;
	}
	j.mtiles = (M + MC - 1) / MC;
	int ntiles = (N + NCMAX - 1) / NCMAX;
	int want = flops < 4e6 ? 1 : 4 * nt;
	if (ntiles >= want) {
		/* enough column blocks: each task sweeps every row tile, packing B once */
		j.mper = j.mtiles;
	} else if (j.mtiles * ntiles < want) {
		int maxn = (N + j.nr - 1) / j.nr;
		ntiles = (want + j.mtiles - 1) / j.mtiles;
		if (ntiles > maxn) ntiles = maxn;
	} else {
		/* enough row tiles: group them so each packed B block serves several */
		int groups = (want + ntiles - 1) / ntiles;
		j.mper = (j.mtiles + groups - 1) / groups;
	}
	int nc = (N + ntiles - 1) / ntiles;
	j.nc = (nc + j.nr - 1) / j.nr * j.nr;
	ntiles = (N + j.nc - 1) / j.nc;
	eng_parallel(((j.mtiles + j.mper - 1) / j.mper) * ntiles, gemm_tile, &j);
}
