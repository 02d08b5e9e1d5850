// ATen binding of the CUDA HOG kernels: checks, device guard, scratch allocation, current stream.
// Compiled only when torch has CUDA (setup.py adds *_cuda.cpp then).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "hog/hog_args.h"
#include "hog/hog_common.h"
#include "hog/hog_cuda.h"

namespace ad_fast {
namespace hog {
namespace {

HogInput to_input(at::ScalarType t) {
  switch (t) {
    case at::kByte:
      return HogInput::UInt8;
    case at::kHalf:
      return HogInput::Float16;
    case at::kBFloat16:
      return HogInput::BFloat16;
    case at::kFloat:
      return HogInput::Float32;
    case at::kDouble:
      return HogInput::Float64;
    default:
      TORCH_CHECK(false, "images must be uint8, float16, bfloat16, float32 or float64, got ", t);
  }
}

std::tuple<at::Tensor, at::Tensor> hog_cuda(const at::Tensor& images, int64_t orientations,
                                            at::IntArrayRef pixels_per_cell, at::IntArrayRef cells_per_block,
                                            c10::string_view block_norm, bool transform_sqrt, bool visualize) {
  AD_CHECK_CUDA(images);
  const HogGeometry g = check_hog_args(images, orientations, pixels_per_cell, cells_per_block, block_norm, visualize);
  const c10::cuda::CUDAGuard guard(images.device());
  const at::ScalarType out_dtype = hog_output_dtype(images.scalar_type());
  const auto out_options = images.options().dtype(out_dtype);
  at::Tensor descriptors =
      at::empty({g.batch, g.blocks_r, g.blocks_c, g.block_h, g.block_w, g.orientations}, out_options);
  at::Tensor hog_image =
      visualize ? at::empty({g.batch, 1, g.height, g.width}, out_options) : at::empty({0}, out_options);
  if (g.batch == 0) return {descriptors, hog_image};
  const int64_t pixels = cell_pixel_count(g);
  at::Tensor pixel_mag = at::empty({pixels}, images.options().dtype(at::kDouble));
  at::Tensor pixel_bin = at::empty({pixels}, images.options().dtype(at::kInt));
  at::Tensor hist = at::empty({g.batch, g.cells_r, g.cells_c, g.orientations}, images.options().dtype(at::kFloat));
  const bool is_byte = images.scalar_type() == at::kByte;
  HogLaunch launch{};
  launch.images = images.const_data_ptr();
  launch.input = to_input(images.scalar_type());
  for (int d = 0; d < 4; ++d) launch.strides[d] = images.stride(d);
  launch.geometry = g;
  launch.transform_sqrt = transform_sqrt;
  launch.double_compute = images.scalar_type() == at::kDouble || (is_byte && transform_sqrt);
  launch.double_output = out_dtype == at::kDouble;
  const Binning bins = make_binning(g.orientations);
  const LineOffsets lines = make_line_offsets(g.orientations, g.cell_h, g.cell_w);
  const cudaError_t err =
      launch_hog(launch, bins, lines, pixel_mag.mutable_data_ptr<double>(), pixel_bin.mutable_data_ptr<int>(),
                 hist.mutable_data_ptr<float>(), descriptors.mutable_data_ptr(),
                 visualize ? hog_image.mutable_data_ptr() : nullptr, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "hog CUDA kernel failed: ", cudaGetErrorString(err));
  return {descriptors, hog_image};
}

}  // namespace
}  // namespace hog
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CUDA, m) { m.impl("hog", &ad_fast::hog::hog_cuda); }
