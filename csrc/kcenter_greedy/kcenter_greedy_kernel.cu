// CUDA kernels of greedy k-center selection (float32). Per pick: update_kernel lowers every row's running
// min-distance by its distance to the newest pick (one warp per row, the pick's row cached in shared memory)
// and reduces a per-block arg-max; reduce_kernel merges the blocks into the radius and the next pick, which
// it writes to device memory for the next update_kernel to read.
#include <cmath>

#include "common/cuda_utils.cuh"
#include "kcenter_greedy/kcenter_greedy_cuda.h"

namespace ad_fast {
namespace kcenter_greedy {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxPartials = 2048;
constexpr int kReduceThreads = 1024;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ ArgMax warp_best(ArgMax v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    ArgMax other;
    other.value = __shfl_xor_sync(kFullMask, v.value, offset);
    other.index = __shfl_xor_sync(kFullMask, v.index, offset);
    v = better(v, other);
  }
  return v;
}

// Block-wide arg-max of each thread's `v`; the result is valid in thread 0.
__device__ ArgMax block_best(ArgMax v, ArgMax* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_best(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? shared[lane] : ArgMax{-INFINITY, INT64_MAX};
  if (warp == 0) v = warp_best(v);
  return v;
}

// pick < 0: no update, only the arg-max of min_dist (the initial pick from init_distances).
__global__ void __launch_bounds__(kThreads)
    update_kernel(const float* __restrict__ z, int64_t n, int64_t d, const int64_t* __restrict__ picks,
                  int64_t t, float* __restrict__ min_dist, ArgMax* __restrict__ partial) {
  extern __shared__ float center[];
  __shared__ ArgMax warp_results[kWarps];
  const bool update = t >= 0;
  if (update) {
    const int64_t c = picks[t];
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) center[i] = z[c * d + i];
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  ArgMax best{-INFINITY, INT64_MAX};
  for (int64_t row = warp; row < n; row += warps) {
    float value = min_dist[row];
    if (update) {
      float acc = 0.f;
      for (int64_t i = lane; i < d; i += 32) {
        const float diff = z[row * d + i] - center[i];
        acc = fmaf(diff, diff, acc);
      }
      for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(kFullMask, acc, offset);
      value = fminf(value, sqrtf(acc));
      if (lane == 0) min_dist[row] = value;
    }
    best = better(best, ArgMax{value, row});
  }
  best = block_best(best, warp_results);
  if (threadIdx.x == 0) partial[blockIdx.x] = best;
}

// Merges the partials: radii[t] = best value (when radii != nullptr), picks[t + 1] = best index (when t + 1 <
// n_select; t = -1 writes the first pick).
__global__ void __launch_bounds__(kReduceThreads)
    reduce_kernel(const ArgMax* __restrict__ partial, int64_t count, int64_t t, int64_t n_select,
                  int64_t* __restrict__ picks, float* __restrict__ radii) {
  __shared__ ArgMax warp_results[kReduceThreads / 32];
  ArgMax best{-INFINITY, INT64_MAX};
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) best = better(best, partial[i]);
  best = block_best(best, warp_results);
  if (threadIdx.x == 0) {
    if (t >= 0) radii[t] = best.value;
    if (t + 1 < n_select) picks[t + 1] = best.index;
  }
}

}  // namespace

int64_t cuda_partials(int64_t n) {
  const int64_t blocks = cuda::ceil_div(n, kWarps);
  return blocks < 1 ? 1 : (blocks < kMaxPartials ? blocks : kMaxPartials);
}

cudaError_t launch_kcenter_greedy(const float* projected, int64_t n, int64_t d, int64_t n_select,
                                  bool pick_first_from_min_dist, float* min_dist, int64_t* picks, float* radii,
                                  ArgMax* partial, cudaStream_t stream) {
  if (n_select == 0) return cudaSuccess;
  if (n < 1 || d < 1 || n_select > n) return cudaErrorInvalidValue;
  const int64_t blocks = cuda_partials(n);
  const size_t shared = static_cast<size_t>(d) * sizeof(float);
  if (shared > 48 * 1024) {
    AD_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(update_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
  }
  if (pick_first_from_min_dist) {
    update_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(projected, n, d, picks, -1, min_dist,
                                                                           partial);
    AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    reduce_kernel<<<1, kReduceThreads, 0, stream>>>(partial, blocks, -1, n_select, picks, nullptr);
    AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  for (int64_t t = 0; t < n_select; ++t) {
    update_kernel<<<static_cast<unsigned>(blocks), kThreads, shared, stream>>>(projected, n, d, picks, t, min_dist,
                                                                               partial);
    AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    reduce_kernel<<<1, kReduceThreads, 0, stream>>>(partial, blocks, t, n_select, picks, radii);
    AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return cudaSuccess;
}

}  // namespace kcenter_greedy
}  // namespace ad_fast
