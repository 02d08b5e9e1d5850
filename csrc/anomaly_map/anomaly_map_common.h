// Geometry shared by the CPU and CUDA anomaly-map kernels: bilinear source coordinates (PyTorch's
// align_corners=False rule), the reflect border rule and the Gaussian taps. Header-only, no torch types,
// so the .cu includes it too.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#ifdef __CUDACC__
#define AD_HOST_DEVICE __host__ __device__
#else
#define AD_HOST_DEVICE
#endif

namespace ad_fast {
namespace anomaly_map {

// Bilinear taps along one axis for output index dst: src = (dst + 0.5) * in/out - 0.5, clamped at 0,
// exactly as ATen's upsample_bilinear2d with align_corners=False and no explicit scale factor.
// Computed in T (float for float32/half inputs, double for float64), as ATen does.
template <typename T>
struct LinearTap {
  int64_t i0, i1;
  T w1;  // weight of i1; i0 gets 1 - w1
};

template <typename T>
AD_HOST_DEVICE inline LinearTap<T> linear_tap(int64_t dst, int64_t in_size, int64_t out_size) {
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  T src = scale * (static_cast<T>(dst) + T(0.5)) - T(0.5);
  if (src < T(0)) src = T(0);
  int64_t i0 = static_cast<int64_t>(src);
  if (i0 > in_size - 1) i0 = in_size - 1;
  const int64_t i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  return {i0, i1, src - static_cast<T>(i0)};
}

// Reflect (mirror without repeating the edge sample: d c b | a b c d | c b a), applied repeatedly so any
// blur radius works on any size; identical to torch's "reflect" padding and scipy's "mirror" mode.
AD_HOST_DEVICE inline int64_t reflect_index(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i = i < 0 ? -i : i;
  i %= period;
  return i >= n ? period - i : i;
}

// Largest accepted blur sigma (radius 4000): the entry points reject more, so the radius always fits an int and
// the taps stay small. A Gaussian that wide is already flat over any anomaly map.
constexpr double kMaxBlurSigma = 1000.0;

// Gaussian radius used by PatchCore/anomalib and by scipy.ndimage.gaussian_filter(truncate=4): int(4 sigma + 0.5).
// sigma must be at most kMaxBlurSigma (checked by the callers).
inline int blur_radius(double sigma) { return sigma > 0 ? static_cast<int>(4.0 * sigma + 0.5) : 0; }

// Normalised Gaussian taps, 2 * radius + 1 of them.
inline std::vector<double> gaussian_taps(double sigma) {
  const int radius = blur_radius(sigma);
  std::vector<double> taps(2 * radius + 1);
  double total = 0.0;
  for (int i = -radius; i <= radius; ++i) {
    taps[i + radius] = std::exp(-0.5 * (i * i) / (sigma * sigma));
    total += taps[i + radius];
  }
  for (double& t : taps) t /= total;
  return taps;
}

}  // namespace anomaly_map
}  // namespace ad_fast
