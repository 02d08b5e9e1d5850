// Launcher of the CUDA HOG kernels: raw pointers, sizes, strides and a stream; no torch types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "hog/hog_common.h"

namespace ad_fast {
namespace hog {

enum class HogInput : int { UInt8 = 0, Float16 = 1, BFloat16 = 2, Float32 = 3, Float64 = 4 };

struct HogLaunch {
  const void* images;
  HogInput input;
  int64_t strides[4];  // elements, in (B, C, H, W) order
  HogGeometry geometry;
  bool transform_sqrt;
  bool double_compute;  // gradients in float64 (float64 input, or uint8 with transform_sqrt), else float32
  bool double_output;   // descriptors and HOG image in float64 (float64 input), else float32
};

// Number of pixels that fall into cells (the scratch size): batch * cells_r * cell_h * cells_c * cell_w.
inline int64_t cell_pixel_count(const HogGeometry& g) {
  return g.batch * g.cells_r * g.cell_h * g.cells_c * g.cell_w;
}

// pixel_mag (double) and pixel_bin (int): cell_pixel_count(g) each; hist: batch * cells_r * cells_c * n floats;
// descriptors: batch * blocks_r * blocks_c * block_h * block_w * n values; hog_image: batch * height * width values
// or nullptr. Output element type: double when double_output, else float.
cudaError_t launch_hog(const HogLaunch& launch, const Binning& bins, const LineOffsets& lines, double* pixel_mag,
                       int* pixel_bin, float* hist, void* descriptors, void* hog_image, cudaStream_t stream);

}  // namespace hog
}  // namespace ad_fast
