// ATen binding of the CUDA anomaly map: checks, device guard, scratch allocation, current stream.
// Compiled only when torch has CUDA (setup.py adds *_cuda.cpp then).
#include <ATen/ATen.h>

#include <cmath>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "anomaly_map/anomaly_map_common.h"
#include "anomaly_map/anomaly_map_cuda.h"
#include "common/checks.h"
#include "common/cuda_dtype.h"

namespace ad_fast {
namespace anomaly_map {
namespace {

at::Tensor anomaly_map_cuda(at::TensorList feats_a, at::TensorList feats_b, at::IntArrayRef out_size,
                            c10::string_view metric, at::ArrayRef<double> weights, double blur_sigma) {
  AD_CHECK(!feats_a.empty(), "feats_a must hold at least one feature map");
  AD_CHECK(feats_a.size() == feats_b.size(), "feats_a and feats_b must have the same number of levels");
  AD_CHECK(static_cast<int>(feats_a.size()) <= kMaxLevels, "at most ", kMaxLevels, " levels are supported on CUDA");
  AD_CHECK(weights.size() == feats_a.size(), "weights must have one entry per level, got ", weights.size());
  AD_CHECK(out_size.size() == 2 && out_size[0] > 0 && out_size[1] > 0, "out_size must be two positive ints");
  AD_CHECK(metric == "cosine" || metric == "l2", "metric must be 'cosine' or 'l2', got '", std::string(metric), "'");
  AD_CHECK(std::isfinite(blur_sigma) && blur_sigma <= kMaxBlurSigma, "blur_sigma must be finite and at most ",
           kMaxBlurSigma, " (<= 0: no blur), got ", blur_sigma);
  const at::Tensor& first = feats_a[0];
  const c10::cuda::CUDAGuard guard(first.device());
  const int64_t B = first.size(0), H = out_size[0], W = out_size[1];
  const DType dtype = cuda_float_dtype(first.scalar_type(), "feature maps");
  std::vector<LevelView> views;
  int64_t scratch = 0;
  for (size_t l = 0; l < feats_a.size(); ++l) {
    const at::Tensor& a = feats_a[l];
    const at::Tensor& b = feats_b[l];
    AD_CHECK_NDIM(a, 4);
    AD_CHECK(a.device() == first.device() && b.device() == first.device(), "all feature maps must be on ", first.device());
    AD_CHECK(a.sizes() == b.sizes(), "feats_a[", l, "] and feats_b[", l, "] must have the same shape");
    AD_CHECK(a.scalar_type() == first.scalar_type() && b.scalar_type() == first.scalar_type(),
             "all feature maps must share one dtype");
    AD_CHECK(a.size(0) == B, "every level must have batch size ", B);
    AD_CHECK(a.size(1) > 0 && a.size(2) > 0 && a.size(3) > 0, "feats_a[", l, "] must be non-empty, got ", a.sizes());
    LevelView v{a.const_data_ptr(), b.const_data_ptr(), a.size(1), a.size(2), a.size(3), {}, {},
                static_cast<float>(weights[l])};
    for (int d = 0; d < 4; ++d) {
      v.a_strides[d] = a.stride(d);
      v.b_strides[d] = b.stride(d);
    }
    views.push_back(v);
    scratch += B * a.size(2) * a.size(3);
  }
  const auto f32 = first.options().dtype(at::kFloat);
  at::Tensor out = at::empty({B, 1, H, W}, f32);
  if (B == 0) return out;
  at::Tensor dist = at::empty({scratch}, f32);
  const int radius = blur_radius(blur_sigma);
  at::Tensor rows, taps;
  if (radius > 0) {
    rows = at::empty({B, H, W}, f32);
    const std::vector<double> host_taps = gaussian_taps(blur_sigma);
    taps = at::tensor(std::vector<float>(host_taps.begin(), host_taps.end()), at::kFloat).to(first.device());
  }
  const cudaError_t err = launch_anomaly_map(
      views.data(), static_cast<int>(views.size()), B, dtype, metric == "cosine", H, W,
      radius > 0 ? taps.const_data_ptr<float>() : nullptr, radius, dist.mutable_data_ptr<float>(),
      radius > 0 ? rows.mutable_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "anomaly_map CUDA kernel failed: ", cudaGetErrorString(err));
  TORCH_CHECK_VALUE(at::isfinite(out).all().item<bool>(), "feats_a/feats_b: the anomaly map is not finite (NaN or Inf "
                    "in the features, or distances overflowing float32)");
  return out;
}

}  // namespace
}  // namespace anomaly_map
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CUDA, m) { m.impl("anomaly_map", &ad_fast::anomaly_map::anomaly_map_cuda); }
