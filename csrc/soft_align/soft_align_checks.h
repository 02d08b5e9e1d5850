// Shape and dtype checks of the alignment ops, shared by the CPU and CUDA entry points (ATen side only).
#pragma once

#include <ATen/ATen.h>

#include <cfloat>
#include <cmath>
#include <vector>

#include "common/checks.h"

namespace ad_fast {
namespace soft_align {

// q [B, Cqk, Nq], k [B, Cqk, Np] with Np >= 1; v [B, Cv, Np]; all finite (NaN/Inf raise a ValueError).
inline void check_match_inputs(const at::Tensor& q, const at::Tensor& k) {
  AD_CHECK_NDIM(q, 3);
  AD_CHECK_NDIM(k, 3);
  AD_CHECK_FLOATING(q);
  AD_CHECK_SAME_DTYPE(q, k);
  AD_CHECK_DEVICE(k, q.device());
  TORCH_CHECK(k.size(0) == q.size(0), "k must have batch ", q.size(0), " like q, got shape ", k.sizes());
  TORCH_CHECK(k.size(1) == q.size(1), "k must have Cqk=", q.size(1), " channels like q, got shape ", k.sizes());
  TORCH_CHECK(k.size(2) > 0, "k must hold at least one prompt position, got shape ", k.sizes());
  AD_CHECK_FINITE(q, "q");
  AD_CHECK_FINITE(k, "k");
}

inline void check_soft_align_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_match_inputs(q, k);
  AD_CHECK_NDIM(v, 3);
  AD_CHECK_SAME_DTYPE(q, v);
  AD_CHECK_DEVICE(v, q.device());
  TORCH_CHECK(v.size(0) == q.size(0) && v.size(2) == k.size(2), "v must have shape [", q.size(0), ", Cv, ",
              k.size(2), "] to match q and k, got ", v.sizes());
  AD_CHECK_FINITE(v, "v");
}

// |scale * <q_i, k_p>| <= |scale| * max_i ||q_i|| * max_p ||k_p|| (Cauchy-Schwarz; norms in float64). Where that
// bound leaves the compute dtype's finite range a logit could overflow to Inf and the softmax turn NaN, so the
// inputs are refused (the reference refuses the same inputs). Float16/bfloat16 compute in float32.
inline void check_logit_range(const at::Tensor& q, const at::Tensor& k, double scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale), "scale must be finite, got ", scale);
  if (q.numel() == 0 || k.numel() == 0 || scale == 0.0) return;
  const double q_norm = at::linalg_vector_norm(q.to(at::kDouble), 2, at::IntArrayRef{1}).max().item<double>();
  const double k_norm = at::linalg_vector_norm(k.to(at::kDouble), 2, at::IntArrayRef{1}).max().item<double>();
  if (q_norm == 0.0 || k_norm == 0.0) return;
  const bool is_double = q.scalar_type() == at::kDouble;
  const double limit = is_double ? DBL_MAX : FLT_MAX;
  const double bound = std::abs(scale) * q_norm * k_norm;
  TORCH_CHECK_VALUE(std::isfinite(bound) && bound <= limit, "q, k, scale: |scale| * max||q|| * max||k|| = ", bound,
                    " exceeds the largest finite ", is_double ? "float64" : "float32", " (", limit,
                    "), so the attention logits could overflow; rescale q, k or scale");
}

inline void check_soft_align_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const at::Tensor& lse, const at::Tensor& delta) {
  check_soft_align_inputs(q, k, v);
  const std::vector<int64_t> out_shape{q.size(0), v.size(1), q.size(2)};
  const std::vector<int64_t> row_shape{q.size(0), q.size(2)};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape), "grad_out must have shape ",
              at::IntArrayRef(out_shape), ", got ", grad_out.sizes());
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(row_shape), "lse must have shape ", at::IntArrayRef(row_shape),
              ", got ", lse.sizes());
  TORCH_CHECK(delta.sizes() == at::IntArrayRef(row_shape), "delta must have shape ", at::IntArrayRef(row_shape),
              ", got ", delta.sizes());
  AD_CHECK_DEVICE(grad_out, q.device());
  AD_CHECK_DEVICE(lse, q.device());
  AD_CHECK_DEVICE(delta, q.device());
}

}  // namespace soft_align
}  // namespace ad_fast
