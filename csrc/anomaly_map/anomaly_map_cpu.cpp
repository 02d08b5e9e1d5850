// CPU kernel of the fused anomaly map: per-level channel distance in one pass over each feature pair,
// then one pass over the output that upsamples every level, sums them and blurs the rows, and one vertical
// blur pass. Intermediates are the small per-level distance maps and, with a blur, one output-sized buffer.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "anomaly_map/anomaly_map_common.h"
#include "common/checks.h"
#include "common/cpu_isa.h"

namespace ad_fast {
namespace anomaly_map {
namespace {

// Distance of one image row of one level: dist[w] for w in [0, W). Sums are accumulated in double: float32 features
// up to FLT_MAX then neither overflow the squared norms nor their product (1 - x.y / (|x| |y|) stays exact).
template <typename scalar_t>
void row_distance(const scalar_t* a, const scalar_t* b, int64_t C, int64_t W, int64_t as_c, int64_t as_w,
                  int64_t bs_c, int64_t bs_w, bool cosine, scalar_t* dist, std::vector<double>& acc) {
  acc.assign(3 * W, 0.0);
  double* dot = acc.data();
  double* na = dot + W;
  double* nb = na + W;
  const bool width_contiguous = as_w == 1 && bs_w == 1;
  if (width_contiguous) {  // NCHW: stream each channel's row, the w loop vectorises
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* ar = a + c * as_c;
      const scalar_t* br = b + c * bs_c;
      if (cosine) {
        for (int64_t w = 0; w < W; ++w) {
          const double x = ar[w], y = br[w];
          dot[w] += x * y;
          na[w] += x * x;
          nb[w] += y * y;
        }
      } else {
        for (int64_t w = 0; w < W; ++w) {
          const double d = static_cast<double>(ar[w]) - static_cast<double>(br[w]);
          dot[w] += d * d;
        }
      }
    }
  } else {  // channels-last or other strides: reduce over channels pixel by pixel
    for (int64_t w = 0; w < W; ++w) {
      const scalar_t* ap = a + w * as_w;
      const scalar_t* bp = b + w * bs_w;
      double s_dot = 0, s_na = 0, s_nb = 0;
      for (int64_t c = 0; c < C; ++c) {
        const double x = ap[c * as_c], y = bp[c * bs_c];
        if (cosine) {
          s_dot += x * y;
          s_na += x * x;
          s_nb += y * y;
        } else {
          s_dot += (x - y) * (x - y);
        }
      }
      dot[w] = s_dot;
      na[w] = s_na;
      nb[w] = s_nb;
    }
  }
  // 1 - x.y / max(|x| |y|, eps), eps = 1e-8: torch.nn.functional.cosine_similarity's rule (|x| |y| as a product
  // of square roots, so float64 features near DBL_MAX do not overflow it either).
  const double eps = 1e-8;
  for (int64_t w = 0; w < W; ++w) {
    dist[w] = static_cast<scalar_t>(cosine ? 1.0 - dot[w] / std::max(std::sqrt(na[w]) * std::sqrt(nb[w]), eps)
                                           : std::sqrt(dot[w]));
  }
}

template <typename scalar_t>
at::Tensor level_distance(const at::Tensor& a, const at::Tensor& b, bool cosine) {
  const int64_t B = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  at::Tensor dist = at::empty({B, H, W}, a.options().memory_format(at::MemoryFormat::Contiguous));
  const scalar_t* a_ptr = a.const_data_ptr<scalar_t>();
  const scalar_t* b_ptr = b.const_data_ptr<scalar_t>();
  scalar_t* d_ptr = dist.mutable_data_ptr<scalar_t>();
  const auto as = a.strides();
  const auto bs = b.strides();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, C * W / 64));
  cpu::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> acc;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      row_distance<scalar_t>(a_ptr + n * as[0] + h * as[2], b_ptr + n * bs[0] + h * bs[2], C, W, as[1], as[3], bs[1],
                             bs[3], cosine, d_ptr + row * W, acc);
    }
  });
  return dist;
}

template <typename scalar_t>
struct LevelTaps {
  std::vector<LinearTap<scalar_t>> x;  // per output column
  std::vector<LinearTap<scalar_t>> y;  // per output row
};

template <typename scalar_t>
void upsample_sum_rows(const std::vector<at::Tensor>& dists, const std::vector<LevelTaps<scalar_t>>& taps,
                       const std::vector<double>& weights, int64_t B, int64_t H, int64_t W, scalar_t* dst,
                       const std::vector<scalar_t>& blur_taps) {
  const int radius = static_cast<int>(blur_taps.size() / 2);
  cpu::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> row(W);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, y = r % H;
      std::fill(row.begin(), row.end(), scalar_t(0));
      for (size_t l = 0; l < dists.size(); ++l) {
        const int64_t h_l = dists[l].size(1), w_l = dists[l].size(2);
        const scalar_t* d = dists[l].const_data_ptr<scalar_t>() + n * h_l * w_l;
        const LinearTap<scalar_t> ty = taps[l].y[y];
        const scalar_t* r0 = d + ty.i0 * w_l;
        const scalar_t* r1 = d + ty.i1 * w_l;
        const scalar_t wy1 = ty.w1, wy0 = scalar_t(1) - ty.w1, wl = static_cast<scalar_t>(weights[l]);
        const LinearTap<scalar_t>* tx = taps[l].x.data();
        for (int64_t x = 0; x < W; ++x) {
          const scalar_t wx1 = tx[x].w1, wx0 = scalar_t(1) - tx[x].w1;
          const scalar_t top = wx0 * r0[tx[x].i0] + wx1 * r0[tx[x].i1];
          const scalar_t bottom = wx0 * r1[tx[x].i0] + wx1 * r1[tx[x].i1];
          row[x] += wl * (wy0 * top + wy1 * bottom);
        }
      }
      scalar_t* out_row = dst + r * W;
      if (radius == 0) {
        std::copy(row.begin(), row.end(), out_row);
        continue;
      }
      for (int64_t x = 0; x < W; ++x) {  // horizontal blur of the finished row
        scalar_t s = 0;
        if (x >= radius && x + radius < W) {
          const scalar_t* p = row.data() + x - radius;
          for (int t = 0; t <= 2 * radius; ++t) s += blur_taps[t] * p[t];
        } else {
          for (int t = -radius; t <= radius; ++t) s += blur_taps[t + radius] * row[reflect_index(x + t, W)];
        }
        out_row[x] = s;
      }
    }
  });
}

template <typename scalar_t>
void vertical_blur(const scalar_t* src, scalar_t* dst, int64_t B, int64_t H, int64_t W,
                   const std::vector<scalar_t>& blur_taps) {
  const int radius = static_cast<int>(blur_taps.size() / 2);
  cpu::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    std::vector<const scalar_t*> rows(2 * radius + 1);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, y = r % H;
      for (int t = -radius; t <= radius; ++t) rows[t + radius] = src + (n * H + reflect_index(y + t, H)) * W;
      scalar_t* out_row = dst + r * W;
      std::fill(out_row, out_row + W, scalar_t(0));
      for (int t = 0; t <= 2 * radius; ++t) {
        const scalar_t wt = blur_taps[t];
        const scalar_t* in_row = rows[t];
        for (int64_t x = 0; x < W; ++x) out_row[x] += wt * in_row[x];
      }
    }
  });
}

at::Tensor anomaly_map_cpu(at::TensorList feats_a, at::TensorList feats_b, at::IntArrayRef out_size,
                           c10::string_view metric, at::ArrayRef<double> weights, double blur_sigma) {
  AD_CHECK(!feats_a.empty(), "feats_a must hold at least one feature map");
  AD_CHECK(feats_a.size() == feats_b.size(), "feats_a and feats_b must have the same number of levels, got ",
           feats_a.size(), " and ", feats_b.size());
  AD_CHECK(weights.size() == feats_a.size(), "weights must have one entry per level, got ", weights.size());
  AD_CHECK(out_size.size() == 2 && out_size[0] > 0 && out_size[1] > 0, "out_size must be two positive ints");
  AD_CHECK(metric == "cosine" || metric == "l2", "metric must be 'cosine' or 'l2', got '", std::string(metric), "'");
  AD_CHECK(std::isfinite(blur_sigma) && blur_sigma <= kMaxBlurSigma, "blur_sigma must be finite and at most ",
           kMaxBlurSigma, " (<= 0: no blur), got ", blur_sigma);
  const bool cosine = metric == "cosine";
  const at::Tensor& first = feats_a[0];
  const int64_t B = first.size(0), H = out_size[0], W = out_size[1];
  for (size_t l = 0; l < feats_a.size(); ++l) {
    const at::Tensor& a = feats_a[l];
    const at::Tensor& b = feats_b[l];
    AD_CHECK_CPU(a);
    AD_CHECK_CPU(b);
    AD_CHECK_NDIM(a, 4);
    AD_CHECK(a.sizes() == b.sizes(), "feats_a[", l, "] and feats_b[", l, "] must have the same shape, got ", a.sizes(),
             " and ", b.sizes());
    AD_CHECK(a.scalar_type() == first.scalar_type() && b.scalar_type() == first.scalar_type(),
             "all feature maps must share one dtype");
    AD_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
             "feature maps must be float32 or float64 on CPU, got ", a.scalar_type());
    AD_CHECK(a.size(0) == B, "every level must have batch size ", B, ", level ", l, " has ", a.size(0));
    AD_CHECK(a.size(1) > 0 && a.size(2) > 0 && a.size(3) > 0, "feats_a[", l, "] must be non-empty, got ", a.sizes());
  }
  at::Tensor out = at::empty({B, 1, H, W}, first.options().memory_format(at::MemoryFormat::Contiguous));
  if (B == 0) return out;
  const std::vector<double> taps_f64 = blur_sigma > 0 ? gaussian_taps(blur_sigma) : std::vector<double>{1.0};
  std::vector<double> level_weights(weights.begin(), weights.end());
  AT_DISPATCH_FLOATING_TYPES(first.scalar_type(), "anomaly_map_cpu", [&] {
    std::vector<LevelTaps<scalar_t>> taps(feats_a.size());
    for (size_t l = 0; l < feats_a.size(); ++l) {
      const int64_t h_l = feats_a[l].size(2), w_l = feats_a[l].size(3);
      for (int64_t x = 0; x < W; ++x) taps[l].x.push_back(linear_tap<scalar_t>(x, w_l, W));
      for (int64_t y = 0; y < H; ++y) taps[l].y.push_back(linear_tap<scalar_t>(y, h_l, H));
    }
    std::vector<at::Tensor> dists;
    for (size_t l = 0; l < feats_a.size(); ++l) dists.push_back(level_distance<scalar_t>(feats_a[l], feats_b[l], cosine));
    const std::vector<scalar_t> blur_taps(taps_f64.begin(), taps_f64.end());
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    if (blur_taps.size() == 1) {
      upsample_sum_rows<scalar_t>(dists, taps, level_weights, B, H, W, out_ptr, blur_taps);
    } else {
      at::Tensor rows = at::empty({B, H, W}, out.options());
      upsample_sum_rows<scalar_t>(dists, taps, level_weights, B, H, W, rows.mutable_data_ptr<scalar_t>(), blur_taps);
      vertical_blur<scalar_t>(rows.const_data_ptr<scalar_t>(), out_ptr, B, H, W, blur_taps);
    }
  });
  TORCH_CHECK_VALUE(at::isfinite(out).all().item<bool>(), "feats_a/feats_b: the anomaly map is not finite (NaN or Inf "
                    "in the features, or distances overflowing their dtype)");
  return out;
}

}  // namespace
}  // namespace anomaly_map
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CPU, m) { m.impl("anomaly_map", &ad_fast::anomaly_map::anomaly_map_cpu); }
