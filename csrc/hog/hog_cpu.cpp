// CPU HOG kernel. Pass 1, one task per (image, cell row): load the rows it needs (any strides, optional sqrt),
// central differences per channel, the dominant channel, the bin of every pixel (fast float angle, exact float64
// rule near bin edges) and the cell histograms, accumulated in float32 in scikit-image's pixel order; the task
// also draws its rows of the HOG image. Pass 2, one task per (image, block row): block normalisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "hog/hog_args.h"
#include "hog/hog_common.h"

namespace ad_fast {
namespace hog {
namespace {

// Squared magnitude that picks the dominant channel (float products are exact in double). Comparing squares
// instead of scikit-image's np.hypot in its float type keeps the loop vectorised (a libm sqrt is not); the two
// orders differ only for float images whose channel magnitudes agree to the last float32 bit.
inline double squared_magnitude(float r, float c) {
  return static_cast<double>(r) * r + static_cast<double>(c) * c;
}
inline double squared_magnitude(double r, double c) { return r * r + c * c; }

struct ImageView {
  int64_t stride_b, stride_c, stride_h, stride_w;
};

// Per-task scratch, reused across the rows of one task.
template <typename T>
struct Scratch {
  std::vector<T> rows;                             // channels x loaded rows x loaded width
  std::vector<T> g_col, g_row, best_r, best_c;  // one pixel row
  std::vector<double> best_m;
  std::vector<float> position;  // approx_bin_position per pixel of the row
};

// Cell histograms of cell row `cell_row` of one image, written to hist_row [cells_c, n] (already zero).
template <typename scalar_t, typename T>
void cell_row_histograms(const scalar_t* image, const ImageView& view, const HogGeometry& g, int64_t cell_row,
                         bool transform_sqrt, const Binning& bins, float* hist_row, Scratch<T>& s) {
  const int64_t H = g.height, W = g.width, C = g.channels, n = g.orientations;
  const int64_t y0 = cell_row * g.cell_h;
  const int64_t y_lo = std::max<int64_t>(y0 - 1, 0), y_hi = std::min<int64_t>(y0 + g.cell_h, H - 1);
  const int64_t n_rows = y_hi - y_lo + 1;
  const int64_t used_w = g.cells_c * g.cell_w;
  const int64_t load_w = std::min<int64_t>(W, used_w + 1);
  s.rows.resize(C * n_rows * load_w);
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t r = 0; r < n_rows; ++r) {
      const scalar_t* src = image + c * view.stride_c + (y_lo + r) * view.stride_h;
      T* dst = s.rows.data() + (c * n_rows + r) * load_w;
      if (view.stride_w == 1) {
        for (int64_t x = 0; x < load_w; ++x) dst[x] = static_cast<T>(src[x]);
      } else {
        for (int64_t x = 0; x < load_w; ++x) dst[x] = static_cast<T>(src[x * view.stride_w]);
      }
      if (transform_sqrt) {
        for (int64_t x = 0; x < load_w; ++x) dst[x] = std::sqrt(dst[x]);
      }
    }
  }
  for (auto* v : {&s.g_col, &s.g_row, &s.best_r, &s.best_c}) v->assign(used_w, T(0));
  s.best_m.resize(used_w);
  s.position.resize(used_w);
  float* position = s.position.data();
  const float bins_per_radian = bins.bins_per_radian;
  const int64_t interior_end = std::min<int64_t>(used_w, W - 1);  // g_col is zero at x = 0 and x = W - 1
  const float area = static_cast<float>(g.cell_h * g.cell_w);
  for (int64_t y = y0; y < y0 + g.cell_h; ++y) {
    const bool row_grad = y >= 1 && y <= H - 2;
    T* g_col = s.g_col.data();
    T* g_row = s.g_row.data();
    T* best_r = s.best_r.data();
    T* best_c = s.best_c.data();
    double* best_m = s.best_m.data();
    for (int64_t c = 0; c < C; ++c) {
      const T* cur = s.rows.data() + (c * n_rows + (y - y_lo)) * load_w;
      for (int64_t x = 1; x < interior_end; ++x) g_col[x] = cur[x + 1] - cur[x - 1];
      if (row_grad) {
        const T* up = cur - load_w;
        const T* down = cur + load_w;
        for (int64_t x = 0; x < used_w; ++x) g_row[x] = down[x] - up[x];
      } else {
        std::fill(g_row, g_row + used_w, T(0));
      }
      if (c == 0) {
        for (int64_t x = 0; x < used_w; ++x) {
          best_r[x] = g_row[x];
          best_c[x] = g_col[x];
        }
        if (C > 1) {
          for (int64_t x = 0; x < used_w; ++x) best_m[x] = squared_magnitude(g_row[x], g_col[x]);
        }
      } else {
        for (int64_t x = 0; x < used_w; ++x) {
          const double m = squared_magnitude(g_row[x], g_col[x]);
          const bool wins = m > best_m[x];  // first channel wins ties (NumPy argmax)
          best_m[x] = wins ? m : best_m[x];
          best_r[x] = wins ? g_row[x] : best_r[x];
          best_c[x] = wins ? g_col[x] : best_c[x];
        }
      }
    }
    for (int64_t x = 0; x < used_w; ++x) {  // vectorised: fast angle of the whole row
      position[x] = approx_bin_position(static_cast<float>(best_r[x]), static_cast<float>(best_c[x]), bins_per_radian);
    }
    for (int64_t cell = 0; cell < g.cells_c; ++cell) {
      float* h = hist_row + cell * n;
      for (int64_t x = cell * g.cell_w; x < (cell + 1) * g.cell_w; ++x) {
        const double r = best_r[x], c = best_c[x];
        if (r == 0.0 && c == 0.0) continue;  // adds +0.0
        const double mag = std::sqrt(r * r + c * c);
        const int k = gradient_bin(r, c, position[x], bins);
        if (k >= 0) {
          h[k] = static_cast<float>(h[k] + mag);  // scikit-image's `float total; total += magnitude`
        } else if (k == kAllBins) {
          for (int64_t o = 0; o < n; ++o) h[o] = static_cast<float>(h[o] + mag);
        }
      }
    }
  }
  // skimage: float total / (cell_rows * cell_columns)
  for (int64_t i = 0; i < g.cells_c * n; ++i) hist_row[i] = hist_row[i] / area;
}

// Column endpoints of every bin's line in every cell column, deduplicated: a bin's line has one or two shapes
// along the columns (see LineOffsets), so each task draws every (bin, shape) once and stamps it into its cells.
struct ColumnShapes {
  std::vector<std::vector<AxisEnds>> shapes;  // [bin] -> distinct column endpoints
  std::vector<int> shape_of;                  // [bin * cells_c + cell_col] -> index into shapes[bin]
};

ColumnShapes make_column_shapes(const LineOffsets& lines, const HogGeometry& g) {
  ColumnShapes cs;
  cs.shapes.resize(g.orientations);
  cs.shape_of.resize(g.orientations * g.cells_c);
  for (int o = 0; o < g.orientations; ++o) {
    for (int64_t col = 0; col < g.cells_c; ++col) {
      const AxisEnds ends = col_ends(lines, o, col, g.cell_w);
      auto& list = cs.shapes[o];
      size_t j = 0;
      while (j < list.size() && (list[j].first != ends.first || list[j].last != ends.last)) ++j;
      if (j == list.size()) list.push_back(ends);
      cs.shape_of[o * g.cells_c + col] = static_cast<int>(j);
    }
  }
  return cs;
}

// Rows [cell_row * cell_h, (cell_row + 1) * cell_h) of one HOG image: zero, then each bin's line per cell, added
// in bin order in float64 and stored in out_t (as skimage's `hog_image[rr, cc] += hist`).
template <typename out_t>
void render_cell_row(const float* hist_row, const HogGeometry& g, const LineOffsets& lines, const ColumnShapes& cs,
                     int64_t cell_row, std::vector<int64_t>& offsets, std::vector<int>& starts, out_t* image) {
  const int64_t W = g.width, n = g.orientations;
  offsets.clear();
  starts.clear();
  for (int o = 0; o < n; ++o) {  // pixel offsets (from the cell's top-left pixel) of every (bin, column shape)
    const AxisEnds rows = row_ends(lines, o, cell_row, g.cell_h);
    for (const AxisEnds& cols : cs.shapes[o]) {
      starts.push_back(static_cast<int>(offsets.size()));
      for_each_line_pixel(rows, cols, [&](int u, int x) { offsets.push_back(u * W + x); });
    }
  }
  starts.push_back(static_cast<int>(offsets.size()));
  out_t* rows = image + cell_row * g.cell_h * W;
  std::fill(rows, rows + g.cell_h * W, out_t(0));
  for (int64_t cell = 0; cell < g.cells_c; ++cell) {
    out_t* base = rows + cell * g.cell_w;
    int first_shape = 0;  // index of (bin o, shape 0) in starts
    for (int o = 0; o < n; ++o) {
      const double v = hist_row[cell * n + o];
      const int shape = first_shape + cs.shape_of[o * g.cells_c + cell];
      first_shape += static_cast<int>(cs.shapes[o].size());
      if (v == 0.0) continue;
      for (int k = starts[shape]; k < starts[shape + 1]; ++k) {
        out_t& px = base[offsets[k]];
        px = static_cast<out_t>(static_cast<double>(px) + v);
      }
    }
  }
}

template <typename out_t>
void normalise_blocks(const float* hist, const HogGeometry& g, out_t* out) {
  const int64_t n = g.orientations, row_stride = g.cells_c * n;
  const int64_t block_len = int64_t(g.block_h) * g.block_w * n;
  cpu::parallel_for(0, g.batch * g.blocks_r, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / g.blocks_r, br = task % g.blocks_r;
      for (int64_t bc = 0; bc < g.blocks_c; ++bc) {
        const float* corner = hist + ((b * g.cells_r + br) * g.cells_c + bc) * n;
        normalise_block(corner, row_stride, g.block_h, g.block_w, g.orientations, g.norm,
                        out + (task * g.blocks_c + bc) * block_len);
      }
    }
  });
}

template <typename scalar_t, typename T, typename out_t>
void hog_cpu_impl(const at::Tensor& images, const HogGeometry& g, bool transform_sqrt, at::Tensor& hist,
                  at::Tensor& descriptors, at::Tensor* hog_image) {
  const Binning bins = make_binning(g.orientations);
  const LineOffsets lines = make_line_offsets(g.orientations, g.cell_h, g.cell_w);
  const ColumnShapes shapes = make_column_shapes(lines, g);
  const ImageView view{images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
  const scalar_t* src = images.const_data_ptr<scalar_t>();
  float* hist_ptr = hist.mutable_data_ptr<float>();
  out_t* image_ptr = hog_image != nullptr ? hog_image->mutable_data_ptr<out_t>() : nullptr;
  const int64_t row_len = g.cells_c * g.orientations;
  cpu::parallel_for(0, g.batch * g.cells_r, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> scratch;
    std::vector<int64_t> line_offsets;
    std::vector<int> line_starts;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / g.cells_r, cell_row = task % g.cells_r;
      float* hist_row = hist_ptr + task * row_len;
      cell_row_histograms<scalar_t, T>(src + b * view.stride_b, view, g, cell_row, transform_sqrt, bins, hist_row,
                                       scratch);
      if (image_ptr != nullptr) {
        render_cell_row<out_t>(hist_row, g, lines, shapes, cell_row, line_offsets, line_starts,
                               image_ptr + b * g.height * g.width);
      }
    }
  });
  if (image_ptr != nullptr) {  // rows below the last full cell row stay zero
    const int64_t drawn = g.cells_r * g.cell_h * g.width, total = g.height * g.width;
    for (int64_t b = 0; b < g.batch; ++b) {
      std::fill(image_ptr + b * total + drawn, image_ptr + (b + 1) * total, out_t(0));
    }
  }
  normalise_blocks<out_t>(hist_ptr, g, descriptors.mutable_data_ptr<out_t>());
}

std::tuple<at::Tensor, at::Tensor> hog_cpu(const at::Tensor& images, int64_t orientations,
                                           at::IntArrayRef pixels_per_cell, at::IntArrayRef cells_per_block,
                                           c10::string_view block_norm, bool transform_sqrt, bool visualize) {
  AD_CHECK_CPU(images);
  const HogGeometry g = check_hog_args(images, orientations, pixels_per_cell, cells_per_block, block_norm, visualize);
  const auto out_options = images.options().dtype(hog_output_dtype(images.scalar_type()));
  at::Tensor descriptors =
      at::empty({g.batch, g.blocks_r, g.blocks_c, g.block_h, g.block_w, g.orientations}, out_options);
  at::Tensor hog_image =
      visualize ? at::empty({g.batch, 1, g.height, g.width}, out_options) : at::empty({0}, out_options);
  if (g.batch == 0) return {descriptors, hog_image};
  at::Tensor hist = at::zeros({g.batch, g.cells_r, g.cells_c, g.orientations}, images.options().dtype(at::kFloat));
  at::Tensor* image_out = visualize ? &hog_image : nullptr;
  switch (images.scalar_type()) {
    case at::kByte:  // integer gradients are exact in float32; after sqrt scikit-image works in float64
      if (transform_sqrt) {
        hog_cpu_impl<uint8_t, double, float>(images, g, true, hist, descriptors, image_out);
      } else {
        hog_cpu_impl<uint8_t, float, float>(images, g, false, hist, descriptors, image_out);
      }
      break;
    case at::kHalf:
      hog_cpu_impl<at::Half, float, float>(images, g, transform_sqrt, hist, descriptors, image_out);
      break;
    case at::kBFloat16:
      hog_cpu_impl<at::BFloat16, float, float>(images, g, transform_sqrt, hist, descriptors, image_out);
      break;
    case at::kFloat:
      hog_cpu_impl<float, float, float>(images, g, transform_sqrt, hist, descriptors, image_out);
      break;
    default:
      hog_cpu_impl<double, double, double>(images, g, transform_sqrt, hist, descriptors, image_out);
  }
  return {descriptors, hog_image};
}

}  // namespace
}  // namespace hog
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CPU, m) { m.impl("hog", &ad_fast::hog::hog_cpu); }
