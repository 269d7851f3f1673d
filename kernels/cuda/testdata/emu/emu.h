// A CPU emulator of the small CUDA subset that rl.cu and logprobs.cu use, so
// that the kernels' own source runs (and is checked) on machines without a GPU:
// one std::thread per CUDA thread, one block at a time; __syncthreads is a
// block barrier, __shfl_down_sync exchanges through per-warp slots between two
// warp barriers, __shared__ variables are function statics (one block at a
// time shares them). It checks the algorithms (tiling, scans, reductions,
// indexing), not timing or memory-model subtleties.
#include <barrier>
#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include <functional>
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
struct dim3 { unsigned x = 0, y = 0, z = 0; };
thread_local dim3 threadIdx;
dim3 blockIdx, blockDim;
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
std::barrier<> *g_block_bar;
std::barrier<> *g_warp_bar[32];
uint64_t g_slots[32][32];
inline void __syncthreads() { g_block_bar->arrive_and_wait(); }
template <class T> T __shfl_down_sync(unsigned, T v, int o) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  uint64_t u = 0; std::memcpy(&u, &v, sizeof(T));
  g_slots[w][lane] = u;
  g_warp_bar[w]->arrive_and_wait();
  T r = v;
  if (lane + o < 32) std::memcpy(&r, &g_slots[w][lane + o], sizeof(T));
  g_warp_bar[w]->arrive_and_wait();
  return r;
}
struct alignas(16) float4 { float x, y, z, w; };
template <class T> T __ldg(const T *p) { return *p; }
using std::fmin; using std::fmax; using std::fabs; using std::exp;
inline int max(int a, int b) { return a > b ? a : b; }
inline float fminf(float a, float b) { return std::fmin(a, b); }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline void launch(int grid, int block, std::function<void()> k) {
  blockDim.x = block;
  for (int b = 0; b < grid; b++) {
    blockIdx.x = b;
    std::barrier<> bb(block); g_block_bar = &bb;
    for (int w = 0; w < block / 32; w++) { g_warp_bar[w] = new std::barrier<>(32); }
    std::vector<std::thread> th;
    for (int t = 0; t < block; t++) th.emplace_back([t, &k] { threadIdx.x = t; k(); });
    for (auto &x : th) x.join();
    for (int w = 0; w < block / 32; w++) delete g_warp_bar[w];
  }
}
