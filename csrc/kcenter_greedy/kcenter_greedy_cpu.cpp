// CPU kernel of greedy k-center selection with exact pruning: every row belongs to the cluster of its nearest
// pick (or to the "pool" while its running min-distance is still an initial distance, not a pick's), and a new
// pick only visits the clusters it can still take rows from. Triangle-inequality bounds, all with a float32
// rounding margin so skipping never changes a result that updating every row would have produced:
//   cluster s (pick a_s, radius r_s = its largest min-distance) is skipped when ||a_s - c|| >= 2 r_s, since then
//     ||z_i - c|| >= ||a_s - c|| - ||z_i - a_s|| >= min_dist[i] for each of its rows (Elkan);
//   ||a_s - c|| itself is not computed when | ||a_s - o|| - ||c - o|| | >= 2 r_s (o: the rows' mean), and a row
//     is not visited when | ||z_i - o|| - ||c - o|| | >= min_dist[i] or ||a_s - c|| >= 2 min_dist[i].
// Each cluster caches its arg-max; a tournament tree over the clusters gives the next pick in O(log k) per
// visited cluster. Distances that are computed use the same function as a full pass, so the min-distances, the
// radii and the picks are bit-identical to updating every row each pick.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "kcenter_greedy/kcenter_greedy_checks.h"
#include "kcenter_greedy/kcenter_greedy_common.h"

namespace ad_fast {
namespace kcenter_greedy {
namespace {

constexpr ArgMax kNoMax{-std::numeric_limits<float>::infinity(), std::numeric_limits<int64_t>::max()};
// Below this many rows to visit, a pick's scan runs on one thread (a parallel region costs more).
constexpr int64_t kSerialRows = 16384;

// Relative float32 rounding bound of a computed Euclidean distance or norm of d-vectors ((d + 2) ulps, doubled).
float rounding(int64_t d) { return 2.0f * static_cast<float>(d + 2) * 0x1p-24f; }

float distance(const float* a, const float* b, int64_t d) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < d; ++c) {
    const float diff = a[c] - b[c];
    acc += diff * diff;
  }
  return std::sqrt(acc);
}

// Greedy search state. Cluster slots 0..k-1 belong to the picks, slot k is the pool of rows no pick owns yet.
struct Search {
  const float* z;
  int64_t n, d, k;
  float* min_dist;
  float eps;     // rounding of one computed distance or norm, relative
  float margin;  // 1 + rounding: a computed bound must beat the computed min-distance by this factor
  std::vector<float> norm;                   // ||z_i - o|| per row
  std::vector<std::vector<int64_t>> rows;    // member rows per slot
  std::vector<float> centers;                // [k, d] copies of the picked rows
  std::vector<float> center_norm;            // ||a_s - o|| per pick
  std::vector<float> to_newest;              // ||a_s - c|| per pick, or -1 when the cluster is skipped
  std::vector<int64_t> visit;                // slots the newest pick visits
  std::vector<std::vector<int64_t>> moved;   // per thread: rows the newest pick took
  std::vector<ArgMax> tree;                  // tournament tree of the slots' arg-maxes (leaves at `leaves`)
  int64_t leaves = 1;

  Search(const float* z_, int64_t n_, int64_t d_, int64_t k_, float* min_dist_)
      : z(z_), n(n_), d(d_), k(k_), min_dist(min_dist_), eps(rounding(d_)), margin(1.0f + rounding(d_)),
        norm(n_), rows(k_ + 1), centers(k_ * d_), center_norm(k_), to_newest(k_),
        moved(std::max(1, at::get_num_threads())) {
    while (leaves < k + 1) leaves *= 2;
    tree.assign(2 * leaves, kNoMax);
    std::vector<double> mean(d, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < d; ++c) mean[c] += z[i * d + c];
    std::vector<float> origin(d);
    for (int64_t c = 0; c < d; ++c) origin[c] = static_cast<float>(mean[c] / static_cast<double>(n));
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) norm[i] = distance(z + i * d, origin.data(), d);
    });
    rows[k].resize(n);
    ArgMax best = kNoMax;
    for (int64_t i = 0; i < n; ++i) {
      rows[k][i] = i;
      best = better(best, ArgMax{min_dist[i], i});
    }
    set_best(k, best);
  }

  void set_best(int64_t slot, ArgMax value) {
    int64_t node = leaves + slot;
    tree[node] = value;
    for (node /= 2; node >= 1; node /= 2) tree[node] = better(tree[2 * node], tree[2 * node + 1]);
  }

  ArgMax best() const { return tree[1]; }

  // True when | ||x - o|| - ||c - o|| | proves ||x - c|| >= bound (computed values, rounding included).
  bool norm_bound(float norm_x, float norm_c, float bound) const {
    return std::fabs(norm_x - norm_c) - eps * (norm_x + norm_c) >= bound * margin;
  }

  // Slots with a row pick t might take; fills to_newest for the picks' clusters.
  void find_visits(int64_t t, const float* newest, float norm_c) {
    at::parallel_for(0, t, t < 4096 ? t : 1024, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const float radius = tree[leaves + s].value;
        float dist = -1.0f;
        if (radius > 0.0f && !norm_bound(center_norm[s], norm_c, 2.0f * radius)) {
          dist = distance(centers.data() + s * d, newest, d);
          if (dist >= 2.0f * radius * margin) dist = -1.0f;
        }
        to_newest[s] = dist;
      }
    });
    visit.clear();
    for (int64_t s = 0; s < t; ++s) {
      if (to_newest[s] >= 0.0f) visit.push_back(s);
    }
    if (!rows[k].empty()) visit.push_back(k);
  }

  // Visits one slot's rows: moves the rows pick t is nearer to into `out`, returns the slot's new arg-max.
  ArgMax scan(int64_t slot, const float* newest, float norm_c, std::vector<int64_t>& out) {
    std::vector<int64_t>& members = rows[slot];
    const float to_center = slot < k ? to_newest[slot] : -1.0f;
    ArgMax best = kNoMax;
    size_t kept = 0;
    for (const int64_t i : members) {
      const float current = min_dist[i];
      const bool far = (to_center >= 2.0f * current * margin) || norm_bound(norm[i], norm_c, current);
      if (!far) {
        const float dist = distance(z + i * d, newest, d);
        if (dist < current) {
          min_dist[i] = dist;
          out.push_back(i);
          continue;
        }
      }
      members[kept++] = i;
      best = better(best, ArgMax{current, i});
    }
    members.resize(kept);
    return best;
  }

  void add_center(int64_t t, int64_t center) {
    float* newest = centers.data() + t * d;
    std::copy(z + center * d, z + (center + 1) * d, newest);
    const float norm_c = norm[center];
    center_norm[t] = norm_c;
    find_visits(t, newest, norm_c);
    std::vector<ArgMax> slot_best(visit.size());
    int64_t work = 0;
    for (const int64_t s : visit) work += static_cast<int64_t>(rows[s].size());
    for (auto& m : moved) m.clear();
    const int64_t count = static_cast<int64_t>(visit.size());
    const int64_t grain = work < kSerialRows ? std::max<int64_t>(count, 1) : 1;
    at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
      std::vector<int64_t>& out = moved[std::min<int64_t>(at::get_thread_num(), moved.size() - 1)];
      for (int64_t v = begin; v < end; ++v) slot_best[v] = scan(visit[v], newest, norm_c, out);
    });
    for (int64_t v = 0; v < count; ++v) set_best(visit[v], slot_best[v]);
    std::vector<int64_t>& own = rows[t];
    ArgMax best = kNoMax;
    for (const auto& m : moved) {
      for (const int64_t i : m) {
        own.push_back(i);
        best = better(best, ArgMax{min_dist[i], i});
      }
    }
    set_best(t, best);
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
  float* min_dist = min_dist_t.mutable_data_ptr<float>();
  int64_t* out_idx = indices.mutable_data_ptr<int64_t>();
  float* out_radius = radii.mutable_data_ptr<float>();

  Search search(projected.const_data_ptr<float>(), N, d, n_select, min_dist);
  int64_t center = init_distances.has_value() ? search.best().index : start_index;
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
