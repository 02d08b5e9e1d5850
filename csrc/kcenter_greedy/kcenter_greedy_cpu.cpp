// CPU kernel of greedy k-center selection, lazy per row block (picks, radii and min-distances bitwise those of one
// full pass over all rows per pick).
//
// Rows are split into blocks of kRowsPerBlock contiguous rows. Each block remembers how many picks have been
// applied to its rows (`upto`) and the arg-max of its rows' running min-distances as of then; min-distances only
// decrease, so that maximum is an upper bound of the block's current one. The blocks sit in a max-heap ordered by
// (bound desc, block asc). The next pick is the top block's arg-max once the block is up to date and its bound is
// that maximum: every other bound is no larger, and an equal bound of a lower block would come first. A stale top
// block gets all its pending picks at once (its rows stay in cache while the picks stream past), then goes back
// with its exact maximum. Every block gets every pick eventually (the rest are flushed at the end, so min_dist is
// exact for all rows): the row-pick pairs of a full pass per pick (most ruled out by the bounds below without
// their distance), done from cache instead of streaming the whole matrix from memory per pick. Threads: the
// calling thread selects; at::get_num_threads() - 1 helper threads sweep over the blocks meanwhile, bringing those
// that lag behind up to date (block locks); the flush is split by work.
//
// Each distance is the square root of sq_distance4()'s float32 sum (sq_distance2x4 computes eight bitwise alike; the
// root is skipped where the sum proves no change) and each row takes its picks in pick order with `<`, so every
// value is the full pass's, ties included (first maximum). Two proofs let a row skip a pick without its distance:
// - the triangle inequality (Elkan-style): pick s was the farthest row when picked, at min-distance
//   sep[s] <= ||c_a - c_s|| from every earlier pick a (the row's nearest), so sep[s] >= 2 * min_dist[i] (with a
//   rounding margin) means no change;
// - the rows' K = 8 leading principal axes (large selections): the distance of two rows' coordinates on them is a
//   lower bound of theirs, a K-term sum instead of d terms; at or above bound_threshold(min_dist[i]) (rounding
//   allowed for) it means no change. On DMAD's patch rows it leaves ~10-16 % of the row-pick pairs to score.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "kcenter_greedy/kcenter_greedy_checks.h"
#include "kcenter_greedy/kcenter_greedy_common.h"

namespace ad_fast {
namespace kcenter_greedy {
namespace {

constexpr int64_t kRowsPerBlock = 256;
constexpr int64_t kCenterTileBytes = 16 * 1024;  // pending picks are applied in tiles that stay in L1
constexpr int64_t kMaxTile = 256;                // and at most this many per tile (buffers on the stack)
constexpr int64_t kBoundAxes = 8;                // leading principal axes of the rows' cheap lower bound
constexpr int64_t kAxesChunk = 1 << 16;          // rows per chunk of the principal axes' covariance
constexpr int64_t kHelperLag = 32;              // a helper brings a block up to date once it lags this many picks
constexpr int64_t kHelperWork = 1 << 20;        // rows x picks below which one thread works alone, with no bound
constexpr int64_t kParallelWork = 1 << 16;      // rows x picks below which the final flush runs on one thread
constexpr ArgMax kNoMax{-std::numeric_limits<float>::infinity(), std::numeric_limits<int64_t>::max()};
// A row skips pick s when the triangle inequality proves it no closer than the row's nearest pick a:
// ||z_i - c_s|| >= ||c_a - c_s|| - ||z_i - c_a||, so ||c_a - c_s|| >= 2 * min_dist[i] means no change. The margin
// covers float32 rounding of both distances (each within a relative (d + 2) * 2^-24), so skipping never
// changes a result the full update would have produced.
float skip_margin(int64_t d) { return 1.0f + 4.0f * static_cast<float>(d + 2) * 0x1p-24f; }

// Squared distances from row `a` to four rows at once: per row, the float32 sum of squared differences of one simd
// loop with one reduction variable per row (same lanes, same remainder handling, same final sum over the lanes), so
// each result is the same bits whichever slot a row takes, and alone or repeated; its square root is the distance
// every result uses. Four independent accumulation chains keep the FPU busy where one would wait on itself.
void sq_distance4(const float* a, const float* b0, const float* b1, const float* b2, const float* b3, int64_t d,
                  float* out) {
  float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
#pragma omp simd reduction(+ : acc0, acc1, acc2, acc3)
  for (int64_t c = 0; c < d; ++c) {
    const float x = a[c];
    const float diff0 = x - b0[c], diff1 = x - b1[c], diff2 = x - b2[c], diff3 = x - b3[c];
    acc0 += diff0 * diff0;
    acc1 += diff1 * diff1;
    acc2 += diff2 * diff2;
    acc3 += diff3 * diff3;
  }
  out[0] = acc0;
  out[1] = acc1;
  out[2] = acc2;
  out[3] = acc3;
}

// sq_distance4() from two rows `a0` and `a1` at once (out[0..3] and out[4..7]), each bitwise sq_distance4()'s:
// eight accumulation chains that share the loads of the four rows `b`.
void sq_distance2x4(const float* a0, const float* a1, const float* b0, const float* b1, const float* b2,
                    const float* b3, int64_t d, float* out) {
  float x0 = 0.f, x1 = 0.f, x2 = 0.f, x3 = 0.f, y0 = 0.f, y1 = 0.f, y2 = 0.f, y3 = 0.f;
#pragma omp simd reduction(+ : x0, x1, x2, x3, y0, y1, y2, y3)
  for (int64_t c = 0; c < d; ++c) {
    const float p = a0[c], q = a1[c];
    const float c0 = b0[c], c1 = b1[c], c2 = b2[c], c3 = b3[c];
    x0 += (p - c0) * (p - c0);
    x1 += (p - c1) * (p - c1);
    x2 += (p - c2) * (p - c2);
    x3 += (p - c3) * (p - c3);
    y0 += (q - c0) * (q - c0);
    y1 += (q - c1) * (q - c1);
    y2 += (q - c2) * (q - c2);
    y3 += (q - c3) * (q - c3);
  }
  out[0] = x0;
  out[1] = x1;
  out[2] = x2;
  out[3] = x3;
  out[4] = y0;
  out[5] = y1;
  out[6] = y2;
  out[7] = y3;
}

// A squared distance at or above this cannot give a distance below m: sq >= m^2 (1 + 8u) (in float64) means
// sqrt(sq) >= m (1 + 3.9u), which rounds to at least m. Most picks do not come closer to a row, so their square
// root is skipped; the others take std::sqrt, the distance itself.
double no_closer_than(float m) { return static_cast<double>(m) * m * (1.0 + 0x1p-21); }

ArgMax argmax_rows(const float* values, int64_t begin, int64_t end) {
  ArgMax best = kNoMax;
  for (int64_t i = begin; i < end; ++i) {
    if (values[i] > best.value) best = {values[i], i};
  }
  return best;
}

// The rows' coordinates on their K = min(kBoundAxes, d) leading principal axes P (orthonormal in float64, rounded
// to float32: ||P^T x|| <= (1 + sqrt(K) u) ||x||, which bound_threshold's margin covers), so the coordinates give
// every distance a K-value lower bound. All in float32 (the axes' quality only decides how much is pruned):
// `error` bounds how far a stored difference of two rows' coordinates can be from P^T (z_i - z_j), twice the
// error of one row's: the rounding of z_i - mean (u per value) and of the d-term products (gamma_d sqrt(K)), both
// relative to ||z_i - mean||.
struct AxisCoords {
  at::Tensor coords;  // float32 [N, K]
  int64_t k;
  double error;
};

// Of rows with d > 0 columns.
AxisCoords principal_coords(const at::Tensor& rows) {
  const int64_t N = rows.size(0), d = rows.size(1), k = std::min(kBoundAxes, d);
  const at::Tensor mean = (rows.sum({0}, false, at::kDouble) / static_cast<double>(N)).to(at::kFloat);
  at::Tensor covariance = at::zeros({d, d}, rows.options());
  for (int64_t r = 0; r < N; r += kAxesChunk) {
    const at::Tensor centred = rows.narrow(0, r, std::min(kAxesChunk, N - r)) - mean;
    covariance.addmm_(centred.t(), centred);
  }
  const at::Tensor axes =
      std::get<1>(at::linalg_eigh(covariance.to(at::kDouble))).narrow(1, d - k, k).to(at::kFloat).contiguous();
  at::Tensor coords = at::empty({N, k}, rows.options());
  double largest = 0;
  for (int64_t r = 0; r < N; r += kAxesChunk) {
    const int64_t n = std::min(kAxesChunk, N - r);
    const at::Tensor centred = rows.narrow(0, r, n) - mean;
    at::Tensor part = coords.narrow(0, r, n);
    at::mm_out(part, centred, axes);
    largest = std::max(largest, centred.norm(2, {1}).max().item<double>());
  }
  const double u = 0x1p-24, gamma_d = d * u / (1.0 - d * u);
  const double one_row = (gamma_d * std::sqrt(static_cast<double>(k)) + 2.0 * u) * 1.01 * largest;
  return {coords, k, 2.0 * one_row};
}

struct Block {
  int64_t upto;  // picks applied to the block's rows
  ArgMax best;   // arg-max of the rows' min-distances after those picks
};

// A block in the heap, with its maximum when pushed (an upper bound of its maximum from then on).
struct Entry {
  float bound;
  int32_t block;
};

// Heap order: an entry comes later than one with a larger bound, or an equal bound and a lower block.
bool later(const Entry& x, const Entry& y) { return y.bound > x.bound || (y.bound == x.bound && y.block < x.block); }

// State of the greedy search: running min-distance and nearest pick of every row, the picks, and the blocks.
// One thread (the selecting one) owns the heap and makes the picks; helper threads bring lagging blocks up to
// date meanwhile, sweeping over the blocks. Each block has a lock; its rows and its Block change only under it.
class LazySearch {
 public:
  LazySearch(const float* z, int64_t n, int64_t d, float* min_dist, int64_t n_select, const AxisCoords& axes)
      : z_(z), n_(n), d_(d), min_dist_(min_dist), nearest_(n, -1), centers_(n_select * d), sep_(n_select, 0.f),
        coords_(axes.coords.const_data_ptr<float>()), k_(axes.k), n_select_(n_select),
        pick_coords_(axes.k * n_select), coord_error_(axes.error),
        blocks_((n + kRowsPerBlock - 1) / kRowsPerBlock), locks_(new std::atomic<bool>[blocks_.size()]),
        margin_(skip_margin(d)),
        center_tile_(std::clamp<int64_t>(kCenterTileBytes / (std::max<int64_t>(d, 1) * 4), 1, kMaxTile)) {
    for (int64_t b = 0; b < num_blocks(); ++b) {
      locks_[b].store(false, std::memory_order_relaxed);
      blocks_[b] = {0, argmax_rows(min_dist_, row_begin(b), row_end(b))};
      heap_.push_back({blocks_[b].best.value, static_cast<int32_t>(b)});
    }
    std::make_heap(heap_.begin(), heap_.end(), later);
  }

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }

  // Records pick number t (row `row`, at min-distance `value` when picked; 0 for a start row) for every thread.
  void add_pick(int64_t t, int64_t row, float value) {
    std::copy(z_ + row * d_, z_ + (row + 1) * d_, centers_.data() + t * d_);
    for (int64_t k = 0; k < k_; ++k) pick_coords_[k * n_select_ + t] = coords_[row * k_ + k];
    sep_[t] = value;
    published_.store(t + 1, std::memory_order_release);
  }

  // Selecting thread: the arg-max over all rows of the min-distance to the first `picks` picks (first maximum on
  // ties). The top entry is the answer once its block is up to date and its bound is the block's maximum: every
  // other entry's bound is no larger (and an equal one belongs to a later block); otherwise the block is brought
  // up to date and pushed back with its exact maximum.
  ArgMax verified_max(int64_t picks) {
    for (;;) {
      const Entry top = heap_.front();
      Block& block = blocks_[top.block];
      lock(top.block);
      if (block.upto == picks && block.best.value == top.bound) {
        const ArgMax best = block.best;
        unlock(top.block);
        return best;
      }
      if (block.upto < picks) bring_up_to_date(top.block, picks);
      const Entry entry{block.best.value, top.block};
      unlock(top.block);
      std::pop_heap(heap_.begin(), heap_.end(), later);
      heap_.back() = entry;
      std::push_heap(heap_.begin(), heap_.end(), later);
    }
  }

  // Helper threads, until stop(): sweep over the blocks, bringing up to date those kHelperLag picks behind.
  void help() {
    while (!stopped_.load(std::memory_order_acquire)) {
      const int64_t picks = published_.load(std::memory_order_acquire);
      bool worked = false;
      for (int64_t k = 0; k < num_blocks() && !worked; ++k) {
        const int64_t b = cursor_.fetch_add(1, std::memory_order_relaxed) % num_blocks();
        if (!try_lock(b)) continue;
        if (picks - blocks_[b].upto >= kHelperLag) {
          bring_up_to_date(b, picks);
          worked = true;
        }
        unlock(b);
      }
      if (!worked) std::this_thread::sleep_for(std::chrono::microseconds(50));  // nothing lags: let picks come
    }
  }

  void stop() { stopped_.store(true, std::memory_order_release); }

  // After the helpers have stopped: every pending pick to every block, in parallel, so min_dist is exact for all
  // rows. Rows are split among the threads by work (rows times pending picks).
  void flush(int64_t picks) {
    std::vector<int64_t> stale, work_before{0}, rows_before{0};
    for (int64_t b = 0; b < num_blocks(); ++b) {
      if (blocks_[b].upto == picks) continue;
      stale.push_back(b);
      work_before.push_back(work_before.back() + rows(b) * (picks - blocks_[b].upto));
      rows_before.push_back(rows_before.back() + rows(b));
    }
    const int64_t count = static_cast<int64_t>(stale.size());
    const int64_t pieces = std::max(1, at::get_num_threads());
    // Piece p starts at the first row whose work starts at or after total * p / pieces.
    std::vector<int64_t> start(pieces + 1, rows_before[count]);
    for (int64_t p = 0, j = 0; p < pieces && count > 0; ++p) {
      const int64_t w = work_before[count] * p / pieces;
      while (work_before[j + 1] <= w) ++j;
      const int64_t per_row = picks - blocks_[stale[j]].upto;
      start[p] = std::min(rows_before[j + 1], rows_before[j] + (w - work_before[j] + per_row - 1) / per_row);
    }
    auto pieces_from = [&](int64_t p0, int64_t p1) {
      const int64_t g0 = start[p0], g1 = start[p1];  // rows [g0, g1) of the stale blocks, concatenated
      int64_t j = std::upper_bound(rows_before.begin(), rows_before.end(), g0) - rows_before.begin() - 1;
      for (int64_t g = g0; g < g1; ++j) {
        const int64_t end = std::min(g1, rows_before[j + 1]);
        const int64_t base = row_begin(stale[j]) - rows_before[j];
        apply(base + g, base + end, blocks_[stale[j]].upto, picks);
        g = end;
      }
    };
    if (work_before[count] < kParallelWork) {
      cpu::dispatch([&] { pieces_from(0, pieces); });
    } else {
      cpu::parallel_for(0, pieces, 1, pieces_from);
    }
    for (const int64_t b : stale) blocks_[b].upto = picks;
  }

 private:
  int64_t row_begin(int64_t b) const { return b * kRowsPerBlock; }
  int64_t row_end(int64_t b) const { return std::min(n_, (b + 1) * kRowsPerBlock); }
  int64_t rows(int64_t b) const { return row_end(b) - row_begin(b); }
  const float* center(int64_t s) const { return centers_.data() + s * d_; }

  bool try_lock(int64_t b) {
    return !locks_[b].load(std::memory_order_relaxed) && !locks_[b].exchange(true, std::memory_order_acquire);
  }
  void lock(int64_t b) {
    while (locks_[b].exchange(true, std::memory_order_acquire)) {
      while (locks_[b].load(std::memory_order_relaxed)) std::this_thread::yield();
    }
  }
  void unlock(int64_t b) { locks_[b].store(false, std::memory_order_release); }

  // Under the block's lock: its pending picks applied, its arg-max refreshed.
  void bring_up_to_date(int64_t b, int64_t picks) {
    cpu::dispatch([&] { apply(row_begin(b), row_end(b), blocks_[b].upto, picks); });
    blocks_[b] = {picks, argmax_rows(min_dist_, row_begin(b), row_end(b))};
  }

  // One row while picks are applied to it: its min-distance m, nearest pick a, and no_closer_than(m).
  struct RowState {
    float m;
    int32_t a;
    double bound;
    // Whether pick s can come closer (sep does not prove otherwise); tested with m before a group of picks,
    // which is sound as m only falls.
    bool may_take(float sep, float margin) const { return a < 0 || sep < sep_cut(margin); }
    // may_take as one comparison, sep < sep_cut(margin), for finite sep.
    float sep_cut(float margin) const { return a < 0 ? std::numeric_limits<float>::infinity() : 2.f * m * margin; }
    void take(int64_t s, float sq) {
      if (static_cast<double>(sq) >= bound) return;
      const float dist = std::sqrt(sq);
      if (dist < m) {
        m = dist;
        a = static_cast<int32_t>(s);
        bound = no_closer_than(m);
      }
    }
  };
  RowState load(int64_t i) const { return {min_dist_[i], nearest_[i], no_closer_than(min_dist_[i])}; }
  void store(int64_t i, const RowState& row) {
    min_dist_[i] = row.m;
    nearest_[i] = row.a;
  }

  // A K-value squared distance of the coordinates at or above this proves a pick no closer than m: it bounds
  // the true distance from below by m (1 + 2 (d + 4) u) once the coordinates' error and the float32 rounding of the
  // K-term sum (gamma_{K+2}) are allowed for, and sqrt of sq_distance4() then rounds to at least m (its sum is
  // within a relative (d + 2) u of the true square). The float32 threshold is rounded with room to spare.
  float bound_threshold(float m) const {
    const double u = 0x1p-24, gamma = (k_ + 2) * u / (1.0 - (k_ + 2) * u);
    const double reach = static_cast<double>(m) * (1.0 + 2.0 * (d_ + 4) * u) + coord_error_;
    return static_cast<float>(reach * reach * (1.0 + 4.0 * gamma));
  }

  // Picks of [s0, s1) that row i (state x) must score, in order, into `out`: those sep does not rule out and (with
  // use_bound, only set where the rows have coordinates) whose coordinates' lower bound does not prove them no
  // closer. Returns their count.
  int candidates(int64_t i, const RowState& x, int64_t s0, int64_t s1, bool use_bound, int64_t* out) const {
    const int64_t n = s1 - s0;
    float lower[kMaxTile];
    const float threshold = bound_threshold(x.m);
    const bool bounded = use_bound && threshold < std::numeric_limits<float>::infinity();
    if (bounded && k_ == kBoundAxes) {  // the usual case: a fixed count keeps the K sums in registers
      const float* p = coords_ + i * kBoundAxes;
      const float* q = pick_coords_.data() + s0;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        float acc = 0.f;
        for (int64_t k = 0; k < kBoundAxes; ++k) acc += (p[k] - q[k * n_select_ + j]) * (p[k] - q[k * n_select_ + j]);
        lower[j] = acc;
      }
    } else {
      std::fill(lower, lower + n, 0.f);
      for (int64_t k = 0; bounded && k < k_; ++k) {
        const float p = coords_[i * k_ + k];
        const float* q = pick_coords_.data() + k * n_select_ + s0;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) lower[j] += (p - q[j]) * (p - q[j]);
      }
    }
    const float sep_cut = x.sep_cut(margin_);  // every sep is finite
    const float cut = bounded ? threshold : std::numeric_limits<float>::infinity();
    const float* sep = sep_.data() + s0;
    int count = 0;
    // The tests go into a bit mask 32 picks at a time (vectorised), then only its set bits are visited: most picks
    // are ruled out, and a store per pick indexed by the running count would chain every iteration to the last.
    for (int64_t w = 0; w < n; w += 32) {
      const int64_t width = std::min<int64_t>(32, n - w);
      uint32_t keep = 0;
#pragma omp simd reduction(| : keep)
      for (int64_t j = 0; j < width; ++j) {
        keep |= static_cast<uint32_t>((lower[w + j] < cut) & (sep[w + j] < sep_cut)) << j;
      }
      for (; keep != 0; keep &= keep - 1) out[count++] = s0 + w + __builtin_ctz(keep);
    }
    return count;
  }

  // The centres of the group of four picks from picks[g] into c, the last of `count` repeated where fewer remain
  // (four independent sums cost about what one does, whose chain of additions waits on itself); returns how many
  // of the four are picks to take.
  int group_centers(const int64_t* picks, int g, int count, const float* c[4]) const {
    const int n = std::min(4, count - g);
    for (int k = 0; k < 4; ++k) c[k] = center(picks[g + std::min(k, n - 1)]);
    return n;
  }

  // Row x takes the picks `picks[0, count)`, four distances at a time.
  void score(const float* row, RowState& x, const int64_t* picks, int count) const {
    float sq[4];
    const float* c[4];
    for (int g = 0; g < count; g += 4) {
      const int n = group_centers(picks, g, count, c);
      sq_distance4(row, c[0], c[1], c[2], c[3], d_, sq);
      for (int k = 0; k < n; ++k) x.take(picks[g + k], sq[k]);
    }
  }

  // Rows x and y both take the picks `picks[0, count)` (two rows x four picks per inner loop).
  void score_pair(const float* row_x, const float* row_y, RowState& x, RowState& y, const int64_t* picks,
                  int count) const {
    float sq[8];
    const float* c[4];
    for (int g = 0; g < count; g += 4) {
      const int n = group_centers(picks, g, count, c);
      sq_distance2x4(row_x, row_y, c[0], c[1], c[2], c[3], d_, sq);
      for (int k = 0; k < n; ++k) {
        x.take(picks[g + k], sq[k]);
        y.take(picks[g + k], sq[4 + k]);
      }
    }
  }

  // Lowers the min-distances of rows [r0, r1) by picks [u, t), each row taking the picks in pick order. Picks go
  // in tiles that stay in L1 while the rows pass. A row skips a whole tile when its smallest sep proves it no
  // closer than the row's nearest pick, and otherwise scores only its candidates (sep and the coordinates' bound;
  // both tested with m before the tile, which is sound as m only falls). Two neighbouring rows whose candidates
  // together outnumber the tile score the union of them at once (two rows x four picks per inner loop, fewer loads
  // per distance): a pick ruled out for a row leaves it unchanged anyway. Where the bound keeps more than 3/4 of
  // the pairs of a tile (rows far apart on every axis, e.g. isotropic noise) the call goes on without it.
  void apply(int64_t r0, int64_t r1, int64_t u, int64_t t) {
    int64_t picks_x[kMaxTile], picks_y[kMaxTile], both[kMaxTile];
    bool use_bound = k_ > 0;
    for (int64_t s0 = u; s0 < t; s0 += center_tile_) {
      int64_t seen = 0, kept = 0;
      const int64_t s1 = std::min(t, s0 + center_tile_);
      const float tile_sep = *std::min_element(sep_.begin() + s0, sep_.begin() + s1);
      for (int64_t i = r0; i < r1; ++i) {
        RowState x = load(i);
        if (!x.may_take(tile_sep, margin_)) continue;
        const int count_x = candidates(i, x, s0, s1, use_bound, picks_x);
        RowState y{};
        const bool pair = i + 1 < r1 && (y = load(i + 1)).may_take(tile_sep, margin_);
        const int count_y = pair ? candidates(i + 1, y, s0, s1, use_bound, picks_y) : 0;
        seen += (s1 - s0) * (pair ? 2 : 1);
        kept += count_x + count_y;
        const float* row_x = z_ + i * d_;
        if (pair && count_x + count_y > s1 - s0) {
          const int count = static_cast<int>(std::set_union(picks_x, picks_x + count_x, picks_y, picks_y + count_y,
                                                            both) - both);
          score_pair(row_x, row_x + d_, x, y, both, count);
        } else {
          score(row_x, x, picks_x, count_x);
          if (pair) score(row_x + d_, y, picks_y, count_y);
        }
        store(i, x);
        if (pair) store(++i, y);
      }
      if (kept * 4 > seen * 3) use_bound = false;
    }
  }

  const float* z_;
  int64_t n_, d_;
  float* min_dist_;
  std::vector<int32_t> nearest_;  // pick number of each row's nearest pick; -1 while min_dist is not a pick's
  std::vector<float> centers_;    // [picks, d] copies of the picked rows
  std::vector<float> sep_;        // min-distance of each pick when picked: <= its distance to every earlier pick
  const float* coords_;           // [N, k_] principal coordinates of the rows (AxisCoords)
  int64_t k_, n_select_;
  std::vector<float> pick_coords_;  // [k_, n_select] the picks' coordinates, axis by axis
  double coord_error_;
  std::vector<Block> blocks_;
  std::unique_ptr<std::atomic<bool>[]> locks_;
  std::vector<Entry> heap_;  // one entry per block, a max-heap in `later`'s order (selecting thread only)
  std::atomic<int64_t> published_{0};
  std::atomic<int64_t> cursor_{0};
  std::atomic<bool> stopped_{false};
  float margin_;
  int64_t center_tile_;
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

  // The bound costs a pass over the rows first: small selections go without it (and without helpers).
  const bool large = N * n_select >= kHelperWork;
  const AxisCoords axes =
      large && d > 0 ? principal_coords(projected) : AxisCoords{at::empty({N, 0}, projected.options()), 0, 0.0};
  LazySearch search(z, N, d, min_dist, n_select, axes);
  auto select = [&] {
    ArgMax next{0.f, start_index};
    if (init_distances.has_value()) next = search.verified_max(0);
    for (int64_t t = 0; t < n_select; ++t) {
      TORCH_CHECK_VALUE(next.index >= 0 && next.index < N, "kcenter_greedy: no farthest row after ", t,
                        " picks (projected must be finite)");
      out_idx[t] = next.index;
      search.add_pick(t, next.index, t == 0 ? 0.f : next.value);
      next = search.verified_max(t + 1);
      out_radius[t] = next.value;
    }
  };
  const int64_t helpers = large && search.num_blocks() > 1 ? at::get_num_threads() - 1 : 0;
  if (helpers <= 0) {
    select();
  } else {
    std::vector<std::thread> threads;
    {
      // Helpers stop when the selection ends, also by an exception (then the threads are joined, then it goes on).
      struct Stop {
        LazySearch& search;
        std::vector<std::thread>& threads;
        ~Stop() {
          search.stop();
          for (std::thread& thread : threads) thread.join();
        }
      } stop{search, threads};
      for (int64_t h = 0; h < helpers; ++h) threads.emplace_back([&search] { search.help(); });
      select();
    }
  }
  search.flush(n_select);
  return {indices, radii, min_dist_t};
}

}  // namespace
}  // namespace kcenter_greedy
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CPU, m) { m.impl("kcenter_greedy", &ad_fast::kcenter_greedy::kcenter_greedy_cpu); }
