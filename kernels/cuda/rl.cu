// Fused CUDA kernels for the RL side of Safe RLHF (PPO-Lagrangian), compiled
// at run time by NVRTC. Layout: row-major float32 [B, L] per-token tensors,
// float32 0/1 masks, double accumulation wherever a sum or a recurrence runs
// over a row. Formulas: /work/shared/reference/safe-rlhf-spec.md §1.3-1.6
// (the reference functions are named beside each kernel).

#define FULL_MASK 0xffffffffu

// NVRTC compiles without the standard headers: our own 64-bit index type.
typedef unsigned long long idx_t;
#define NAN_F __int_as_float(0x7fc00000)

__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ int warp_max_int(int v) {
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(FULL_MASK, v, o));
    return v;
}

// block_sum4 sums four values over the block (blockDim.x a multiple of 32, at
// most 1024) in a fixed order, so results are deterministic; every thread gets the totals.
__device__ void block_sum4(double v[4]) {
    __shared__ double part[32][4];
    __shared__ double total[4];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int k = 0; k < 4; k++) v[k] = warp_sum(v[k]);
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < 4; k++) part[warp][k] = v[k];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int k = 0; k < 4; k++) {
            double x = lane < nwarps ? part[lane][k] : 0.0;
            x = warp_sum(x);
            if (lane == 0) total[k] = x;
        }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 4; k++) v[k] = total[k];
    __syncthreads();
}

// block_max_int returns the block-wide maximum of v to every thread.
__device__ int block_max_int(int v) {
    __shared__ int part[32];
    __shared__ int total;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max_int(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int x = lane < nwarps ? part[lane] : -1;
        x = warp_max_int(x);
        if (lane == 0) total = x;
    }
    __syncthreads();
    int r = total;
    __syncthreads();
    return r;
}

// last_one returns the last index t < n with mask[t] != 0, or -1.
__device__ int last_one(const float *mask, int n) {
    int best = -1;
    for (int t = threadIdx.x; t < n; t += blockDim.x)
        if (mask[t] != 0.0f) best = t;
    return block_max_int(best);
}

// kl_shape: PPOLagTrainer.add_kl_divergence_regularization (spec §1.3) and
// kernels.KLShapedRewardsCosts. One block per row. k_t = logp_t − ref_t;
// rewards_t = clip(−β k_t + [t=end]·reward), costs_t = clip(+β k_t + [t=end]·cost).
// costs and cost may be null (plain PPO: rewards only). end is the last index
// of mask (sequence_mask) that is non-zero (none: no end score); every position
// gets the KL term, as in the reference. rows[b] = {Σ_{t≥start} k·m,
// Σ_{t≥start} rewards·m, 0, 1} feed the logged statistics (rows_mean).
extern "C" __global__ void kl_shape(float *rewards, float *costs, double *rows, const float *logp, const float *ref,
                                    const float *mask, const float *reward, const float *cost, int L, int start,
                                    float beta, float clip) {
    const int b = blockIdx.x;
    const idx_t off = (idx_t)b * L;
    const int end = last_one(mask + off, L);
    const double rb = reward[b], cb = cost ? cost[b] : 0.0, bt = beta, cl = clip;
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int t = threadIdx.x; t < L; t += blockDim.x) {
        double k = (double)logp[off + t] - (double)ref[off + t];
        double r = -bt * k, c = bt * k;
        if (t == end) {
            r += rb;
            c += cb;
        }
        r = fmin(fmax(r, -cl), cl);
        rewards[off + t] = (float)r;
        if (costs) costs[off + t] = (float)fmin(fmax(c, -cl), cl);
        if (t >= start) {
            double m = mask[off + t];
            acc[0] += k * m;
            acc[1] += r * m;
        }
    }
    block_sum4(acc);
    if (threadIdx.x == 0) {
        rows[4 * b + 0] = acc[0];
        rows[4 * b + 1] = acc[1];
        rows[4 * b + 2] = 0.0;
        rows[4 * b + 3] = 1.0;
    }
}

// GAE tiling: a block per row sweeps the row backwards one tile at a time; in
// a tile each thread owns GAE_K consecutive positions.
#define GAE_THREADS 256
#define GAE_K 8
#define GAE_TILE (GAE_THREADS * GAE_K)
#define GAE_PAD(j) ((j) + ((j) >> 5)) // spreads a warp's strided accesses over the banks

// suffix_compose: the affine maps x -> a + p·x compose from the right:
// (a1,p1)∘(a2,p2) = (a1 + p1·a2, p1·p2).
__device__ __forceinline__ void compose(double &a, double &p, double a2, double p2) {
    a = a + p * a2;
    p = p * p2;
}

// gae: RLTrainer.get_advantages_and_returns (spec §1.4) for one or two streams
// (reward, and cost when crew != null) in one pass. V and r are masked with
// mask; for t = L−1 down to start: δ_t = r_t + γ V_{t+1} − V_t (V_L = 0),
// A_t = δ_t + γλ A_{t+1}; R_t = A_t + V_t. Outputs are [B, N], N = L − start.
// The recurrence is a linear scan: each thread sweeps its GAE_K positions, the
// block combines the per-thread affine maps with warp shuffles, then each
// thread sweeps again from its exact right neighbour value.
extern "C" __global__ void __launch_bounds__(GAE_THREADS)
gae(float *radv, float *rret, float *cadv, float *cret, const float *rew, const float *rval,
    const float *crew, const float *cval, const float *mask, int L, int start, float gamma, float lam) {
    __shared__ double sd[2][GAE_PAD(GAE_TILE)];
    __shared__ double wa[2][GAE_THREADS / 32], wp[GAE_THREADS / 32];
    __shared__ double carry[2];
    const int b = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int N = L - start, ns = crew ? 2 : 1;
    const idx_t in = (idx_t)b * L + start, out = (idx_t)b * N;
    const double g = (double)gamma * (double)lam;
    double gK = 1.0;
    for (int k = 0; k < GAE_K; k++) gK *= g;
    if (tid == 0) carry[0] = carry[1] = 0.0;
    const float *R[2] = {rew + in, crew ? crew + in : nullptr};
    const float *V[2] = {rval + in, cval ? cval + in : nullptr};
    float *A[2] = {radv + out, cadv ? cadv + out : nullptr};
    float *RT[2] = {rret + out, cret ? cret + out : nullptr};
    const float *m = mask + in;
    int ntiles = (N + GAE_TILE - 1) / GAE_TILE;
    for (int tile = ntiles - 1; tile >= 0; tile--) {
        const int t0 = tile * GAE_TILE;
        // 1. coalesced: δ into shared memory (0 past the end of the row).
        for (int j = tid; j < GAE_TILE; j += GAE_THREADS) {
            int t = t0 + j;
            for (int s = 0; s < ns; s++) {
                double d = 0.0;
                if (t < N) {
                    double mt = m[t];
                    double vnext = t + 1 < N ? (double)V[s][t + 1] * (double)m[t + 1] : 0.0;
                    d = (double)R[s][t] * mt + (double)gamma * vnext - (double)V[s][t] * mt;
                }
                sd[s][GAE_PAD(j)] = d;
            }
        }
        __syncthreads();
        // 2. each thread: its segment's map x -> a + g^K x.
        double a[2] = {0.0, 0.0}, p = gK;
        for (int s = 0; s < ns; s++)
            for (int k = GAE_K - 1; k >= 0; k--) a[s] = sd[s][GAE_PAD(tid * GAE_K + k)] + g * a[s];
        // 3. inclusive suffix scan inside the warp: lane composes with lanes above it.
        double ia[2] = {a[0], a[1]}, ip = p;
        for (int o = 1; o < 32; o <<= 1) {
            double a0 = __shfl_down_sync(FULL_MASK, ia[0], o);
            double a1 = __shfl_down_sync(FULL_MASK, ia[1], o);
            double p2 = __shfl_down_sync(FULL_MASK, ip, o);
            if (lane + o < 32) {
                ia[0] += ip * a0;
                ia[1] += ip * a1;
                ip *= p2;
            }
        }
        if (lane == 0) {
            wa[0][warp] = ia[0];
            wa[1][warp] = ia[1];
            wp[warp] = ip;
        }
        // exclusive within the warp = inclusive of lane+1 (identity for lane 31).
        double ea[2], ep;
        ea[0] = __shfl_down_sync(FULL_MASK, ia[0], 1);
        ea[1] = __shfl_down_sync(FULL_MASK, ia[1], 1);
        ep = __shfl_down_sync(FULL_MASK, ip, 1);
        if (lane == 31) ea[0] = ea[1] = 0.0, ep = 1.0;
        __syncthreads();
        // 4. compose with the warps to the right, then the carry from the next tile.
        for (int w = warp + 1; w < GAE_THREADS / 32; w++) {
            double p0 = ep;
            ea[0] += p0 * wa[0][w];
            ea[1] += p0 * wa[1][w];
            ep = p0 * wp[w];
        }
        double after[2];
        for (int s = 0; s < 2; s++) after[s] = ea[s] + ep * carry[s];
        __syncthreads(); // all read carry and wa before they change
        // 5. sweep again from the exact value to the right; A into shared memory.
        for (int s = 0; s < ns; s++) {
            double x = after[s];
            for (int k = GAE_K - 1; k >= 0; k--) {
                int j = GAE_PAD(tid * GAE_K + k);
                x = sd[s][j] + g * x;
                sd[s][j] = x;
            }
        }
        __syncthreads();
        if (tid == 0) {
            carry[0] = sd[0][0];
            carry[1] = sd[1][0];
        }
        // 6. coalesced stores: A and R = A + V·m.
        for (int j = tid; j < GAE_TILE; j += GAE_THREADS) {
            int t = t0 + j;
            if (t >= N) continue;
            for (int s = 0; s < ns; s++) {
                double adv = sd[s][GAE_PAD(j)];
                A[s][t] = (float)adv;
                RT[s][t] = (float)(adv + (double)V[s][t] * (double)m[t]);
            }
        }
        __syncthreads();
    }
}

// Actor and critic losses run in three launches: *_rows computes per-row
// masked means, rows_mean averages them over the non-empty rows (kernels
// package convention: the reference would give NaN for an empty row) and
// counts those rows, *_grad writes the gradient, which needs that count.

__device__ __forceinline__ double actor_adv(const float *radv, const float *cadv, idx_t i, double lam, double inv1l) {
    return cadv ? ((double)radv[i] - lam * (double)cadv[i]) * inv1l : (double)radv[i];
}

// actor_loss_rows: the per-row part of PPOLagTrainer.actor_loss_fn (spec §1.5)
// and, with cadv == null, of PPOTrainer.actor_loss_fn; kernels.ActorLossPPOLag.
// One block per row of the [B, N] slice. Â = (A^r − λ A^c)/(1+λ),
// ρ = exp(logp − old), obj = min(Âρ, Â·clip(ρ, 1−ε, 1+ε)). rows[b] =
// {−Σ obj·m/Σm, Σ [|ρ−1| > ε]·m/Σm, Σ ((ρ−1) − log ρ)·m/Σm, Σm} (the last
// but one is the k3 estimate of KL(old‖new)); an empty row gives {0, 0, 0, 0}.
extern "C" __global__ void actor_loss_rows(double *rows, const float *logp, const float *old, const float *radv,
                                           const float *cadv, const float *mask, int N, float lambda, float eps) {
    const int b = blockIdx.x;
    const idx_t off = (idx_t)b * N;
    const double lam = lambda, inv1l = 1.0 / (1.0 + lam), lo = 1.0 - (double)eps, hi = 1.0 + (double)eps;
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int t = threadIdx.x; t < N; t += blockDim.x) {
        const idx_t i = off + t;
        double m = mask[i], adv = actor_adv(radv, cadv, i, lam, inv1l);
        double lr = (double)logp[i] - (double)old[i], rho = exp(lr);
        double s1 = adv * rho, s2 = adv * fmin(fmax(rho, lo), hi);
        acc[0] += fmin(s1, s2) * m;
        acc[1] += (fabs(rho - 1.0) > (double)eps ? 1.0 : 0.0) * m;
        acc[2] += ((rho - 1.0) - lr) * m;
        acc[3] += m;
    }
    block_sum4(acc);
    if (threadIdx.x == 0) {
        const double ms = acc[3];
        rows[4 * b + 0] = ms != 0.0 ? -acc[0] / ms : 0.0;
        rows[4 * b + 1] = ms != 0.0 ? acc[1] / ms : 0.0;
        rows[4 * b + 2] = ms != 0.0 ? acc[2] / ms : 0.0;
        rows[4 * b + 3] = ms;
    }
}

// actor_loss_grad: d loss/d logp = −Âρ·m/(nonEmpty·Σm) where the unclipped term
// is the minimum, else 0 (and 0 on empty rows). stats[3] holds nonEmpty.
extern "C" __global__ void actor_loss_grad(float *grad, const double *rows, const float *stats, const float *logp,
                                           const float *old, const float *radv, const float *cadv, const float *mask,
                                           int N, float lambda, float eps) {
    const int b = blockIdx.x;
    const idx_t off = (idx_t)b * N;
    const double lam = lambda, inv1l = 1.0 / (1.0 + lam), lo = 1.0 - (double)eps, hi = 1.0 + (double)eps;
    const double ms = rows[4 * b + 3], ne = stats[3];
    const double w = (ms != 0.0 && ne > 0.0) ? -1.0 / (ne * ms) : 0.0;
    for (int t = threadIdx.x; t < N; t += blockDim.x) {
        const idx_t i = off + t;
        double m = mask[i], adv = actor_adv(radv, cadv, i, lam, inv1l);
        double rho = exp((double)logp[i] - (double)old[i]);
        double s1 = adv * rho, s2 = adv * fmin(fmax(rho, lo), hi);
        grad[i] = (float)(s1 <= s2 ? w * m * s1 : 0.0);
    }
}

// critic_loss_rows: the per-row part of RLTrainer.critic_loss_fn (spec §1.6),
// kernels.CriticLoss. Vc = clip(V, Vold − c, Vold + c); rows[b] =
// {½ Σ max((V−R)², (Vc−R)²)·m/Σm, Σ [Vc ≠ V]·m/Σm, 0, Σm}.
extern "C" __global__ void critic_loss_rows(double *rows, const float *val, const float *oldv, const float *ret,
                                            const float *mask, int N, float clipv) {
    const int b = blockIdx.x;
    const idx_t off = (idx_t)b * N;
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int t = threadIdx.x; t < N; t += blockDim.x) {
        const idx_t i = off + t;
        double m = mask[i], v = val[i], o = oldv[i], r = ret[i];
        double vc = fmin(fmax(v, o - clipv), o + clipv);
        double u = (v - r) * (v - r), c = (vc - r) * (vc - r);
        acc[0] += fmax(u, c) * m;
        acc[1] += (vc != v ? 1.0 : 0.0) * m;
        acc[3] += m;
    }
    block_sum4(acc);
    if (threadIdx.x == 0) {
        const double ms = acc[3];
        rows[4 * b + 0] = ms != 0.0 ? 0.5 * acc[0] / ms : 0.0;
        rows[4 * b + 1] = ms != 0.0 ? acc[1] / ms : 0.0;
        rows[4 * b + 2] = 0.0;
        rows[4 * b + 3] = ms;
    }
}

// critic_loss_grad: d loss/dV = (V−R)·m/(nonEmpty·Σm) where the unclipped square
// is the maximum, else 0 (Vc does not depend on V there).
extern "C" __global__ void critic_loss_grad(float *grad, const double *rows, const float *stats, const float *val,
                                            const float *oldv, const float *ret, const float *mask, int N,
                                            float clipv) {
    const int b = blockIdx.x;
    const idx_t off = (idx_t)b * N;
    const double ms = rows[4 * b + 3], ne = stats[3];
    const double w = (ms != 0.0 && ne > 0.0) ? 1.0 / (ne * ms) : 0.0;
    for (int t = threadIdx.x; t < N; t += blockDim.x) {
        const idx_t i = off + t;
        double m = mask[i], v = val[i], o = oldv[i], r = ret[i];
        double vc = fmin(fmax(v, o - clipv), o + clipv);
        double u = (v - r) * (v - r), c = (vc - r) * (vc - r);
        grad[i] = (float)(u >= c ? w * m * (v - r) : 0.0);
    }
}

// rows_mean: stats[k] = mean of rows[4b+k] (k < 3) over the rows b with
// rows[4b+3] ≠ 0, stats[3] = the number of those rows (0 rows: all 0). One
// block, fixed summation order.
extern "C" __global__ void rows_mean(float *stats, const double *rows, int B) {
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int b = threadIdx.x; b < B; b += blockDim.x) {
        if (rows[4 * b + 3] == 0.0) continue;
        for (int k = 0; k < 3; k++) acc[k] += rows[4 * b + k];
        acc[3] += 1.0;
    }
    block_sum4(acc);
    if (threadIdx.x < 3) stats[threadIdx.x] = acc[3] > 0.0 ? (float)(acc[threadIdx.x] / acc[3]) : 0.0f;
    if (threadIdx.x == 3) stats[3] = (float)acc[3];
}

// end_scores: ScoreModelMixin.get_scores' end_scores (spec §3) for one or two
// score streams: end = last index with mask = 1; out[b] = scores[b, end].
// A row with no 1 gets end = −1 and score 0 (as kernels.EndScores). One block per row.
extern "C" __global__ void end_scores(float *out1, float *out2, int *endIdx, const float *s1, const float *s2,
                                      const float *mask, int T) {
    const int b = blockIdx.x;
    const idx_t off = (idx_t)b * T;
    int end = last_one(mask + off, T);
    if (threadIdx.x == 0) {
        out1[b] = end >= 0 ? s1[off + end] : 0.0f;
        if (out2) out2[b] = end >= 0 ? s2[off + end] : 0.0f;
        if (endIdx) endIdx[b] = end;
    }
}
