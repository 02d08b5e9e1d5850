// CUDA kernels of soft alignment (flash-style forward, recompute backward) and of the hard-alignment match.
// float32 / float16 / bfloat16 inputs, float32 arithmetic. One templated tile kernel serves every pass:
// a block owns kRows "row" positions and kOutCh output channels and walks the "column" positions in tiles of
// kCols. Per tile it forms S = a1^T b1 (and, for dQ / dK, G = a2^T b2) chunk by chunk through shared memory,
// turns them into weights W in registers, and accumulates acc += W val^T. Never more than one tile of the
// attention exists; every output element has one writer (no atomics, deterministic).
//   forward: rows = queries, a1 = q, b1 = k, W = online softmax of scale * S, val = v  -> out, lse
//   dQ:      rows = queries, a1 = q, b1 = k, a2 = dO, b2 = v, W = scale * P * (G - D_row), val = k
//   dK:      rows = prompts, a1 = k, b1 = q, a2 = v, b2 = dO, W = scale * P * (G - D_col), val = q
//   dV:      rows = prompts, a1 = k, b1 = q, W = P, val = dO
//   match:   rows = queries, a1 = q, b1 = unit k, running max / first argmax of S
// with P = exp(scale * S - lse).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "common/cuda_utils.cuh"
#include "soft_align/soft_align_cuda.h"

namespace ad_fast {
namespace soft_align {
namespace {

constexpr int kRows = 32;      // row positions per block
constexpr int kCols = 64;      // column positions per tile
constexpr int kDepth = 32;     // channels per inner-product chunk
constexpr int kOutCh = 64;     // output channels per block
constexpr int kThreads = 256;  // 16 x 16: ty owns rows 2ty, 2ty+1; tx owns columns / channels tx + 16 j
constexpr int kPerThread = 4;  // columns (and output channels) per thread: tx + 16 j, j < 4
constexpr int kPad = kCols + 1;

enum class Mode { Forward, GradQ, GradK, GradV, Match };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(__half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

struct Operands {
  const void* a1;  // [channels1, n_rows]
  const void* b1;  // [channels1, n_cols]
  int64_t channels1;
  const void* a2;  // [channels2, n_rows]   (dQ, dK)
  const void* b2;  // [channels2, n_cols]
  int64_t channels2;
  const void* val;  // [out_channels, n_cols]
  int64_t out_channels;
  int64_t n_rows, n_cols;
  const float* lse;    // [n_rows] for dQ, [n_cols] for dK / dV
  const float* delta;  // likewise (dQ, dK)
  float scale;
  void* out;           // [out_channels, n_rows]; match: best_dot [n_rows] (float)
  float* out_lse;      // forward: [n_rows]
  int64_t* out_index;  // match: [n_rows]
};

// dst[c][p] = src[ch0 + c][pos0 + p] (zero outside channels x n), for c < depth, p < width.
template <typename T, int kWidth, int kLd>
__device__ __forceinline__ void load_tile(float (*dst)[kLd], const T* __restrict__ src, int depth, int64_t channels,
                                          int64_t n, int64_t ch0, int64_t pos0) {
  for (int e = threadIdx.x; e < depth * kWidth; e += kThreads) {
    const int c = e / kWidth, p = e % kWidth;
    const int64_t ch = ch0 + c, pos = pos0 + p;
    dst[c][p] = (ch < channels && pos < n) ? to_float(src[ch * n + pos]) : 0.f;
  }
}

// s[r][j] = sum_ch a[ch][row0 + 2ty + r] * b[ch][col0 + tx + 16 j], through shared-memory chunks.
template <typename T>
__device__ __forceinline__ void tile_product(float (&s)[2][kPerThread], const T* __restrict__ a,
                                             const T* __restrict__ b, int64_t channels, int64_t n_a, int64_t n_b,
                                             int64_t row0, int64_t col0, float (*As)[kRows], float (*Bs)[kPad]) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) s[r][j] = 0.f;
  for (int64_t ch0 = 0; ch0 < channels; ch0 += kDepth) {
    load_tile<T, kRows, kRows>(As, a, kDepth, channels, n_a, ch0, row0);
    load_tile<T, kCols, kPad>(Bs, b, kDepth, channels, n_b, ch0, col0);
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kDepth; ++c) {
      const float a0 = As[c][2 * ty], a1 = As[c][2 * ty + 1];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const float bv = Bs[c][tx + 16 * j];
        s[0][j] = fmaf(a0, bv, s[0][j]);
        s[1][j] = fmaf(a1, bv, s[1][j]);
      }
    }
    __syncthreads();
  }
}

// Reductions over the 16 lanes (tx) that share a row; they sit in one half-warp.
__device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

template <typename T, Mode M>
__global__ void __launch_bounds__(kThreads) tile_kernel(Operands op, int64_t row_tiles) {
  __shared__ float As[kDepth][kRows];
  __shared__ float Bs[kDepth][kPad];
  __shared__ float Ws[kRows][kPad];
  __shared__ float Vs[kOutCh][kPad];
  __shared__ float col_lse[kCols];
  __shared__ float col_delta[kCols];

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t b = blockIdx.x / row_tiles;
  const int64_t row0 = (blockIdx.x % row_tiles) * kRows;
  const int64_t och0 = int64_t(blockIdx.y) * kOutCh;
  const int64_t n_rows = op.n_rows, n_cols = op.n_cols;
  const T* a1 = static_cast<const T*>(op.a1) + b * op.channels1 * n_rows;
  const T* b1 = static_cast<const T*>(op.b1) + b * op.channels1 * n_cols;
  const T* a2 = nullptr;
  const T* b2 = nullptr;
  if (M == Mode::GradQ || M == Mode::GradK) {
    a2 = static_cast<const T*>(op.a2) + b * op.channels2 * n_rows;
    b2 = static_cast<const T*>(op.b2) + b * op.channels2 * n_cols;
  }
  const T* val = M == Mode::Match ? nullptr : static_cast<const T*>(op.val) + b * op.out_channels * n_cols;

  float acc[2][kPerThread];
  float run_max[2], run_sum[2], row_lse[2], row_delta[2];
  int64_t best_at[2] = {0, 0};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) acc[r][j] = 0.f;
    run_max[r] = -INFINITY;
    run_sum[r] = 0.f;
    row_lse[r] = row_delta[r] = 0.f;
    const int64_t row = row0 + 2 * ty + r;
    if (M == Mode::GradQ && row < n_rows) {
      row_lse[r] = op.lse[b * n_rows + row];
      row_delta[r] = op.delta[b * n_rows + row];
    }
  }

  for (int64_t col0 = 0; col0 < n_cols; col0 += kCols) {
    if (M == Mode::GradK || M == Mode::GradV) {
      if (threadIdx.x < kCols) {
        const int64_t col = col0 + threadIdx.x;
        col_lse[threadIdx.x] = col < n_cols ? op.lse[b * n_cols + col] : 0.f;
        if (M == Mode::GradK) col_delta[threadIdx.x] = col < n_cols ? op.delta[b * n_cols + col] : 0.f;
      }
      __syncthreads();
    }
    float s[2][kPerThread];
    tile_product<T>(s, a1, b1, op.channels1, n_rows, n_cols, row0, col0, As, Bs);
    bool valid[kPerThread];
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) valid[j] = col0 + tx + 16 * j < n_cols;

    if (M == Mode::Match) {
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int j = 0; j < kPerThread; ++j)  // ascending columns, strict: the first maximum stays
          if (valid[j] && s[r][j] > run_max[r]) {
            run_max[r] = s[r][j];
            best_at[r] = col0 + tx + 16 * j;
          }
      continue;
    }

    float w[2][kPerThread];
    if (M == Mode::Forward) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          s[r][j] = valid[j] ? s[r][j] * op.scale : -INFINITY;
          tile_max = fmaxf(tile_max, s[r][j]);
        }
        const float new_max = fmaxf(run_max[r], row_max(tile_max));  // finite: column col0 is valid
        const float rescale = __expf(run_max[r] - new_max);           // 0 on the first tile
        float tile_sum = 0.f;
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          w[r][j] = valid[j] ? __expf(s[r][j] - new_max) : 0.f;
          tile_sum += w[r][j];
        }
        run_sum[r] = run_sum[r] * rescale + row_sum(tile_sum);
        run_max[r] = new_max;
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) acc[r][j] *= rescale;
      }
    } else {
      float g[2][kPerThread];
      if (M == Mode::GradQ || M == Mode::GradK) {
        tile_product<T>(g, a2, b2, op.channels2, n_rows, n_cols, row0, col0, As, Bs);
      }
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) {
          const int c = tx + 16 * j;
          const float lse = M == Mode::GradQ ? row_lse[r] : col_lse[c];
          const float p = valid[j] ? __expf(s[r][j] * op.scale - lse) : 0.f;
          if (M == Mode::GradV) {
            w[r][j] = p;
          } else {
            const float d = M == Mode::GradQ ? row_delta[r] : col_delta[c];
            w[r][j] = op.scale * p * (g[r][j] - d);
          }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) Ws[2 * ty + r][tx + 16 * j] = w[r][j];
    load_tile<T, kCols, kPad>(Vs, val, kOutCh, op.out_channels, n_cols, och0, col0);
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kCols; ++c) {
      const float w0 = Ws[2 * ty][c], w1 = Ws[2 * ty + 1][c];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const float vv = Vs[tx + 16 * j][c];
        acc[0][j] = fmaf(w0, vv, acc[0][j]);
        acc[1][j] = fmaf(w1, vv, acc[1][j]);
      }
    }
    __syncthreads();
  }

  if (M == Mode::Match) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float best = run_max[r];
      long long at = best_at[r];
#pragma unroll
      for (int off = 8; off > 0; off >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, best, off);
        const long long other_at = __shfl_xor_sync(0xffffffffu, at, off);
        if (other > best || (other == best && other_at < at)) {
          best = other;
          at = other_at;
        }
      }
      const int64_t row = row0 + 2 * ty + r;
      if (tx == 0 && row < n_rows) {
        static_cast<float*>(op.out)[b * n_rows + row] = best;
        op.out_index[b * n_rows + row] = at;
      }
    }
    return;
  }

  T* out = static_cast<T*>(op.out) + b * op.out_channels * n_rows;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + 2 * ty + r;
    if (row >= n_rows) continue;
    const float norm = M == Mode::Forward ? 1.f / run_sum[r] : 1.f;
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t ch = och0 + tx + 16 * j;
      if (ch < op.out_channels) store(out + ch * n_rows + row, acc[r][j] * norm);
    }
    if (M == Mode::Forward && blockIdx.y == 0 && tx == 0) op.out_lse[b * n_rows + row] = run_max[r] + logf(run_sum[r]);
  }
}

template <typename T, Mode M>
cudaError_t launch(const Operands& op, int64_t batch, cudaStream_t stream) {
  if (batch == 0 || op.n_rows == 0) return cudaSuccess;
  const int64_t row_tiles = cuda::ceil_div(op.n_rows, kRows);
  const int64_t blocks = batch * row_tiles;
  const int64_t ch_blocks = M == Mode::Match ? 1 : (op.out_channels > 0 ? cuda::ceil_div(op.out_channels, kOutCh) : 1);
  if (blocks > 2147483647LL || ch_blocks > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned int>(blocks), static_cast<unsigned int>(ch_blocks));
  tile_kernel<T, M><<<grid, kThreads, 0, stream>>>(op, row_tiles);
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_typed(const void* q, const void* k, const void* v, int64_t batch, int64_t cqk, int64_t cv,
                          int64_t nq, int64_t np, float scale, void* out, float* lse, cudaStream_t stream) {
  Operands op{};
  op.a1 = q;
  op.b1 = k;
  op.channels1 = cqk;
  op.val = v;
  op.out_channels = cv;
  op.n_rows = nq;
  op.n_cols = np;
  op.scale = scale;
  op.out = out;
  op.out_lse = lse;
  return launch<T, Mode::Forward>(op, batch, stream);
}

template <typename T>
cudaError_t backward_typed(const void* grad_out, const void* q, const void* k, const void* v, const float* lse,
                           const float* delta, int64_t batch, int64_t cqk, int64_t cv, int64_t nq, int64_t np,
                           float scale, void* grad_q, void* grad_k, void* grad_v, cudaStream_t stream) {
  Operands dq{};
  dq.a1 = q;
  dq.b1 = k;
  dq.channels1 = cqk;
  dq.a2 = grad_out;
  dq.b2 = v;
  dq.channels2 = cv;
  dq.val = k;
  dq.out_channels = cqk;
  dq.n_rows = nq;
  dq.n_cols = np;
  dq.lse = lse;
  dq.delta = delta;
  dq.scale = scale;
  dq.out = grad_q;
  AD_CUDA_RETURN_IF_ERROR((launch<T, Mode::GradQ>(dq, batch, stream)));

  Operands dk = dq;  // rows and columns swap roles
  dk.a1 = k;
  dk.b1 = q;
  dk.a2 = v;
  dk.b2 = grad_out;
  dk.val = q;
  dk.n_rows = np;
  dk.n_cols = nq;
  dk.out = grad_k;
  AD_CUDA_RETURN_IF_ERROR((launch<T, Mode::GradK>(dk, batch, stream)));

  if (grad_v == nullptr) return cudaSuccess;
  Operands dv = dk;
  dv.a2 = dv.b2 = nullptr;
  dv.channels2 = 0;
  dv.val = grad_out;
  dv.out_channels = cv;
  dv.delta = nullptr;
  dv.out = grad_v;
  return launch<T, Mode::GradV>(dv, batch, stream);
}

}  // namespace

cudaError_t launch_soft_align_forward(const void* q, const void* k, const void* v, int64_t batch, int64_t cqk,
                                      int64_t cv, int64_t nq, int64_t np, float scale, DType dtype, void* out,
                                      float* lse, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32:
      return forward_typed<float>(q, k, v, batch, cqk, cv, nq, np, scale, out, lse, stream);
    case DType::Float16:
      return forward_typed<__half>(q, k, v, batch, cqk, cv, nq, np, scale, out, lse, stream);
    case DType::BFloat16:
      return forward_typed<__nv_bfloat16>(q, k, v, batch, cqk, cv, nq, np, scale, out, lse, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_soft_align_backward(const void* grad_out, const void* q, const void* k, const void* v,
                                       const float* lse, const float* delta, int64_t batch, int64_t cqk, int64_t cv,
                                       int64_t nq, int64_t np, float scale, DType dtype, void* grad_q, void* grad_k,
                                       void* grad_v, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32:
      return backward_typed<float>(grad_out, q, k, v, lse, delta, batch, cqk, cv, nq, np, scale, grad_q, grad_k,
                                   grad_v, stream);
    case DType::Float16:
      return backward_typed<__half>(grad_out, q, k, v, lse, delta, batch, cqk, cv, nq, np, scale, grad_q, grad_k,
                                    grad_v, stream);
    case DType::BFloat16:
      return backward_typed<__nv_bfloat16>(grad_out, q, k, v, lse, delta, batch, cqk, cv, nq, np, scale, grad_q,
                                           grad_k, grad_v, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_hard_align_match(const float* q, const float* k_unit, int64_t batch, int64_t channels,
                                    int64_t nq, int64_t np, float* best_dot, int64_t* index, cudaStream_t stream) {
  Operands op{};
  op.a1 = q;
  op.b1 = k_unit;
  op.channels1 = channels;
  op.n_rows = nq;
  op.n_cols = np;
  op.out = best_dot;
  op.out_index = index;
  return launch<float, Mode::Match>(op, batch, stream);
}

}  // namespace soft_align
}  // namespace ad_fast
