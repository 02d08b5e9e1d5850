// Launcher of the CUDA anomaly-map kernels: raw pointers, sizes, strides and a stream; no torch types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace ad_fast {
namespace anomaly_map {

constexpr int kMaxLevels = 8;

struct LevelView {
  const void* a;
  const void* b;
  int64_t channels, height, width;
  int64_t a_strides[4];  // elements, in (B, C, H, W) order
  int64_t b_strides[4];
  float weight;
};

// dist_scratch: batch * sum_l(H_l * W_l) floats; rows_scratch: batch * out_h * out_w floats (used when
// blur_radius > 0); blur_taps: 2 * blur_radius + 1 floats in device memory; out: batch * out_h * out_w floats.
cudaError_t launch_anomaly_map(const LevelView* levels, int num_levels, int64_t batch, DType dtype, bool cosine,
                               int64_t out_h, int64_t out_w, const float* blur_taps, int blur_radius,
                               float* dist_scratch, float* rows_scratch, float* out, cudaStream_t stream);

}  // namespace anomaly_map
}  // namespace ad_fast
