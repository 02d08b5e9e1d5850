// CPU kernel of knn_pruned: the exact nearest bank row (k = 1, l2 / sqeuclidean) without scoring most rows.
//
// For P orthonormal directions (`axes`, the bank's leading principal axes, chosen in ad_fast/ops/pruned_knn.py) the
// projected distance ||axes (q - b)|| is at most ||q - b||. Per query block: the projections qp = (q - centre) axes^T
// and the products qp . bp with every projected bank row (two float32 GEMMs) give every row's lower bound. Each query
// scores its row of smallest bound exactly (float64 sum over all D), then every row whose bound does not exceed the
// best exact distance so far, up to a rounding allowance. The allowance covers, by the standard dot-product error
// bound gamma_n = n u / (1 - n u) (u = 2^-24), the rounding of q - centre and of its D-term projection, of the stored
// float32 axes and projected rows, and of the P-term products and norms, so no row that could be nearest is skipped
// (a non-finite bound is scored too): the result is knn(query, bank, 1)'s, ties to the lower index. The work is
// two P-wide GEMMs plus D values per scored row: on DMAD's banks ~1 % of the rows at P = 256 of D = 1128.
//
// Memory: per thread one block of at most 2^22 bounds (block = min(256, 2^22 / N) queries).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "knn/knn_gemm.h"

namespace ad_fast {
namespace knn {
namespace {

constexpr int64_t kMaxQueryBlock = 256;
constexpr int64_t kBoundValues = int64_t(1) << 22;

template <typename B>
double exact_sq_distance(const float* q, const B* b, int64_t D) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < D; ++d) {
    const double diff = static_cast<double>(q[d]) - static_cast<double>(b[d]);
    acc += diff * diff;
  }
  return acc;
}

// Squared norms of the rows of a contiguous float32 [R, P] matrix, float64 sums rounded to float32.
std::vector<float> row_sq_norms(const at::Tensor& rows) {
  const int64_t R = rows.size(0), P = rows.size(1);
  const float* x = rows.const_data_ptr<float>();
  std::vector<float> out(R);
  cpu::parallel_for(0, R, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      double acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t p = 0; p < P; ++p) acc += static_cast<double>(x[r * P + p]) * static_cast<double>(x[r * P + p]);
      out[r] = static_cast<float>(acc);
    }
  });
  return out;
}

double gamma(double n) {
  const double nu = n * std::ldexp(1.0, -24);
  return nu / (1.0 - nu);
}

// Rounding allowances (see the header): a row j is scored when
//   products-based bound - slack_sq (|qp|^2 + |bp_j|^2)  <=  ((1 + stretch) sqrt(best) + reach)^2
struct Allowance {
  double slack_sq;  // relative error of |qp|^2 + |bp|^2 - 2 qp.bp, P-term float32 sums
  double stretch;   // how far the float32 axes can lengthen a vector (u sqrt(P) in Frobenius norm)
  double per_norm;  // |error of qp| per |q - centre|: (gamma_D + 2u) sqrt(P)
  double reach_b;   // largest error of a stored projected row: u max|bp| (+ its float64 computation)
};

// One query: `key` holds its N products qp . bp on entry and is overwritten with the pruning keys.
template <typename B>
void nearest_one(const float* q, const B* bank, int64_t N, int64_t D, float q_sq, double reach, const float* b_sq,
                 const Allowance& allow, float* key, double* out_sq, int64_t* out_index) {
  const float keep = static_cast<float>(1.0 - allow.slack_sq);
  float key_min = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : key_min)
  for (int64_t j = 0; j < N; ++j) {
    const float lower = (q_sq + b_sq[j]) * keep - 2.0f * key[j];
    key[j] = lower;
    key_min = std::min(key_min, lower);
  }
  int64_t first = 0;
  while (first < N && !(key[first] == key_min)) ++first;
  if (first == N) first = 0;  // every key NaN: all are scored below
  double best = exact_sq_distance(q, bank + first * D, D);
  int64_t best_j = first;
  const auto reach_of = [&](double sq) {
    const double r = (1.0 + allow.stretch) * std::sqrt(sq) + reach;
    return r * r * (1.0 + 4.0 * std::ldexp(1.0, -24));  // and the float rounding of this comparison's terms
  };
  double threshold = reach_of(best);
  for (int64_t j = 0; j < N; ++j) {
    if (j == first || key[j] > threshold) continue;  // NaN keys fall through and are scored
    const double d2 = exact_sq_distance(q, bank + j * D, D);
    if (d2 < best || (d2 == best && j < best_j)) {
      best = d2;
      best_j = j;
      threshold = reach_of(best);
    }
  }
  *out_sq = best;
  *out_index = best_j;
}

template <typename B>
void knn_pruned_impl(const at::Tensor& query, const at::Tensor& bank, const at::Tensor& centre, const at::Tensor& axes,
                     const at::Tensor& prefix, bool squared, at::Tensor& dist, at::Tensor& index) {
  const int64_t M = query.size(0), N = bank.size(0), D = query.size(1), P = axes.size(0);
  const double u = std::ldexp(1.0, -24);
  const std::vector<float> b_sq = row_sq_norms(prefix);
  double b_max = 0;
  for (float v : b_sq) b_max = std::max(b_max, static_cast<double>(v));
  const Allowance allow{4.0 * gamma(static_cast<double>(P + 2)), u * std::sqrt(static_cast<double>(P)),
                        (gamma(static_cast<double>(D)) + 2.0 * u) * std::sqrt(static_cast<double>(P)) * (1.0 + u),
                        2.0 * u * std::sqrt(b_max * (1.0 + 4.0 * u))};
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(kMaxQueryBlock, kBoundValues / N));
  const int64_t blocks = (M + block - 1) / block;
  const float* q = query.const_data_ptr<float>();
  const B* b = bank.const_data_ptr<B>();
  float* out_d = dist.mutable_data_ptr<float>();
  int64_t* out_i = index.mutable_data_ptr<int64_t>();
  cpu::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor buffer = at::empty({block * std::max(N, P)}, query.options());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t m0 = item * block, mb = std::min(block, M - m0);
      const at::Tensor centred = query.narrow(0, m0, mb) - centre;
      const std::vector<float> x_sq = row_sq_norms(centred);
      const at::Tensor qp = tile_products(centred, axes, buffer).contiguous();
      const std::vector<float> q_sq = row_sq_norms(qp);
      at::Tensor products = tile_products(qp, prefix, buffer);
      float* keys = products.mutable_data_ptr<float>();
      for (int64_t r = 0; r < mb; ++r) {
        const double reach = allow.per_norm * std::sqrt(static_cast<double>(x_sq[r]) * (1.0 + 4.0 * u)) + allow.reach_b;
        double best = 0;
        nearest_one<B>(q + (m0 + r) * D, b, N, D, q_sq[r], reach, b_sq.data(), allow, keys + r * N, &best,
                       out_i + m0 + r);
        out_d[m0 + r] = static_cast<float>(squared ? best : std::sqrt(best));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> knn_pruned_cpu(const at::Tensor& query, const at::Tensor& bank,
                                                  const at::Tensor& centre, const at::Tensor& axes,
                                                  const at::Tensor& bank_prefix, c10::string_view metric_name) {
  AD_CHECK_CPU(query);
  AD_CHECK_DEVICE(bank, query.device());
  AD_CHECK_DEVICE(centre, query.device());
  AD_CHECK_DEVICE(axes, query.device());
  AD_CHECK_DEVICE(bank_prefix, query.device());
  AD_CHECK_NDIM(query, 2);
  AD_CHECK_NDIM(bank, 2);
  AD_CHECK_NDIM(centre, 1);
  AD_CHECK_NDIM(axes, 2);
  AD_CHECK_NDIM(bank_prefix, 2);
  TORCH_CHECK_TYPE(query.scalar_type() == at::kFloat, "query must be float32, got ", query.scalar_type());
  const auto bank_type = bank.scalar_type();
  TORCH_CHECK_TYPE(bank_type == at::kFloat || bank_type == at::kHalf || bank_type == at::kBFloat16,
                   "bank must be float32, float16 or bfloat16, got ", bank_type);
  TORCH_CHECK_TYPE(centre.scalar_type() == at::kFloat && axes.scalar_type() == at::kFloat &&
                       bank_prefix.scalar_type() == at::kFloat,
                   "centre, axes and bank_prefix must be float32, got ", centre.scalar_type(), ", ",
                   axes.scalar_type(), " and ", bank_prefix.scalar_type());
  const int64_t D = query.size(1), N = bank.size(0), P = axes.size(0);
  TORCH_CHECK_VALUE(D > 0 && bank.size(1) == D, "query and bank must have the same non-zero feature dim, got ",
                    query.sizes(), " and ", bank.sizes());
  TORCH_CHECK_VALUE(N > 0, "bank must have at least one row");
  TORCH_CHECK_VALUE(centre.size(0) == D, "centre must have ", D, " values, got ", centre.size(0));
  TORCH_CHECK_VALUE(axes.size(1) == D && P > 0, "axes must be [P, ", D, "] with P > 0, got ", axes.sizes());
  TORCH_CHECK_VALUE(bank_prefix.size(0) == N && bank_prefix.size(1) == P, "bank_prefix must be [", N, ", ", P,
                    "], got ", bank_prefix.sizes());
  const std::string metric(metric_name);
  TORCH_CHECK_VALUE(metric == "l2" || metric == "sqeuclidean", "metric must be l2 or sqeuclidean, got '", metric,
                    "'");
  AD_CHECK_FINITE(query, "query");
  AD_CHECK_FINITE(bank, "bank");
  AD_CHECK_FINITE(centre, "centre");
  AD_CHECK_FINITE(axes, "axes");
  AD_CHECK_FINITE(bank_prefix, "bank_prefix");
  const at::Tensor q_c = query.contiguous(), b_c = bank.contiguous(), c_c = centre.contiguous(),
                   a_c = axes.contiguous(), p_c = bank_prefix.contiguous();
  at::Tensor dist = at::empty({q_c.size(0), 1}, q_c.options());
  at::Tensor index = at::empty({q_c.size(0), 1}, q_c.options().dtype(at::kLong));
  if (q_c.size(0) == 0) return {dist, index};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bank_type, "knn_pruned_cpu", [&] {
    knn_pruned_impl<scalar_t>(q_c, b_c, c_c, a_c, p_c, metric == "sqeuclidean", dist, index);
  });
  return {dist, index};
}

}  // namespace
}  // namespace knn
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CPU, m) { m.impl("knn_pruned", &ad_fast::knn::knn_pruned_cpu); }
