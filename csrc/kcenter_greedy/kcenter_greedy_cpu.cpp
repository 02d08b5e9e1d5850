// CPU kernel of greedy k-center selection: one fused pass over the projected rows per pick. Each pass
// lowers every row's running min-distance by its distance to the newest pick and refreshes the arg-max of
// the chunks that changed, chunk by chunk in parallel; a tiny serial step merges the chunks' arg-maxes.
// Rows that the triangle inequality proves unaffected are skipped (Elkan-style), so late passes touch a
// fraction of the rows; results are identical to updating every row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "kcenter_greedy/kcenter_greedy_checks.h"
#include "kcenter_greedy/kcenter_greedy_common.h"

namespace ad_fast {
namespace kcenter_greedy {
namespace {

constexpr int64_t kRowsPerChunk = 4096;
constexpr ArgMax kNoMax{-std::numeric_limits<float>::infinity(), std::numeric_limits<int64_t>::max()};
// A row is skipped when the triangle inequality proves the new center is no closer than its nearest pick:
// ||z_i - c|| >= ||a_i - c|| - ||z_i - a_i||, so ||a_i - c|| >= 2 * min_dist[i] means no change. The margin
// covers float32 rounding of both distances (each within a relative (d + 2) * 2^-24), so skipping never
// changes a result the full update would have produced.
float skip_margin(int64_t d) { return 1.0f + 4.0f * static_cast<float>(d + 2) * 0x1p-24f; }

float distance(const float* a, const float* b, int64_t d) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < d; ++c) {
    const float diff = a[c] - b[c];
    acc += diff * diff;
  }
  return std::sqrt(acc);
}

ArgMax argmax_rows(const float* values, int64_t begin, int64_t end) {
  ArgMax best = kNoMax;
  for (int64_t i = begin; i < end; ++i) {
    if (values[i] > best.value) best = {values[i], i};
  }
  return best;
}

// State of the greedy search: running min-distance and nearest pick of every row, the picked rows, and each
// chunk's cached arg-max (valid until a row of the chunk changes).
struct Search {
  const float* z;
  int64_t n, d;
  float* min_dist;
  std::vector<int32_t> nearest;   // pick number of each row's nearest center; -1 while min_dist is not a center's
  std::vector<float> centers;     // [picks, d] copies of the picked rows
  std::vector<float> to_newest;   // distance from the newest pick to every earlier pick
  std::vector<ArgMax> chunk_best;

  int64_t chunks() const { return static_cast<int64_t>(chunk_best.size()); }

  // Lowers min_dist by the distance to pick number t (row `center`); refreshes the chunks' arg-maxes.
  void add_center(int64_t t, int64_t center) {
    float* newest = centers.data() + t * d;
    std::copy(z + center * d, z + (center + 1) * d, newest);
    const float* earlier = centers.data();
    cpu::parallel_for(0, t, 2048 * 128 / std::max<int64_t>(d, 1), [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) to_newest[s] = distance(earlier + s * d, newest, d);
    });
    const float margin = skip_margin(d);
    const int64_t grain = std::max<int64_t>(1, (1 << 22) / (kRowsPerChunk * std::max<int64_t>(d, 1)));
    cpu::parallel_for(0, chunks(), grain, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t r0 = c * kRowsPerChunk, r1 = std::min(n, r0 + kRowsPerChunk);
        bool changed = false;
        for (int64_t i = r0; i < r1; ++i) {
          const int32_t a = nearest[i];
          if (a >= 0 && to_newest[a] >= 2.f * min_dist[i] * margin) continue;
          const float dist = distance(z + i * d, newest, d);
          if (dist < min_dist[i]) {
            min_dist[i] = dist;
            nearest[i] = static_cast<int32_t>(t);
            changed = true;
          }
        }
        if (changed || chunk_best[c].index == kNoMax.index) chunk_best[c] = argmax_rows(min_dist, r0, r1);
      }
    });
  }

  ArgMax best() const {
    ArgMax out = kNoMax;
    for (const ArgMax& b : chunk_best) out = better(out, b);
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> kcenter_greedy_cpu(const at::Tensor& projected_in, int64_t n_select,
                                                                  int64_t start_index,
                                                                  const c10::optional<at::Tensor>& init_distances) {
  AD_CHECK_CPU(projected_in);
  check_arguments(projected_in, n_select, start_index, init_distances);
  const int64_t N = projected_in.size(0), d = projected_in.size(1);
  at::Tensor indices = at::empty({n_select}, projected_in.options().dtype(at::kLong));
  at::Tensor radii = at::empty({n_select}, projected_in.options());
  at::Tensor min_dist_t = init_distances.has_value()
                              ? init_distances->to(at::kFloat).contiguous().clone()
                              : at::full({N}, std::numeric_limits<float>::infinity(), projected_in.options());
  if (n_select == 0) return {indices, radii, min_dist_t};

  const at::Tensor projected = projected_in.contiguous();
  const float* z = projected.const_data_ptr<float>();
  float* min_dist = min_dist_t.mutable_data_ptr<float>();
  int64_t* out_idx = indices.mutable_data_ptr<int64_t>();
  float* out_radius = radii.mutable_data_ptr<float>();

  Search search{z, N, d, min_dist, std::vector<int32_t>(N, -1), std::vector<float>(n_select * d),
                std::vector<float>(n_select), std::vector<ArgMax>((N + kRowsPerChunk - 1) / kRowsPerChunk, kNoMax)};
  int64_t center = start_index;
  if (init_distances.has_value()) {
    for (int64_t c = 0; c < search.chunks(); ++c) {
      search.chunk_best[c] = argmax_rows(min_dist, c * kRowsPerChunk, std::min(N, (c + 1) * kRowsPerChunk));
    }
    center = search.best().index;
  }
  for (int64_t t = 0; t < n_select; ++t) {
    out_idx[t] = center;
    search.add_center(t, center);
    const ArgMax best = search.best();
    out_radius[t] = best.value;
    center = best.index;
  }
  return {indices, radii, min_dist_t};
}

}  // namespace
}  // namespace kcenter_greedy
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CPU, m) { m.impl("kcenter_greedy", &ad_fast::kcenter_greedy::kcenter_greedy_cpu); }
