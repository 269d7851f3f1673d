// Vocabulary-wide token log-probabilities, compiled at run time by NVRTC.
// For each row n of logits [N, V] (float32): logp[n] = x[n, y_n] − logsumexp_v x[n, v],
// the quantity the reference gathers from log_softmax(logits) (spec §1.2 step 3),
// without materialising the [N, V] log-softmax. One block per row reads the
// row once: each thread keeps a running (max, Σexp(x − max)) over 16-byte
// loads, rescaling when the max grows, and the block merges the pairs. All
// arithmetic is float32 with float32 accumulation: every exp argument is ≤ 0,
// so each partial sum stays in [1, V] and loses at most a few ulps.

#define LP_THREADS 256
#define NEG_INF_F __int_as_float(0xff800000)
#define NAN_F __int_as_float(0x7fc00000)
#define FULL_MASK 0xffffffffu

// NVRTC compiles without the standard headers: our own 64-bit index type.
typedef unsigned long long idx_t;

// merge folds (m2, s2) into (m, s): both are "max and sum of exp(x − max)".
__device__ __forceinline__ void lse_merge(float &m, float &s, float m2, float s2) {
    float nm = fmaxf(m, m2);
    if (nm == NEG_INF_F) return; // both empty
    s = (m == NEG_INF_F ? 0.0f : s * expf(m - nm)) + (m2 == NEG_INF_F ? 0.0f : s2 * expf(m2 - nm));
    m = nm;
}

// fold4 adds four values to the running pair with one rescale.
__device__ __forceinline__ void lse_fold4(float &m, float &s, float a, float b, float c, float d) {
    float cm = fmaxf(fmaxf(a, b), fmaxf(c, d));
    float nm = fmaxf(m, cm);
    if (nm == NEG_INF_F) return;
    s = (m == NEG_INF_F ? 0.0f : s * expf(m - nm)) + expf(a - nm) + expf(b - nm) + expf(c - nm) + expf(d - nm);
    m = nm;
}

// row_lse returns logsumexp of x[0:V] to every thread of the block.
__device__ float row_lse(const float *x, int V) {
    float m = NEG_INF_F, s = 0.0f;
    const bool vec = ((V & 3) == 0) && ((((idx_t)x) & 15) == 0);
    if (vec) {
        const float4 *x4 = (const float4 *)x;
        const int V4 = V >> 2;
#pragma unroll 4
        for (int i = threadIdx.x; i < V4; i += blockDim.x) {
            float4 v = __ldg(x4 + i);
            lse_fold4(m, s, v.x, v.y, v.z, v.w);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) lse_merge(m, s, __ldg(x + i), 1.0f);
    }
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_down_sync(FULL_MASK, m, o), s2 = __shfl_down_sync(FULL_MASK, s, o);
        lse_merge(m, s, m2, s2);
    }
    __shared__ float pm[32], ps[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) pm[warp] = m, ps[warp] = s;
    __syncthreads();
    if (warp == 0) {
        m = lane < nw ? pm[lane] : NEG_INF_F;
        s = lane < nw ? ps[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            float m2 = __shfl_down_sync(FULL_MASK, m, o), s2 = __shfl_down_sync(FULL_MASK, s, o);
            lse_merge(m, s, m2, s2);
        }
        if (lane == 0) total = m + logf(s);
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

// token_logprobs: out[n] = logits[n, tgt[n]] − logsumexp(logits[n, :]); lse[n]
// (if lse != null) keeps the logsumexp for the backward pass. A target outside
// [0, V) (e.g. the ignore index −100) gives 0.
extern "C" __global__ void __launch_bounds__(LP_THREADS)
token_logprobs(float *out, float *lse, const float *logits, const int *tgt, int V) {
    const idx_t n = blockIdx.x;
    const float *x = logits + n * (idx_t)V;
    float l = row_lse(x, V);
    if (threadIdx.x == 0) {
        int y = tgt[n];
        out[n] = (y >= 0 && y < V) ? x[y] - l : 0.0f;
        if (lse) lse[n] = l;
    }
}

// token_logprobs_grad: the gradient of Σ_n g[n]·logp[n] with respect to the
// logits, dx[n, v] = g[n]·([v = tgt[n]] − exp(x[n, v] − lse[n])), from the
// forward pass' lse. g == null means g = 1; for the mean cross-entropy pass
// g = −1/N. Rows whose target is outside [0, V) get 0.
extern "C" __global__ void __launch_bounds__(LP_THREADS)
token_logprobs_grad(float *dx, const float *logits, const int *tgt, const float *lse, const float *g, int V) {
    const idx_t n = blockIdx.x;
    const float *x = logits + n * (idx_t)V;
    float *d = dx + n * (idx_t)V;
    const int y = tgt[n];
    const bool valid = y >= 0 && y < V;
    const float gn = valid ? (g ? g[n] : 1.0f) : 0.0f, l = lse[n];
    const bool vec = ((V & 3) == 0) && ((((idx_t)x) & 15) == 0) && ((((idx_t)d) & 15) == 0);
    if (vec) {
        const float4 *x4 = (const float4 *)x;
        float4 *d4 = (float4 *)d;
#pragma unroll 4
        for (int i = threadIdx.x; i < (V >> 2); i += blockDim.x) {
            float4 v = __ldg(x4 + i), r;
            int b = i << 2;
            r.x = gn * ((b == y ? 1.0f : 0.0f) - expf(v.x - l));
            r.y = gn * ((b + 1 == y ? 1.0f : 0.0f) - expf(v.y - l));
            r.z = gn * ((b + 2 == y ? 1.0f : 0.0f) - expf(v.z - l));
            r.w = gn * ((b + 3 == y ? 1.0f : 0.0f) - expf(v.w - l));
            d4[i] = r;
        }
    } else {
        for (int i = threadIdx.x; i < V; i += blockDim.x) d[i] = gn * ((i == y ? 1.0f : 0.0f) - expf(__ldg(x + i) - l));
    }
}
