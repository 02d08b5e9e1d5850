// HOG helpers shared by the CPU kernel, the CUDA kernels and the CUDA binding; no torch headers (the .cu includes
// this). They pin down scikit-image's exact semantics (skimage 0.26 feature/_hog.py and _hoghistogram.pyx):
// the float64 orientation `rad2deg(atan2(g_row, g_col)) % 180`, bin edges `(180 / n) * i`, the block norms,
// and the Bresenham stencils of the visualisation.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define AD_HOG_HD __host__ __device__ __forceinline__
#else
#define AD_HOG_HD inline
#endif

namespace ad_fast {
namespace hog {

constexpr int kMaxOrientations = 180;
constexpr double kPi = 3.14159265358979323846;
constexpr double kEps = 1e-5;
// A pixel whose fast float32 angle is within this many degrees of a bin edge is re-binned exactly in float64.
constexpr double kEdgeMarginDegrees = 1e-3;
// Bin codes besides 0..n-1.
constexpr int kNoBin = -1;    // the orientation rounded to >= the last edge (skimage votes nowhere)
constexpr int kAllBins = -2;  // NaN orientation: skimage's comparisons all fail, so it votes into every bin

enum class BlockNorm : int { L1 = 0, L1Sqrt = 1, L2 = 2, L2Hys = 3 };

AD_HOG_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);  // no FMA contraction: the product must round exactly as NumPy's
#else
  return a * b;
#endif
}

// NumPy's float64 `np.rad2deg(np.arctan2(g_row, g_col)) % 180`: in [0, 180], 180.0 when a tiny negative angle
// rounds up (scikit-image then drops the pixel).
AD_HOG_HD double orientation_degrees(double g_row, double g_col) {
  double mod = fmod(mul_rn(atan2(g_row, g_col), 180.0 / kPi), 180.0);
  if (mod != 0.0) {
    if (mod < 0.0) mod += 180.0;
  } else {
    mod = 0.0;
  }
  return mod;
}

// scikit-image's bin of a gradient: i with edges[i] <= ori < edges[i + 1] (edges: n + 1 values), kNoBin or
// kAllBins.
AD_HOG_HD int exact_bin(double g_row, double g_col, const double* edges, int n) {
  const double ori = orientation_degrees(g_row, g_col);
  if (ori != ori) return kAllBins;
  int k = static_cast<int>(ori / edges[1]);
  k = k < 0 ? 0 : (k > n - 1 ? n - 1 : k);
  while (k > 0 && ori < edges[k]) --k;
  while (k < n && ori >= edges[k + 1]) ++k;
  return k < n ? k : kNoBin;
}

// atan(a) for a in [0, 1], |error| < 4e-7 rad (odd minimax-style polynomial, float32).
AD_HOG_HD float atan_unit(float a) {
  const float a2 = a * a;
  float p = 0.006811781786382198f;
  p = p * a2 - 0.03360419720411301f;
  p = p * a2 + 0.07962366193532944f;
  p = p * a2 - 0.1323334276676178f;
  p = p * a2 + 0.19807817041873932f;
  p = p * a2 - 0.3331736922264099f;
  p = p * a2 + 0.9999961256980896f;
  return p * a;
}

// Unsigned gradient angle in units of bins, ~[0, n]: approximate (see kEdgeMarginDegrees), branch-free.
AD_HOG_HD float approx_bin_position(float g_row, float g_col, float bins_per_radian) {
  const float sign = g_row < 0.f ? -1.f : 1.f;
  const float y = g_row * sign, x = g_col * sign;  // fold into the upper half plane: y >= 0
  const float ax = fabsf(x);
  const float lo = fminf(y, ax), hi = fmaxf(y, ax);
  float t = atan_unit(lo / fmaxf(hi, 1e-30f));
  t = y > ax ? 1.5707963267948966f - t : t;
  t = x < 0.f ? 3.14159265358979f - t : t;
  return t * bins_per_radian;
}

// Per-call binning constants.
struct Binning {
  int n;
  double edges[kMaxOrientations + 1];
  float bins_per_radian;
  float margin;  // kEdgeMarginDegrees in bin units
  int bin_0, bin_45, bin_90, bin_135;  // exact bins of the directions integer gradients hit exactly
};

inline Binning make_binning(int n) {
  Binning b{};
  b.n = n;
  const double per_bin = 180.0 / n;
  for (int i = 0; i <= n; ++i) b.edges[i] = per_bin * i;
  b.bins_per_radian = static_cast<float>(n / kPi);
  b.margin = static_cast<float>(kEdgeMarginDegrees / per_bin);
  b.bin_0 = exact_bin(0.0, 1.0, b.edges, n);
  b.bin_45 = exact_bin(1.0, 1.0, b.edges, n);
  b.bin_90 = exact_bin(1.0, 0.0, b.edges, n);
  b.bin_135 = exact_bin(1.0, -1.0, b.edges, n);
  return b;
}

// Bin of a gradient with non-zero magnitude: exact shortcuts for axis/diagonal directions, the fast angle when
// it is safely inside a bin, the float64 scikit-image rule otherwise.
AD_HOG_HD int gradient_bin(double g_row, double g_col, const Binning& b) {
  if (g_row == 0.0) return b.bin_0;  // atan2(+-0, g_col) is 0 or +-pi: 0 degrees after % 180
  if (g_col == 0.0) return b.bin_90;
  if (g_row == g_col || g_row == -g_col) return (g_row > 0.0) == (g_col > 0.0) ? b.bin_45 : b.bin_135;
  const float p = approx_bin_position(static_cast<float>(g_row), static_cast<float>(g_col), b.bins_per_radian);
  const int k = static_cast<int>(p);
  const float frac = p - static_cast<float>(k);
  if (frac >= b.margin && frac <= 1.f - b.margin && k >= 0 && k < b.n) return k;
  return exact_bin(g_row, g_col, b.edges, b.n);
}

// Scale factors of one block for scikit-image's norms: out = norm(v) where
//   L1: v / (sum|v| + eps); L1-sqrt: sqrt(v / (sum|v| + eps)); L2: v / sqrt(sum v^2 + eps^2);
//   L2-Hys: w = min(v / sqrt(sum v^2 + eps^2), 0.2), out = w / sqrt(sum w^2 + eps^2).
AD_HOG_HD double block_norm_value(double v, BlockNorm norm, double first, double second) {
  switch (norm) {
    case BlockNorm::L1:
      return v / first;
    case BlockNorm::L1Sqrt:
      return sqrt(v / first);
    case BlockNorm::L2:
      return v / first;
    default: {
      const double w = fmin(v / first, 0.2);
      return w / second;
    }
  }
}

// Visualisation stencils: for bin i the pixels (u, v) of the cell's line, packed u * cell_w + v, in
// offsets[starts[i] .. starts[i + 1]). Built exactly like skimage (radius min(cell) // 2 - 1, Bresenham).
struct Stencils {
  std::vector<int> starts;
  std::vector<int> offsets;
};

inline void line_pixels(int r0, int c0, int r1, int c1, int cell_w, std::vector<int>& out) {
  const int dr = r1 > r0 ? r1 - r0 : r0 - r1, dc = c1 > c0 ? c1 - c0 : c0 - c1;
  const int step_r = r1 - r0 > 0 ? 1 : -1, step_c = c1 - c0 > 0 ? 1 : -1;
  const bool steep = dr > dc;
  int a = steep ? r0 : c0, b = steep ? c0 : r0;  // walk the major axis a, step the minor axis b
  const int step_a = steep ? step_r : step_c, step_b = steep ? step_c : step_r;
  const int da = steep ? dr : dc, db = steep ? dc : dr;
  int error = 2 * db - da;
  for (int i = 0; i < da; ++i) {
    out.push_back(steep ? a * cell_w + b : b * cell_w + a);
    while (error >= 0) {
      b += step_b;
      error -= 2 * da;
    }
    a += step_a;
    error += 2 * db;
  }
  out.push_back(r1 * cell_w + c1);
}

inline Stencils make_stencils(int n, int cell_h, int cell_w) {
  Stencils s;
  const int radius = (cell_h < cell_w ? cell_h : cell_w) / 2 - 1;
  const int centre_r = cell_h / 2, centre_c = cell_w / 2;
  s.starts.push_back(0);
  for (int i = 0; i < n; ++i) {
    const double mid = kPi * (i + 0.5) / n;
    // volatile: keep `centre - radius * sin` from being contracted into an FMA (NumPy rounds the product).
    volatile double d_r = radius * std::sin(mid);
    volatile double d_c = radius * std::cos(mid);
    line_pixels(static_cast<int>(centre_r - d_c), static_cast<int>(centre_c + d_r), static_cast<int>(centre_r + d_c),
                static_cast<int>(centre_c - d_r), cell_w, s.offsets);
    s.starts.push_back(static_cast<int>(s.offsets.size()));
  }
  return s;
}

}  // namespace hog
}  // namespace ad_fast
