// Argument checks shared by the CPU and CUDA entry points of kcenter_greedy (ATen; not for the .cu).
#pragma once

#include <ATen/ATen.h>

#include "common/checks.h"

namespace ad_fast {
namespace kcenter_greedy {

// projected: float32 [N, d]; init_distances (optional): finite float32 [N] on projected's device; otherwise
// start_index in [0, N) whenever something is selected. The caller checks projected's device type.
inline void check_arguments(const at::Tensor& projected, int64_t n_select, int64_t start_index,
                            const c10::optional<at::Tensor>& init_distances) {
  AD_CHECK_NDIM(projected, 2);
  TORCH_CHECK_TYPE(projected.scalar_type() == at::kFloat, "projected must be float32, got ", projected.scalar_type());
  const int64_t N = projected.size(0);
  TORCH_CHECK_VALUE(n_select >= 0 && n_select <= N, "n_select must be in [0, ", N, "], got ", n_select);
  if (init_distances.has_value()) {
    AD_CHECK_DEVICE(*init_distances, projected.device());
    TORCH_CHECK_VALUE(init_distances->dim() == 1 && init_distances->size(0) == N &&
                          init_distances->scalar_type() == at::kFloat,
                      "init_distances must be a float32 [", N, "] tensor, got ", init_distances->scalar_type(), " ",
                      init_distances->sizes());
    // NaN or -inf would never win the argmax, so the greedy loop would pick no valid row.
    AD_CHECK_FINITE(*init_distances, "init_distances");
  } else if (n_select > 0) {
    TORCH_CHECK_VALUE(start_index >= 0 && start_index < N, "start_index must be in [0, ", N, "), got ",
                      start_index);
  }
}

}  // namespace kcenter_greedy
}  // namespace ad_fast
