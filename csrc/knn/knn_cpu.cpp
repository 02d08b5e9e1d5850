// CPU kernel of the exact kNN op. The bank is scanned in chunks, one after the other: l2/sqeuclidean (which rank
// the problem translated by the first query row, so a large offset shared by the data costs no precision) and a
// float16/bfloat16 bank first convert the chunk's rows once to the query dtype (centred rows b - c and their
// squared norms for l2/sqeuclidean), a bank of the query dtype ranked by cosine/ip is read in place as one chunk.
// Each chunk is scanned in tiles: per (query block, bank tile) one GEMM (oneDNN for float32, else at::mm_out into
// a per-thread buffer), then a fused epilogue turns the products into ranking keys (knn_common.h), checks them for
// NaN/Inf and updates a sorted running list of the best k + kSlack candidates per query and bank split, kept
// across chunks. Finally each query's candidates are re-scored exactly (float64 accumulation) and the best k are
// written in (distance, index) order.
//
// Memory: when the bank is converted, one chunk of converted rows (whole kBankTile tiles, at most kChunkBytes and
// a quarter of the bank's own bytes, but at least one tile: a memory-mapped bank is never copied whole); per
// thread one kQueryBlock x kBankTile product tile; per query and bank split (k + kSlack) candidates. Nothing grows
// with M x N.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "knn/knn_checks.h"
#include "knn/knn_common.h"
#include "knn/knn_gemm.h"

namespace ad_fast {
namespace knn {
namespace {

constexpr int64_t kQueryBlock = 256;
constexpr int64_t kBankTile = 512;
// A chunk of converted (centred) bank rows: whole tiles, at most kChunkBytes and 1 / kChunkBankDivisor of the
// bank's own bytes, but at least one tile.
constexpr int64_t kChunkBytes = int64_t(64) << 20;
constexpr int64_t kChunkBankDivisor = 4;

// Best candidates of one query, sorted by (key, index). Indices arrive in increasing order within one bank
// split (chunks are scanned in bank order, each split in row order), so an equal key never moves ahead of an
// earlier one: ties keep the lower index.
template <typename T>
struct TopList {
  T* key;
  int64_t* idx;
  int32_t* count;
  int32_t cap;

  T threshold() const { return *count < cap ? std::numeric_limits<T>::infinity() : key[cap - 1]; }

  // Precondition: k < threshold().
  void push(T k, int64_t i) {
    int32_t pos = *count < cap ? *count : cap - 1;
    while (pos > 0 && key[pos - 1] > k) {
      key[pos] = key[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    key[pos] = k;
    idx[pos] = i;
    if (*count < cap) ++*count;
  }
};

// Ranking-key coefficients per bank row of the cosine and ip metrics (see knn_common.h; l2 centres instead).
template <typename T>
void key_coefficients(const at::Tensor& bank, const c10::optional<at::Tensor>& sq_norms, Metric metric,
                      std::vector<T>& alpha, std::vector<T>& beta) {
  const int64_t N = bank.size(0), D = bank.size(1);
  alpha.assign(N, T(0));
  beta.assign(N, metric == Metric::InnerProduct ? T(-1) : T(-2));
  if (metric == Metric::InnerProduct) return;
  std::vector<double> norms(N);
  if (sq_norms.has_value()) {
    const float* src = sq_norms->const_data_ptr<float>();
    for (int64_t j = 0; j < N; ++j) norms[j] = src[j];
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bank.scalar_type(), "knn_bank_norms", [&] {
      const scalar_t* b = bank.const_data_ptr<scalar_t>();
      cpu::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) {
            const double v = static_cast<double>(b[j * D + d]);
            acc += v * v;
          }
          norms[j] = acc;
        }
      });
    });
  }
  for (int64_t j = 0; j < N; ++j) beta[j] = static_cast<T>(-1.0 / std::max(std::sqrt(norms[j]), kNormEps));
}

// Keys of one row of products (in place); returns the row minimum, sets *nonfinite on NaN/Inf keys.
template <typename T>
T keys_of_row(T* s, const T* alpha, const T* beta, int64_t n, bool* nonfinite) {
  T row_min = std::numeric_limits<T>::infinity();
  T check = 0;  // stays 0 unless a key is NaN or +-Inf (x * 0 is NaN for those)
#pragma omp simd reduction(min : row_min) reduction(+ : check)
  for (int64_t j = 0; j < n; ++j) {
    const T key = alpha[j] + beta[j] * s[j];
    s[j] = key;
    row_min = std::min(row_min, key);
    check += key * T(0);
  }
  if (!(check == T(0))) *nonfinite = true;
  return row_min;
}

struct Candidates {
  int64_t splits, rows, cap;
  std::vector<int32_t> count;  // [splits, rows]
  std::vector<int64_t> idx;    // [splits, rows, cap]
};

// Scans rows [n0, n1) of `chunk` (bank rows row0 + [n0, n1)) for query rows [m0, m0 + mb): GEMM tile by tile,
// fused key + top-list epilogue. alpha/beta hold the key coefficients of the chunk's rows (indexed like `chunk`).
template <typename T>
void scan(const at::Tensor& query, const at::Tensor& chunk, int64_t row0, int64_t m0, int64_t mb, int64_t n0,
          int64_t n1, const T* alpha, const T* beta, int64_t split, Candidates& cand, std::vector<T>& cand_key,
          at::Tensor& prod_buf, bool* nonfinite) {
  const at::Tensor q = query.narrow(0, m0, mb);
  for (int64_t t0 = n0; t0 < n1; t0 += kBankTile) {
    const int64_t nb = std::min(kBankTile, n1 - t0);
    at::Tensor prod = tile_products(q, chunk.narrow(0, t0, nb), prod_buf);
    T* p = prod.mutable_data_ptr<T>();
    for (int64_t r = 0; r < mb; ++r) {
      T* s = p + r * nb;
      const T row_min = keys_of_row<T>(s, alpha + t0, beta + t0, nb, nonfinite);
      const int64_t slot = split * cand.rows + m0 + r;
      TopList<T> list{cand_key.data() + slot * cand.cap, cand.idx.data() + slot * cand.cap, cand.count.data() + slot,
                      static_cast<int32_t>(cand.cap)};
      T threshold = list.threshold();
      if (!(row_min < threshold)) continue;
      for (int64_t j = 0; j < nb; ++j) {
        if (s[j] < threshold) {
          list.push(s[j], row0 + t0 + j);
          threshold = list.threshold();
        }
      }
    }
  }
}

// Writes bank rows [row0, row0 + rows), converted to T, into `out` [rows, D]: as b - centre with their squared
// norms (float64 accumulation) in sq[0, rows) when `centre` is given, else as they are.
template <typename T>
void convert_chunk(const at::Tensor& bank, int64_t row0, int64_t rows, const T* centre, at::Tensor& out, T* sq) {
  const at::Tensor src = bank.narrow(0, row0, rows);
  if (centre == nullptr) {
    out.copy_(src);
    return;
  }
  const int64_t D = bank.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bank.scalar_type(), "knn_centre_chunk", [&] {
    const scalar_t* b = src.const_data_ptr<scalar_t>();
    T* t = out.mutable_data_ptr<T>();
    cpu::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        double acc = 0;
        for (int64_t d = 0; d < D; ++d) {
          const T v = static_cast<T>(b[j * D + d]) - centre[d];
          t[j * D + d] = v;
          acc += static_cast<double>(v) * static_cast<double>(v);
        }
        sq[j] = static_cast<T>(acc);
      }
    });
  });
}

// Exact ranking value of one candidate (smaller is better) and its reported distance, in float64.
template <typename T, typename B>
std::pair<double, double> exact_score(const T* q, const B* b, int64_t D, Metric metric) {
  double dot = 0, qq = 0, bb = 0, d2 = 0;
  if (metric == Metric::L2 || metric == Metric::SqEuclidean) {
#pragma omp simd reduction(+ : d2)
    for (int64_t d = 0; d < D; ++d) {
      const double diff = static_cast<double>(q[d]) - static_cast<double>(b[d]);
      d2 += diff * diff;
    }
    return {d2, metric == Metric::L2 ? std::sqrt(d2) : d2};
  }
#pragma omp simd reduction(+ : dot, qq, bb)
  for (int64_t d = 0; d < D; ++d) {
    const double x = static_cast<double>(q[d]), y = static_cast<double>(b[d]);
    dot += x * y;
    qq += x * x;
    bb += y * y;
  }
  if (metric == Metric::InnerProduct) return {-dot, dot};
  const double cos_dist = 1.0 - dot / (std::max(std::sqrt(qq), kNormEps) * std::max(std::sqrt(bb), kNormEps));
  return {cos_dist, cos_dist};
}

// Merges each query's candidates over the bank splits, re-scores them exactly and writes the best k.
template <typename T, typename B>
void finish(const at::Tensor& query, const at::Tensor& bank, int64_t k, Metric metric, const Candidates& cand,
            at::Tensor& dist, at::Tensor& index) {
  const int64_t M = query.size(0), D = query.size(1);
  const T* q = query.const_data_ptr<T>();
  const B* b = bank.const_data_ptr<B>();
  T* out_d = dist.mutable_data_ptr<T>();
  int64_t* out_i = index.mutable_data_ptr<int64_t>();
  cpu::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> ids;
    std::vector<std::pair<std::pair<double, int64_t>, double>> scored;  // ((rank, index), distance)
    for (int64_t m = begin; m < end; ++m) {
      ids.clear();
      for (int64_t s = 0; s < cand.splits; ++s) {
        const int64_t slot = s * cand.rows + m;
        const auto first = cand.idx.begin() + slot * cand.cap;
        ids.insert(ids.end(), first, first + cand.count[slot]);
      }
      scored.clear();
      for (int64_t j : ids) {
        const auto score = exact_score<T, B>(q + m * D, b + j * D, D, metric);
        scored.push_back({{score.first, j}, score.second});
      }
      std::partial_sort(scored.begin(), scored.begin() + k, scored.end());
      for (int64_t c = 0; c < k; ++c) {
        out_d[m * k + c] = static_cast<T>(scored[c].second);
        out_i[m * k + c] = scored[c].first.second;
      }
    }
  });
}

template <typename T>
void knn_cpu_impl(const at::Tensor& query, const at::Tensor& bank, int64_t k, Metric metric,
                  const c10::optional<at::Tensor>& sq_norms, at::Tensor& dist, at::Tensor& index) {
  const int64_t M = query.size(0), N = bank.size(0), D = query.size(1);
  // l2/sqeuclidean: the tiled pass ranks rows of the translated problem (q - c, b - c), c the first query row,
  // which has the same distances. Without it, a large offset shared by query and bank would leave the keys
  // ||b||^2 - 2 q.b with no significant digits for the distance (offset / spread ~ 1e3 in float32), and the
  // pre-selection of k + kSlack candidates would lose the true neighbours. c is a row of the data, not a mean:
  // rows near it subtract exactly (Sterbenz), and integer-valued data stay integers, so exact ties stay exact.
  const bool centred = metric == Metric::L2 || metric == Metric::SqEuclidean;
  // The bank is read in place (one chunk) unless its rows are centred or converted: then chunk by chunk, each
  // converted once for all query blocks, as many whole tiles as fit in kChunkBytes and in a quarter of the bank's
  // bytes (at least one tile).
  const bool converted = centred || bank.scalar_type() != query.scalar_type();
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(T));
  const int64_t chunk_bytes = std::min(kChunkBytes, N * D * bank.element_size() / kChunkBankDivisor);
  const int64_t chunk_rows =
      converted ? std::min(N, std::max<int64_t>(1, chunk_bytes / (row_bytes * kBankTile)) * kBankTile) : N;
  std::vector<T> alpha, beta, centre;
  at::Tensor ranked_query = query;
  if (centred) {
    const T* first = query.const_data_ptr<T>();
    centre.assign(first, first + D);
    ranked_query = (query - query.narrow(0, 0, 1)).contiguous();
    alpha.assign(chunk_rows, T(0));  // squared norms of the current chunk's centred rows
    beta.assign(chunk_rows, T(-2));
  } else {
    key_coefficients<T>(bank, sq_norms, metric, alpha, beta);
  }
  at::Tensor chunk_buf = converted ? at::empty({chunk_rows, D}, query.options()) : at::Tensor();

  const int64_t query_block = std::min(kQueryBlock, M);
  const int64_t query_blocks = (M + query_block - 1) / query_block;
  const int64_t threads = at::get_num_threads();
  // Split the bank too when there are too few query blocks to keep every thread busy.
  const int64_t max_splits = std::max<int64_t>(1, N / (4 * kBankTile));
  const int64_t splits = std::min(max_splits, std::max<int64_t>(1, (2 * threads + query_blocks - 1) / query_blocks));

  Candidates cand{splits, M, std::min<int64_t>(k + kSlack, N), {}, {}};
  cand.count.assign(splits * M, 0);
  cand.idx.resize(splits * M * cand.cap);
  std::vector<T> cand_key(splits * M * cand.cap);
  std::atomic<bool> nonfinite{false};

  for (int64_t row0 = 0; row0 < N; row0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, N - row0);
    at::Tensor chunk = converted ? chunk_buf.narrow(0, 0, rows) : bank.narrow(0, row0, rows);
    if (converted) convert_chunk<T>(bank, row0, rows, centred ? centre.data() : nullptr, chunk, alpha.data());
    // Centred chunks have their own coefficients (alpha = their squared norms); the others use the bank-wide ones.
    const T* chunk_alpha = centred ? alpha.data() : alpha.data() + row0;
    const T* chunk_beta = centred ? beta.data() : beta.data() + row0;
    const int64_t split_rows = (rows + splits - 1) / splits;
    cpu::parallel_for(0, query_blocks * splits, 1, [&](int64_t begin, int64_t end) {
      at::Tensor prod_buf = at::empty({query_block * kBankTile}, query.options());
      bool local_nonfinite = false;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t qb = item / splits, split = item % splits;
        const int64_t m0 = qb * query_block, mb = std::min(query_block, M - m0);
        const int64_t n0 = split * split_rows, n1 = std::min(rows, n0 + split_rows);
        scan<T>(ranked_query, chunk, row0, m0, mb, n0, n1, chunk_alpha, chunk_beta, split, cand, cand_key, prod_buf,
                &local_nonfinite);
      }
      if (local_nonfinite) nonfinite = true;
    });
  }

  if (nonfinite) {
    TORCH_CHECK_VALUE(at::isfinite(query).all().item<bool>(), "query contains NaN or Inf");
    TORCH_CHECK_VALUE(at::isfinite(bank).all().item<bool>(), "bank contains NaN or Inf");
    TORCH_CHECK_VALUE(false, "query and bank values are too large: their distances overflow ", query.scalar_type());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bank.scalar_type(), "knn_cpu_finish", [&] {
    finish<T, scalar_t>(query, bank, k, metric, cand, dist, index);
  });
}

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& query_in, const at::Tensor& bank_in, int64_t k,
                                           c10::string_view metric_name, const c10::optional<at::Tensor>& sq_norms) {
  AD_CHECK_CPU(query_in);
  const Metric metric = check_arguments(query_in, bank_in, k, metric_name, sq_norms);
  TORCH_CHECK_TYPE(query_in.scalar_type() == at::kFloat || query_in.scalar_type() == at::kDouble,
                   "query must be float32 or float64 on CPU, got ", query_in.scalar_type());
  const auto bank_type = bank_in.scalar_type();
  TORCH_CHECK_TYPE(bank_type == query_in.scalar_type() || bank_type == at::kHalf || bank_type == at::kBFloat16,
                   "bank must have the query's dtype or be float16/bfloat16, got ", bank_type);
  const at::Tensor query = query_in.contiguous();
  const at::Tensor bank = bank_in.contiguous();
  const c10::optional<at::Tensor> norms =
      sq_norms.has_value() ? c10::optional<at::Tensor>(sq_norms->contiguous()) : c10::nullopt;
  at::Tensor dist = at::empty({query.size(0), k}, query.options());
  at::Tensor index = at::empty({query.size(0), k}, query.options().dtype(at::kLong));
  if (query.size(0) == 0) return {dist, index};
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn_cpu", [&] {
    knn_cpu_impl<scalar_t>(query, bank, k, metric, norms, dist, index);
  });
  return {dist, index};
}

}  // namespace
}  // namespace knn
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CPU, m) { m.impl("knn", &ad_fast::knn::knn_cpu); }
