// CPU kernel of greedy k-center selection: one fused pass over the projected rows per pick. Each pass
// computes every row's distance to the newest center, lowers its running min-distance and tracks the
// arg-max for the next pick, chunk by chunk in parallel; a tiny serial step merges the chunks' arg-maxes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "kcenter_greedy/kcenter_greedy_common.h"

namespace ad_fast {
namespace kcenter_greedy {
namespace {

constexpr int64_t kRowsPerChunk = 4096;
constexpr ArgMax kNoMax{-std::numeric_limits<float>::infinity(), std::numeric_limits<int64_t>::max()};

// min_dist[i] = min(min_dist[i], ||z_i - z_center||) for rows [begin, end); returns their arg-max.
ArgMax update_rows(const float* z, int64_t d, const float* center, float* min_dist, int64_t begin, int64_t end) {
  ArgMax best = kNoMax;
  for (int64_t i = begin; i < end; ++i) {
    const float* row = z + i * d;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t c = 0; c < d; ++c) {
      const float diff = row[c] - center[c];
      acc += diff * diff;
    }
    const float dist = std::min(min_dist[i], std::sqrt(acc));
    min_dist[i] = dist;
    if (dist > best.value) best = {dist, i};
  }
  return best;
}

ArgMax argmax_rows(const float* values, int64_t begin, int64_t end) {
  ArgMax best = kNoMax;
  for (int64_t i = begin; i < end; ++i) {
    if (values[i] > best.value) best = {values[i], i};
  }
  return best;
}

std::tuple<at::Tensor, at::Tensor> kcenter_greedy_cpu(const at::Tensor& projected_in, int64_t n_select,
                                                      int64_t start_index,
                                                      const c10::optional<at::Tensor>& init_distances) {
  AD_CHECK_CPU(projected_in);
  AD_CHECK_NDIM(projected_in, 2);
  TORCH_CHECK_TYPE(projected_in.scalar_type() == at::kFloat, "projected must be float32, got ",
                   projected_in.scalar_type());
  const int64_t N = projected_in.size(0), d = projected_in.size(1);
  TORCH_CHECK_VALUE(n_select >= 0 && n_select <= N, "n_select must be in [0, ", N, "], got ", n_select);
  if (init_distances.has_value()) {
    AD_CHECK_CPU(*init_distances);
    TORCH_CHECK_VALUE(init_distances->dim() == 1 && init_distances->size(0) == N &&
                          init_distances->scalar_type() == at::kFloat,
                      "init_distances must be a float32 [", N, "] tensor, got ", init_distances->scalar_type(), " ",
                      init_distances->sizes());
  } else if (n_select > 0) {
    TORCH_CHECK_VALUE(start_index >= 0 && start_index < N, "start_index must be in [0, ", N, "), got ",
                      start_index);
  }
  at::Tensor indices = at::empty({n_select}, projected_in.options().dtype(at::kLong));
  at::Tensor radii = at::empty({n_select}, projected_in.options());
  if (n_select == 0) return {indices, radii};

  const at::Tensor projected = projected_in.contiguous();
  const float* z = projected.const_data_ptr<float>();
  at::Tensor min_dist_t = init_distances.has_value()
                              ? init_distances->to(at::kFloat).contiguous().clone()
                              : at::full({N}, std::numeric_limits<float>::infinity(), projected.options());
  float* min_dist = min_dist_t.mutable_data_ptr<float>();
  int64_t* out_idx = indices.mutable_data_ptr<int64_t>();
  float* out_radius = radii.mutable_data_ptr<float>();

  const int64_t chunks = (N + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<ArgMax> chunk_best(chunks);
  auto merged = [&]() {
    ArgMax best = kNoMax;
    for (const ArgMax& b : chunk_best) best = better(best, b);
    return best;
  };

  int64_t center = start_index;
  if (init_distances.has_value()) {
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        chunk_best[c] = argmax_rows(min_dist, c * kRowsPerChunk, std::min(N, (c + 1) * kRowsPerChunk));
      }
    });
    center = merged().index;
  }
  for (int64_t t = 0; t < n_select; ++t) {
    out_idx[t] = center;
    const float* center_row = z + center * d;
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        chunk_best[c] = update_rows(z, d, center_row, min_dist, c * kRowsPerChunk, std::min(N, (c + 1) * kRowsPerChunk));
      }
    });
    const ArgMax best = merged();
    out_radius[t] = best.value;
    center = best.index;
  }
  return {indices, radii};
}

}  // namespace
}  // namespace kcenter_greedy
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CPU, m) { m.impl("kcenter_greedy", &ad_fast::kcenter_greedy::kcenter_greedy_cpu); }
