// HOG helpers shared by the CPU kernel, the CUDA kernels and the CUDA binding; no torch headers (the .cu includes
// this). They pin down scikit-image's exact semantics (skimage 0.26 feature/_hog.py and _hoghistogram.pyx):
// the float64 orientation `rad2deg(atan2(g_row, g_col)) % 180`, bin edges `(180 / n) * i`, the block norms,
// and the Bresenham lines of the visualisation.
#pragma once

#include <cmath>
#include <cstdint>

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

// Sizes of one call: images [batch, channels, height, width], cells_r x cells_c cells, blocks_r x blocks_c blocks.
struct HogGeometry {
  int64_t batch, channels, height, width;
  int orientations, cell_h, cell_w, block_h, block_w;
  int64_t cells_r, cells_c, blocks_r, blocks_c;
  BlockNorm norm;
};

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

// Unsigned gradient angle in units of bins, ~[0, n]: approximate (see kEdgeMarginDegrees), branch-free (plain
// compares, not fminf/fmaxf, which GCC turns into libm calls), so the CPU loop over a pixel row vectorises.
AD_HOG_HD float approx_bin_position(float g_row, float g_col, float bins_per_radian) {
  const float sign = g_row < 0.f ? -1.f : 1.f;
  const float y = g_row * sign, x = g_col * sign;  // fold into the upper half plane: y >= 0
  const float ax = x < 0.f ? -x : x;
  const bool steep = y > ax;
  const float lo = steep ? ax : y, hi = steep ? y : ax;
  float t = atan_unit(lo / (hi > 1e-30f ? hi : 1e-30f));
  t = steep ? 1.5707963267948966f - t : t;
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

// Bin of a gradient with non-zero magnitude, given its approx_bin_position: exact shortcuts for the axis and
// diagonal directions (integer gradients hit them exactly), the fast position when it is safely inside a bin, the
// float64 scikit-image rule otherwise.
AD_HOG_HD int gradient_bin(double g_row, double g_col, float position, const Binning& b) {
  if (g_row == 0.0) return b.bin_0;  // atan2(+-0, g_col) is 0 or +-pi: 0 degrees after % 180
  if (g_col == 0.0) return b.bin_90;
  if (g_row == g_col || g_row == -g_col) return (g_row > 0.0) == (g_col > 0.0) ? b.bin_45 : b.bin_135;
  const int k = static_cast<int>(position);
  const float frac = position - static_cast<float>(k);
  if (frac >= b.margin && frac <= 1.f - b.margin && k >= 0 && k < b.n) return k;
  return exact_bin(g_row, g_col, b.edges, b.n);
}

AD_HOG_HD int gradient_bin(double g_row, double g_col, const Binning& b) {
  return gradient_bin(g_row, g_col,
                      approx_bin_position(static_cast<float>(g_row), static_cast<float>(g_col), b.bins_per_radian), b);
}

// np.minimum(v, 0.2): NaN stays NaN (fmin would drop it).
AD_HOG_HD double clip_hys(double v) { return v > 0.2 ? 0.2 : v; }

// One block normalised as scikit-image does (eps = 1e-5, float64):
//   L1: v / (sum|v| + eps); L1-sqrt: sqrt(v / (sum|v| + eps)); L2: v / sqrt(sum v^2 + eps^2);
//   L2-Hys: w = min(v / sqrt(sum v^2 + eps^2), 0.2), out = w / sqrt(sum w^2 + eps^2).
// corner: the block's top-left cell histogram; row_stride: floats between cell rows (cells_c * n);
// dst: block_h * block_w * n values in (cell row, cell col, bin) order.
template <typename out_t>
AD_HOG_HD void normalise_block(const float* corner, int64_t row_stride, int block_h, int block_w, int n,
                               BlockNorm norm, out_t* dst) {
  double first = 0.0, second = 0.0;
  for (int by = 0; by < block_h; ++by)
    for (int i = 0; i < block_w * n; ++i) {
      const double v = corner[by * row_stride + i];
      first += (norm == BlockNorm::L1 || norm == BlockNorm::L1Sqrt) ? fabs(v) : v * v;
    }
  first = (norm == BlockNorm::L1 || norm == BlockNorm::L1Sqrt) ? first + kEps : sqrt(first + kEps * kEps);
  if (norm == BlockNorm::L2Hys) {
    for (int by = 0; by < block_h; ++by)
      for (int i = 0; i < block_w * n; ++i) {
        const double w = clip_hys(corner[by * row_stride + i] / first);
        second += w * w;
      }
    second = sqrt(second + kEps * kEps);
  }
  for (int by = 0; by < block_h; ++by)
    for (int i = 0; i < block_w * n; ++i) {
      const double v = corner[by * row_stride + i];
      double out;
      switch (norm) {
        case BlockNorm::L1Sqrt:
          out = sqrt(v / first);
          break;
        case BlockNorm::L2Hys:
          out = clip_hys(v / first) / second;
          break;
        default:
          out = v / first;
      }
      dst[by * block_w * n + i] = static_cast<out_t>(out);
    }
}

// Line of bin o in a cell of the visualisation: skimage draws skimage.draw.line(int(cy - d_c), int(cx + d_r),
// int(cy + d_c), int(cx - d_r)) around the cell centre (cy, cx) in image coordinates, with d_r, d_c = radius *
// (sin, cos)(pi * (o + 0.5) / n) and radius = min(cell) // 2 - 1. The truncation happens after adding the
// offset to the absolute centre, so a line can differ by a pixel between cells (e.g. 2 sin(pi / 6) =
// 0.9999999999999999 rounds up when added to a larger centre): endpoints are computed per cell, never cached.
struct LineOffsets {
  double d_r[kMaxOrientations];
  double d_c[kMaxOrientations];
};

inline LineOffsets make_line_offsets(int n, int cell_h, int cell_w) {
  LineOffsets lines{};
  const int radius = (cell_h < cell_w ? cell_h : cell_w) / 2 - 1;
  for (int o = 0; o < n; ++o) {
    const double mid = kPi * (o + 0.5) / n;
    // volatile: keep `centre - radius * sin` from being contracted into an FMA later (NumPy rounds the product).
    volatile double d_r = radius * std::sin(mid);
    volatile double d_c = radius * std::cos(mid);
    lines.d_r[o] = d_r;
    lines.d_c[o] = d_c;
  }
  return lines;
}

// Endpoints of bin o's line along one axis of a cell, relative to the cell's first pixel on that axis: rows use
// (lo, hi) = (start - d_c, start + d_c) and columns (start + d_r, start - d_r), truncated in absolute coordinates.
struct AxisEnds {
  int first, last;
};

AD_HOG_HD AxisEnds row_ends(const LineOffsets& lines, int o, int64_t cell_row, int cell_h) {
  const int64_t top = cell_row * cell_h;
  const double cy = static_cast<double>(top + cell_h / 2);
  return {static_cast<int>(static_cast<int64_t>(cy - lines.d_c[o]) - top),
          static_cast<int>(static_cast<int64_t>(cy + lines.d_c[o]) - top)};
}

AD_HOG_HD AxisEnds col_ends(const LineOffsets& lines, int o, int64_t cell_col, int cell_w) {
  const int64_t left = cell_col * cell_w;
  const double cx = static_cast<double>(left + cell_w / 2);
  return {static_cast<int>(static_cast<int64_t>(cx + lines.d_r[o]) - left),
          static_cast<int>(static_cast<int64_t>(cx - lines.d_r[o]) - left)};
}

// Calls fn(u, v) for every pixel of the line (rows.first, cols.first) -> (rows.last, cols.last): integer Bresenham
// exactly as skimage.draw.line (both ends included, no pixel twice).
template <typename Fn>
AD_HOG_HD void for_each_line_pixel(AxisEnds rows, AxisEnds cols, Fn&& fn) {
  const int r0 = rows.first, r1 = rows.last, c0 = cols.first, c1 = cols.last;
  const int dr = r1 > r0 ? r1 - r0 : r0 - r1, dc = c1 > c0 ? c1 - c0 : c0 - c1;
  const int step_r = r1 - r0 > 0 ? 1 : -1, step_c = c1 - c0 > 0 ? 1 : -1;
  const bool steep = dr > dc;
  int a = steep ? r0 : c0, b = steep ? c0 : r0;  // walk the major axis a, step the minor axis b
  const int step_a = steep ? step_r : step_c, step_b = steep ? step_c : step_r;
  const int da = steep ? dr : dc, db = steep ? dc : dr;
  int error = 2 * db - da;
  for (int i = 0; i < da; ++i) {
    if (steep) {
      fn(a, b);
    } else {
      fn(b, a);
    }
    while (error >= 0) {
      b += step_b;
      error -= 2 * da;
    }
    a += step_a;
    error += 2 * db;
  }
  fn(r1, c1);
}

}  // namespace hog
}  // namespace ad_fast
