// CPU kernel of the hard-alignment match: per (batch, tile of query positions), cosine logits against
// pre-normalised prompt tiles by BLAS, then a running row max / first argmax. The Nq x Np similarity matrix
// never exists; memory beyond inputs is one tile per thread and the normalised prompt.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cpu_isa.h"
#include "soft_align/soft_align_checks.h"

namespace ad_fast {
namespace soft_align {
namespace {

constexpr int64_t kQueryTile = 128;
constexpr int64_t kPromptTile = 512;
constexpr double kNormEps = 1e-8;  // as torch.nn.functional.normalize

template <typename scalar_t>
void match_kernel(const at::Tensor& q, const at::Tensor& k_unit, const at::Tensor& q_norm, at::Tensor& max_cos,
                  at::Tensor& index) {
  const int64_t B = q.size(0), Nq = q.size(2), Np = k_unit.size(2);
  const int64_t n_qtiles = (Nq + kQueryTile - 1) / kQueryTile;
  cpu::parallel_for(0, B * n_qtiles, 1, [&](int64_t begin, int64_t end) {
    // Worker threads do not inherit the caller's dispatch state: keep the tile ops below autograd (inputs may
    // require grad; out= ops refuse those).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor dots_buf = at::empty({kQueryTile * std::min(kPromptTile, Np)}, q.options());
    std::vector<scalar_t> best(kQueryTile);
    std::vector<int64_t> best_at(kQueryTile);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_qtiles, i0 = (item % n_qtiles) * kQueryTile;
      const int64_t tq = std::min(kQueryTile, Nq - i0);
      const at::Tensor q_tile_t = q[b].narrow(1, i0, tq).t();  // [tq, C]
      std::fill(best.begin(), best.end(), -std::numeric_limits<scalar_t>::infinity());
      std::fill(best_at.begin(), best_at.end(), int64_t(0));
      for (int64_t p0 = 0; p0 < Np; p0 += kPromptTile) {
        const int64_t tp = std::min(kPromptTile, Np - p0);
        at::Tensor dots = dots_buf.narrow(0, 0, tq * tp).view({tq, tp});
        at::mm_out(dots, q_tile_t, k_unit[b].narrow(1, p0, tp));
        const scalar_t* dp = dots.const_data_ptr<scalar_t>();
        for (int64_t r = 0; r < tq; ++r) {
          const scalar_t* row = dp + r * tp;
          for (int64_t j = 0; j < tp; ++j) {
            if (row[j] > best[r]) {  // strict: the lowest index wins a tie
              best[r] = row[j];
              best_at[r] = p0 + j;
            }
          }
        }
      }
      scalar_t* mc = max_cos.data_ptr<scalar_t>() + b * Nq + i0;
      int64_t* idx = index.data_ptr<int64_t>() + b * Nq + i0;
      const scalar_t* qn = q_norm.const_data_ptr<scalar_t>() + b * Nq + i0;
      for (int64_t r = 0; r < tq; ++r) {
        mc[r] = best[r] / std::max(qn[r], static_cast<scalar_t>(kNormEps));
        idx[r] = best_at[r];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> hard_align_match_cpu(const at::Tensor& q_in, const at::Tensor& k_in) {
  check_match_inputs(q_in, k_in);
  AD_CHECK_CPU(q_in);
  const at::ScalarType ct = q_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor q = q_in.to(ct).contiguous();
  const at::Tensor k = k_in.to(ct);
  const at::Tensor k_unit = (k / at::linalg_vector_norm(k, 2, {1}, true).clamp_min(kNormEps)).contiguous();
  const at::Tensor q_norm = at::linalg_vector_norm(q, 2, {1}).contiguous();  // [B, Nq]
  at::Tensor max_cos = at::empty({q.size(0), q.size(2)}, q.options());
  at::Tensor index = at::empty({q.size(0), q.size(2)}, q.options().dtype(at::kLong));
  if (max_cos.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "hard_align_match_cpu",
                               [&] { match_kernel<scalar_t>(q, k_unit, q_norm, max_cos, index); });
  }
  return {max_cos, index};
}

}  // namespace
}  // namespace soft_align
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CPU, m) { m.impl("hard_align_match", &ad_fast::soft_align::hard_align_match_cpu); }
