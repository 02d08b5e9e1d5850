// CUDA HOG kernels, four passes with no atomics (results are deterministic and follow the CPU kernel's order):
//  1. one thread per pixel inside the cells: gradients of every channel, dominant channel, magnitude, bin;
//  2. one thread per (cell, bin): the float32 sum over the cell's pixels in row-major order (scikit-image's);
//  3. one thread per cell (when visualising): the cell's lines, added in bin order into a zeroed image;
//  4. one thread per block: block normalisation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_utils.cuh"
#include "hog/hog_common.h"
#include "hog/hog_cuda.h"

namespace ad_fast {
namespace hog {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float value_of(uint8_t v) { return static_cast<float>(v); }
__device__ __forceinline__ float value_of(__half v) { return __half2float(v); }
__device__ __forceinline__ float value_of(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float value_of(float v) { return v; }
__device__ __forceinline__ double value_of(double v) { return v; }

// IEEE square roots even under --use_fast_math (skimage's np.sqrt in its float type).
__device__ __forceinline__ float exact_sqrt(float v) { return __fsqrt_rn(v); }
__device__ __forceinline__ double exact_sqrt(double v) { return __dsqrt_rn(v); }

// Squared magnitude that picks the dominant channel, in float64 (exact for float32 gradients), as the CPU kernel.
template <typename T>
__device__ __forceinline__ double squared_magnitude(T r, T c) {
  const double rr = r, cc = c;
  return __dadd_rn(__dmul_rn(rr, rr), __dmul_rn(cc, cc));
}

template <typename scalar_t, typename T>
__device__ __forceinline__ T load(const scalar_t* plane, int64_t stride_h, int64_t stride_w, int64_t y, int64_t x,
                                  bool transform_sqrt) {
  const T v = static_cast<T>(value_of(plane[y * stride_h + x * stride_w]));
  return transform_sqrt ? exact_sqrt(v) : v;
}

template <typename scalar_t, typename T>
__global__ void pixel_kernel(const scalar_t* __restrict__ images, int64_t s_b, int64_t s_c, int64_t s_h, int64_t s_w,
                             HogGeometry g, bool transform_sqrt, const Binning bins, double* __restrict__ pixel_mag,
                             int* __restrict__ pixel_bin) {
  const int64_t used_h = g.cells_r * g.cell_h, used_w = g.cells_c * g.cell_w;
  const int64_t total = g.batch * used_h * used_w;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = idx % used_w, y = (idx / used_w) % used_h, b = idx / (used_w * used_h);
    const bool row_grad = y >= 1 && y <= g.height - 2;
    const bool col_grad = x >= 1 && x <= g.width - 2;
    T best_r = 0, best_c = 0;
    double best_m = 0.0;
    for (int64_t c = 0; c < g.channels; ++c) {
      const scalar_t* plane = images + b * s_b + c * s_c;
      const T r = row_grad ? load<scalar_t, T>(plane, s_h, s_w, y + 1, x, transform_sqrt) -
                                 load<scalar_t, T>(plane, s_h, s_w, y - 1, x, transform_sqrt)
                           : T(0);
      const T col = col_grad ? load<scalar_t, T>(plane, s_h, s_w, y, x + 1, transform_sqrt) -
                                   load<scalar_t, T>(plane, s_h, s_w, y, x - 1, transform_sqrt)
                             : T(0);
      const double m = squared_magnitude(r, col);
      if (c == 0 || m > best_m) {  // first channel wins ties (NumPy argmax)
        best_m = m;
        best_r = r;
        best_c = col;
      }
    }
    const double r = best_r, col = best_c;
    const double mag = __dsqrt_rn(__dadd_rn(__dmul_rn(r, r), __dmul_rn(col, col)));
    pixel_mag[idx] = mag;
    pixel_bin[idx] = mag == 0.0 ? kNoBin : gradient_bin(r, col, bins);
  }
}

__global__ void histogram_kernel(const double* __restrict__ pixel_mag, const int* __restrict__ pixel_bin,
                                 HogGeometry g, float* __restrict__ hist) {
  const int n = g.orientations;
  const int64_t used_w = g.cells_c * g.cell_w;
  const int64_t total = g.batch * g.cells_r * g.cells_c * n;
  const float area = static_cast<float>(g.cell_h * g.cell_w);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int o = static_cast<int>(idx % n);
    const int64_t cell = idx / n;
    const int64_t cc = cell % g.cells_c, cr = (cell / g.cells_c) % g.cells_r, b = cell / (g.cells_c * g.cells_r);
    const int64_t first = (b * g.cells_r * g.cell_h + cr * g.cell_h) * used_w + cc * g.cell_w;
    float sum = 0.f;  // skimage: `cdef float total; total += magnitude` over the cell in row-major order
    for (int u = 0; u < g.cell_h; ++u) {
      for (int v = 0; v < g.cell_w; ++v) {
        const int64_t p = first + u * used_w + v;
        const int k = pixel_bin[p];
        if (k == o || k == kAllBins) sum = __double2float_rn(__dadd_rn(static_cast<double>(sum), pixel_mag[p]));
      }
    }
    hist[idx] = __fdiv_rn(sum, area);
  }
}

template <typename out_t>
__global__ void render_kernel(const float* __restrict__ hist, HogGeometry g, const LineOffsets lines,
                              out_t* __restrict__ image) {
  const int n = g.orientations;
  const int64_t total = g.batch * g.cells_r * g.cells_c;
  for (int64_t cell = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; cell < total;
       cell += int64_t(gridDim.x) * blockDim.x) {
    const int64_t cc = cell % g.cells_c, cr = (cell / g.cells_c) % g.cells_r, b = cell / (g.cells_c * g.cells_r);
    out_t* base = image + (b * g.height + cr * g.cell_h) * g.width + cc * g.cell_w;
    const int64_t width = g.width;
    for (int o = 0; o < n; ++o) {
      const double v = hist[cell * n + o];
      if (v == 0.0) continue;
      for_each_line_pixel(row_ends(lines, o, cr, g.cell_h), col_ends(lines, o, cc, g.cell_w), [&](int u, int x) {
        out_t& px = base[u * width + x];
        px = static_cast<out_t>(__dadd_rn(static_cast<double>(px), v));
      });
    }
  }
}

template <typename out_t>
__global__ void normalise_kernel(const float* __restrict__ hist, HogGeometry g, out_t* __restrict__ out) {
  const int n = g.orientations;
  const int64_t block_len = int64_t(g.block_h) * g.block_w * n;
  const int64_t total = g.batch * g.blocks_r * g.blocks_c;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bc = idx % g.blocks_c, br = (idx / g.blocks_c) % g.blocks_r, b = idx / (g.blocks_c * g.blocks_r);
    const float* corner = hist + ((b * g.cells_r + br) * g.cells_c + bc) * n;
    normalise_block(corner, g.cells_c * n, g.block_h, g.block_w, n, g.norm, out + idx * block_len);
  }
}

template <typename scalar_t, typename T>
void launch_pixels(const HogLaunch& p, const Binning& bins, double* pixel_mag, int* pixel_bin, cudaStream_t stream) {
  const int64_t count = cell_pixel_count(p.geometry);
  pixel_kernel<scalar_t, T><<<cuda::grid_for(count, kThreads), kThreads, 0, stream>>>(
      static_cast<const scalar_t*>(p.images), p.strides[0], p.strides[1], p.strides[2], p.strides[3], p.geometry,
      p.transform_sqrt, bins, pixel_mag, pixel_bin);
}

template <typename out_t>
cudaError_t launch_outputs(const HogLaunch& p, const LineOffsets& lines, const float* hist, void* descriptors,
                           void* hog_image, cudaStream_t stream) {
  const HogGeometry& g = p.geometry;
  if (hog_image != nullptr) {
    AD_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(hog_image, 0, g.batch * g.height * g.width * sizeof(out_t), stream));
    const int64_t cells = g.batch * g.cells_r * g.cells_c;
    render_kernel<out_t><<<cuda::grid_for(cells, kThreads), kThreads, 0, stream>>>(hist, g, lines,
                                                                                    static_cast<out_t*>(hog_image));
    AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  const int64_t blocks = g.batch * g.blocks_r * g.blocks_c;
  normalise_kernel<out_t><<<cuda::grid_for(blocks, kThreads), kThreads, 0, stream>>>(
      hist, g, static_cast<out_t*>(descriptors));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_hog(const HogLaunch& launch, const Binning& bins, const LineOffsets& lines, double* pixel_mag,
                       int* pixel_bin, float* hist, void* descriptors, void* hog_image, cudaStream_t stream) {
  const HogGeometry& g = launch.geometry;
  if (g.batch == 0) return cudaSuccess;
  switch (launch.input) {
    case HogInput::UInt8:
      if (launch.double_compute) {
        launch_pixels<uint8_t, double>(launch, bins, pixel_mag, pixel_bin, stream);
      } else {
        launch_pixels<uint8_t, float>(launch, bins, pixel_mag, pixel_bin, stream);
      }
      break;
    case HogInput::Float16:
      launch_pixels<__half, float>(launch, bins, pixel_mag, pixel_bin, stream);
      break;
    case HogInput::BFloat16:
      launch_pixels<__nv_bfloat16, float>(launch, bins, pixel_mag, pixel_bin, stream);
      break;
    case HogInput::Float32:
      launch_pixels<float, float>(launch, bins, pixel_mag, pixel_bin, stream);
      break;
    case HogInput::Float64:
      launch_pixels<double, double>(launch, bins, pixel_mag, pixel_bin, stream);
      break;
  }
  AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  const int64_t bins_total = g.batch * g.cells_r * g.cells_c * g.orientations;
  histogram_kernel<<<cuda::grid_for(bins_total, kThreads), kThreads, 0, stream>>>(pixel_mag, pixel_bin, g, hist);
  AD_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return launch.double_output ? launch_outputs<double>(launch, lines, hist, descriptors, hog_image, stream)
                              : launch_outputs<float>(launch, lines, hist, descriptors, hog_image, stream);
}

}  // namespace hog
}  // namespace ad_fast
