// CUDA kernels of the fused anomaly map: channel distance per level, then upsample + weighted sum (+ row blur)
// in one pass over the output, then the column blur. float32 / float16 / bfloat16 inputs; channel sums in double,
// the rest float32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "anomaly_map/anomaly_map_common.h"
#include "anomaly_map/anomaly_map_cuda.h"
#include "common/cuda_utils.cuh"

namespace ad_fast {
namespace anomaly_map {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

struct Levels {
  LevelView level[kMaxLevels];
  int64_t dist_offset[kMaxLevels];  // start of each level's [B, H_l, W_l] block in the scratch
  int count;
};

// Block of kPixels x kSlices threads: threadIdx.x walks 32 adjacent pixels (coalesced NCHW loads), threadIdx.y
// one of kSlices channel slices; the slices' partial sums meet in shared memory. Splitting channels keeps
// enough threads in flight on the small, deep levels (e.g. 16x16 pixels x 1024 channels).
constexpr int kPixels = 32;
constexpr int kSlices = 16;

template <typename T>
__global__ void level_distance_kernel(LevelView view, int64_t batch, bool cosine, float* dist) {
  // Sums in double, as the CPU kernel: float32 features up to FLT_MAX overflow neither the squared norms nor their
  // product, so 1 - x.y / (|x| |y|) stays the true cosine distance (issue: huge features gave NaN).
  __shared__ double partial[3][kSlices][kPixels];
  const int64_t hw = view.height * view.width;
  const int64_t total = batch * hw;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t base = blockIdx.x * int64_t(kPixels); base < total; base += int64_t(gridDim.x) * kPixels) {
    const int64_t i = base + tx;
    double dot = 0.0, na = 0.0, nb = 0.0;
    if (i < total) {
      const int64_t n = i / hw, h = (i % hw) / view.width, w = i % view.width;
      const T* a = static_cast<const T*>(view.a) + n * view.a_strides[0] + h * view.a_strides[2] + w * view.a_strides[3];
      const T* b = static_cast<const T*>(view.b) + n * view.b_strides[0] + h * view.b_strides[2] + w * view.b_strides[3];
      for (int64_t c = ty; c < view.channels; c += kSlices) {
        const double x = to_float(a[c * view.a_strides[1]]);
        const double y = to_float(b[c * view.b_strides[1]]);
        if (cosine) {
          dot = fma(x, y, dot);
          na = fma(x, x, na);
          nb = fma(y, y, nb);
        } else {
          dot = fma(x - y, x - y, dot);
        }
      }
    }
    partial[0][ty][tx] = dot;
    partial[1][ty][tx] = na;
    partial[2][ty][tx] = nb;
    __syncthreads();
    if (ty == 0 && i < total) {
      dot = na = nb = 0.0;
      for (int s = 0; s < kSlices; ++s) {  // fixed order: deterministic results
        dot += partial[0][s][tx];
        na += partial[1][s][tx];
        nb += partial[2][s][tx];
      }
      // 1 - x.y / max(|x| |y|, 1e-8): the CPU kernel's and torch.nn.functional.cosine_similarity's rule.
      dist[i] = static_cast<float>(cosine ? 1.0 - dot / fmax(sqrt(na) * sqrt(nb), 1e-8) : sqrt(dot));
    }
    __syncthreads();
  }
}

// One thread per output pixel: bilinear sample of every level's distance map, weighted sum, then (when
// blurring) stored for the row blur pass.
__global__ void upsample_sum_kernel(Levels levels, int64_t batch, int64_t out_h, int64_t out_w,
                                    const float* __restrict__ dist, float* __restrict__ out) {
  const int64_t total = batch * out_h * out_w;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / (out_h * out_w), y = (i / out_w) % out_h, x = i % out_w;
    float sum = 0.f;
    for (int l = 0; l < levels.count; ++l) {
      const int64_t h_l = levels.level[l].height, w_l = levels.level[l].width;
      const float* d = dist + levels.dist_offset[l] + n * h_l * w_l;
      const LinearTap<float> ty = linear_tap<float>(y, h_l, out_h);
      const LinearTap<float> tx = linear_tap<float>(x, w_l, out_w);
      const float top = (1.f - tx.w1) * d[ty.i0 * w_l + tx.i0] + tx.w1 * d[ty.i0 * w_l + tx.i1];
      const float bottom = (1.f - tx.w1) * d[ty.i1 * w_l + tx.i0] + tx.w1 * d[ty.i1 * w_l + tx.i1];
      sum += levels.level[l].weight * ((1.f - ty.w1) * top + ty.w1 * bottom);
    }
    out[i] = sum;
  }
}

// Separable Gaussian along one axis with reflect borders; step is 1 for rows, out_w for columns.
__global__ void blur_kernel(const float* __restrict__ src, float* __restrict__ dst, int64_t batch, int64_t out_h,
                            int64_t out_w, const float* __restrict__ taps, int radius, bool along_rows) {
  const int64_t total = batch * out_h * out_w;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t y = (i / out_w) % out_h, x = i % out_w;
    const int64_t base = i - (along_rows ? x : y * out_w);
    const int64_t pos = along_rows ? x : y, size = along_rows ? out_w : out_h, step = along_rows ? 1 : out_w;
    float s = 0.f;
    for (int t = -radius; t <= radius; ++t) s = fmaf(taps[t + radius], src[base + reflect_index(pos + t, size) * step], s);
    dst[i] = s;
  }
}

template <typename T>
cudaError_t launch_typed(const LevelView* views, int num_levels, int64_t batch, bool cosine, int64_t out_h,
                         int64_t out_w, const float* blur_taps, int blur_radius, float* dist_scratch,
                         float* rows_scratch, float* out, cudaStream_t stream) {
  Levels levels{};
  levels.count = num_levels;
  int64_t offset = 0;
  for (int l = 0; l < num_levels; ++l) {
    levels.level[l] = views[l];
    levels.dist_offset[l] = offset;
    const int64_t n = batch * views[l].height * views[l].width;
    level_distance_kernel<T><<<cuda::grid_for(n, kPixels), dim3(kPixels, kSlices), 0, stream>>>(
        views[l], batch, cosine, dist_scratch + offset);
    AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    offset += n;
  }
  const int64_t total = batch * out_h * out_w;
  const unsigned int grid = cuda::grid_for(total, kThreads);
  upsample_sum_kernel<<<grid, kThreads, 0, stream>>>(levels, batch, out_h, out_w, dist_scratch, out);
  AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  if (blur_radius > 0) {
    blur_kernel<<<grid, kThreads, 0, stream>>>(out, rows_scratch, batch, out_h, out_w, blur_taps, blur_radius, true);
    AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    blur_kernel<<<grid, kThreads, 0, stream>>>(rows_scratch, out, batch, out_h, out_w, blur_taps, blur_radius, false);
    AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t launch_anomaly_map(const LevelView* levels, int num_levels, int64_t batch, DType dtype, bool cosine,
                               int64_t out_h, int64_t out_w, const float* blur_taps, int blur_radius,
                               float* dist_scratch, float* rows_scratch, float* out, cudaStream_t stream) {
  if (num_levels < 1 || num_levels > kMaxLevels) return cudaErrorInvalidValue;
  if (batch == 0) return cudaSuccess;
  switch (dtype) {
    case DType::Float32:
      return launch_typed<float>(levels, num_levels, batch, cosine, out_h, out_w, blur_taps, blur_radius, dist_scratch,
                                 rows_scratch, out, stream);
    case DType::Float16:
      return launch_typed<__half>(levels, num_levels, batch, cosine, out_h, out_w, blur_taps, blur_radius,
                                  dist_scratch, rows_scratch, out, stream);
    case DType::BFloat16:
      return launch_typed<__nv_bfloat16>(levels, num_levels, batch, cosine, out_h, out_w, blur_taps, blur_radius,
                                         dist_scratch, rows_scratch, out, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace anomaly_map
}  // namespace ad_fast
