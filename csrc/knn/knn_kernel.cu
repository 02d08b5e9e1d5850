// CUDA kernels of the exact kNN op (float32 / float16 / bfloat16 inputs, float32 products, float64 re-scoring).
//   1. coef_kernel: per bank row the ranking-key coefficients (knn_common.h), one warp per row.
//   2. tile_kernel: a block owns 64 queries and one split of the bank; it walks the split in 64-row tiles,
//      computes the 64 x 64 dot products with shared-memory tiles over D (4 x 4 per thread), turns them into
//      keys, flags NaN/Inf, and one thread per query keeps a sorted running list of its best k + kSlack.
//   3. finish_kernel: one warp per query merges the splits' lists, re-scores the candidates exactly in
//      float64 and writes the best k in (distance, index) order.
// Memory: the candidate lists, splits x M x (k + kSlack) entries; never an M x N matrix.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "common/cuda_utils.cuh"
#include "knn/knn_cuda.h"

namespace ad_fast {
namespace knn {
namespace {

constexpr int kTile = 64;  // queries per block and bank rows per tile
constexpr int kDepth = 32;  // feature columns per shared-memory stage
constexpr int kThreads = 256;  // 16 x 16 threads, each computing a 4 x 4 block of products
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <typename T>
__global__ void coef_kernel(const T* __restrict__ bank, int64_t N, int64_t D, const float* __restrict__ sq_norms,
                            Metric metric, float* __restrict__ alpha, float* __restrict__ beta) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t j = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; j < N; j += warps) {
    double norm2 = 0.0;
    if (metric != Metric::InnerProduct) {
      if (sq_norms != nullptr) {
        norm2 = sq_norms[j];
      } else {
        for (int64_t d = lane; d < D; d += 32) {
          const double v = to_float(bank[j * D + d]);
          norm2 += v * v;
        }
        norm2 = warp_sum(norm2);
      }
    }
    if (lane == 0) {
      if (metric == Metric::InnerProduct) {
        alpha[j] = 0.f;
        beta[j] = -1.f;
      } else if (metric == Metric::Cosine) {
        alpha[j] = 0.f;
        beta[j] = static_cast<float>(-1.0 / fmax(sqrt(norm2), kNormEps));
      } else {
        alpha[j] = static_cast<float>(norm2);
        beta[j] = -2.f;
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    tile_kernel(const T* __restrict__ query, const T* __restrict__ bank, int64_t M, int64_t N, int64_t D,
                const float* __restrict__ alpha, const float* __restrict__ beta, int64_t split_rows, int cap,
                float* __restrict__ cand_key, int64_t* __restrict__ cand_idx, int32_t* __restrict__ cand_count,
                int32_t* __restrict__ nonfinite) {
  __shared__ float qs[kDepth][kTile + 1];
  __shared__ float bs[kDepth][kTile + 1];
  __shared__ float keys[kTile][kTile + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = int64_t(blockIdx.x) * kTile;
  const int64_t split = blockIdx.y;
  const int64_t n_begin = split * split_rows;
  const int64_t n_end = n_begin + split_rows < N ? n_begin + split_rows : N;

  // Thread tid < kTile owns the running list of query m0 + tid in this split.
  const bool owner = tid < kTile && m0 + tid < M;
  const int64_t slot = split * M + m0 + tid;
  float* my_key = cand_key + slot * cap;
  int64_t* my_idx = cand_idx + slot * cap;
  int count = 0;
  float threshold = INFINITY;
  bool bad = false;

  for (int64_t n0 = n_begin; n0 < n_end; n0 += kTile) {
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (int64_t d0 = 0; d0 < D; d0 += kDepth) {
      for (int e = tid; e < kTile * kDepth; e += kThreads) {
        const int r = e / kDepth, c = e % kDepth;  // adjacent threads read adjacent columns: coalesced
        const int64_t d = d0 + c, m = m0 + r, n = n0 + r;
        qs[c][r] = (m < M && d < D) ? to_float(query[m * D + d]) : 0.f;
        bs[c][r] = (n < n_end && d < D) ? to_float(bank[n * D + d]) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kDepth; ++c) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          a[i] = qs[c][ty * 4 + i];
          b[i] = bs[c][tx * 4 + i];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = ty * 4 + i, col = tx * 4 + j;
        const int64_t n = n0 + col;
        float key = INFINITY;  // padding: never enters a list (insertion needs key < threshold <= inf)
        if (n < n_end) {
          key = fmaf(beta[n], acc[i][j], alpha[n]);
          if (m0 + r < M && !isfinite(key)) bad = true;
        }
        keys[r][col] = key;
      }
    }
    __syncthreads();
    if (owner) {
      for (int c = 0; c < kTile; ++c) {
        const float key = keys[tid][c];
        if (key < threshold) {  // indices grow along the scan, so an equal key never passes an earlier index
          int pos = count < cap ? count : cap - 1;
          while (pos > 0 && my_key[pos - 1] > key) {
            my_key[pos] = my_key[pos - 1];
            my_idx[pos] = my_idx[pos - 1];
            --pos;
          }
          my_key[pos] = key;
          my_idx[pos] = n0 + c;
          if (count < cap) ++count;
          threshold = count < cap ? INFINITY : my_key[cap - 1];
        }
      }
    }
    __syncthreads();
  }
  if (owner) cand_count[slot] = count;
  if (bad) atomicOr(nonfinite, 1);
}

template <typename T>
__global__ void finish_kernel(const T* __restrict__ query, const T* __restrict__ bank, int64_t M, int64_t D,
                              int64_t k, int cap, int64_t splits, Metric metric, const float* __restrict__ cand_key,
                              const int64_t* __restrict__ cand_idx, const int32_t* __restrict__ cand_count,
                              int64_t* __restrict__ merged_idx, double* __restrict__ merged_rank,
                              double* __restrict__ merged_dist, T* __restrict__ out_dist,
                              int64_t* __restrict__ out_idx) {
  const int lane = threadIdx.x & 31;
  const int64_t m = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (m >= M) return;  // uniform per warp
  int64_t* ids = merged_idx + m * cap;
  double* rank = merged_rank + m * cap;
  double* dist = merged_dist + m * cap;

  int total = 0;
  if (lane == 0) {  // merge the splits' sorted lists by (key, index), keep the first cap
    int head[kCudaMaxSplits];
    for (int64_t s = 0; s < splits; ++s) head[s] = 0;
    for (int c = 0; c < cap; ++c) {
      int best = -1;
      float best_key = 0.f;
      int64_t best_idx = 0;
      for (int64_t s = 0; s < splits; ++s) {
        const int64_t slot = s * M + m;
        if (head[s] >= cand_count[slot]) continue;
        const float key = cand_key[slot * cap + head[s]];
        const int64_t idx = cand_idx[slot * cap + head[s]];
        if (best < 0 || key < best_key || (key == best_key && idx < best_idx)) {
          best = static_cast<int>(s);
          best_key = key;
          best_idx = idx;
        }
      }
      if (best < 0) break;
      ids[c] = best_idx;
      ++head[best];
      ++total;
    }
  }
  total = __shfl_sync(kFullMask, total, 0);
  __syncwarp();

  const T* q = query + m * D;
  for (int c = 0; c < total; ++c) {  // exact float64 score of each candidate, one warp-wide dot at a time
    const T* b = bank + ids[c] * D;
    double dot = 0.0, qq = 0.0, bb = 0.0, d2 = 0.0;
    for (int64_t d = lane; d < D; d += 32) {
      const double x = to_float(q[d]), y = to_float(b[d]);
      dot += x * y;
      qq += x * x;
      bb += y * y;
      d2 += (x - y) * (x - y);
    }
    dot = warp_sum(dot);
    qq = warp_sum(qq);
    bb = warp_sum(bb);
    d2 = warp_sum(d2);
    if (lane == 0) {
      if (metric == Metric::L2 || metric == Metric::SqEuclidean) {
        rank[c] = d2;
        dist[c] = metric == Metric::L2 ? sqrt(d2) : d2;
      } else if (metric == Metric::InnerProduct) {
        rank[c] = -dot;
        dist[c] = dot;
      } else {
        const double cos_dist = 1.0 - dot / (fmax(sqrt(qq), kNormEps) * fmax(sqrt(bb), kNormEps));
        rank[c] = cos_dist;
        dist[c] = cos_dist;
      }
    }
  }
  __syncwarp();
  for (int c = lane; c < total; c += 32) {  // position = number of better candidates
    const double r = rank[c];
    const int64_t i = ids[c];
    int pos = 0;
    for (int o = 0; o < total; ++o) {
      if (rank[o] < r || (rank[o] == r && ids[o] < i)) ++pos;
    }
    if (pos < k) {
      out_dist[m * k + pos] = from_float<T>(static_cast<float>(dist[c]));
      out_idx[m * k + pos] = i;
    }
  }
}

template <typename T>
cudaError_t launch_typed(const T* query, const T* bank, int64_t M, int64_t N, int64_t D, int64_t k, Metric metric,
                         const float* bank_sq_norms, int64_t splits, KnnScratch s, T* out_dist, int64_t* out_idx,
                         cudaStream_t stream) {
  const int cap = static_cast<int>(k + kSlack < N ? k + kSlack : N);
  float* alpha = s.coef;
  float* beta = s.coef + N;
  coef_kernel<T><<<cuda::grid_for(N * 32, kThreads, 4096), kThreads, 0, stream>>>(bank, N, D, bank_sq_norms, metric,
                                                                                   alpha, beta);
  AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const int64_t split_rows = cuda::ceil_div(cuda::ceil_div(N, splits), kTile) * kTile;
  const dim3 grid(static_cast<unsigned>(cuda::ceil_div(M, kTile)), static_cast<unsigned>(splits));
  tile_kernel<T><<<grid, kThreads, 0, stream>>>(query, bank, M, N, D, alpha, beta, split_rows, cap, s.cand_key,
                                                 s.cand_idx, s.cand_count, s.nonfinite);
  AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const unsigned finish_blocks = static_cast<unsigned>(cuda::ceil_div(M * 32, kThreads));
  finish_kernel<T><<<finish_blocks, kThreads, 0, stream>>>(query, bank, M, D, k, cap, splits, metric, s.cand_key,
                                                            s.cand_idx, s.cand_count, s.merged_idx, s.merged_rank,
                                                            s.merged_dist, out_dist, out_idx);
  return cudaGetLastError();
}

}  // namespace

int64_t cuda_bank_splits(int64_t M, int64_t N, int64_t target_blocks) {
  const int64_t query_blocks = cuda::ceil_div(M, kTile);
  int64_t splits = cuda::ceil_div(target_blocks, query_blocks);
  const int64_t max_by_rows = cuda::ceil_div(N, 4 * kTile);  // at least ~4 tiles per split
  if (splits > max_by_rows) splits = max_by_rows;
  if (splits > kCudaMaxSplits) splits = kCudaMaxSplits;
  return splits < 1 ? 1 : splits;
}

cudaError_t launch_knn(const void* query, const void* bank, DType dtype, int64_t M, int64_t N, int64_t D, int64_t k,
                       Metric metric, const float* bank_sq_norms, int64_t splits, KnnScratch scratch,
                       void* out_dist, int64_t* out_idx, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  if (splits < 1 || splits > kCudaMaxSplits || k < 1 || k > N) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::Float32:
      return launch_typed(static_cast<const float*>(query), static_cast<const float*>(bank), M, N, D, k, metric,
                          bank_sq_norms, splits, scratch, static_cast<float*>(out_dist), out_idx, stream);
    case DType::Float16:
      return launch_typed(static_cast<const __half*>(query), static_cast<const __half*>(bank), M, N, D, k, metric,
                          bank_sq_norms, splits, scratch, static_cast<__half*>(out_dist), out_idx, stream);
    case DType::BFloat16:
      return launch_typed(static_cast<const __nv_bfloat16*>(query), static_cast<const __nv_bfloat16*>(bank), M, N,
                          D, k, metric, bank_sq_norms, splits, scratch, static_cast<__nv_bfloat16*>(out_dist),
                          out_idx, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace knn
}  // namespace ad_fast
