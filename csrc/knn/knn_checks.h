// Device-independent argument checks shared by the CPU and CUDA entry points of knn (ATen; not for the .cu).
// Each entry point checks devices and the dtypes its kernels take; this checks shapes, k, the metric and norms.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/checks.h"
#include "knn/knn_common.h"

namespace ad_fast {
namespace knn {

// query [M, D], bank [N, D] with D > 0, k in [1, N], a known metric, and bank_sq_norms float32 [N] on the query's
// device when given. Returns the parsed metric.
inline Metric check_arguments(const at::Tensor& query, const at::Tensor& bank, int64_t k, c10::string_view metric_name,
                              const c10::optional<at::Tensor>& sq_norms) {
  AD_CHECK_DEVICE(bank, query.device());
  AD_CHECK_NDIM(query, 2);
  AD_CHECK_NDIM(bank, 2);
  TORCH_CHECK_VALUE(query.size(1) == bank.size(1) && query.size(1) > 0,
                    "query and bank must have the same non-zero feature dim, got ", query.sizes(), " and ",
                    bank.sizes());
  TORCH_CHECK_VALUE(k >= 1 && k <= bank.size(0), "k must be in [1, ", bank.size(0), "], got ", k);
  Metric metric;
  TORCH_CHECK_VALUE(parse_metric(std::string(metric_name).c_str(), &metric),
                    "metric must be one of l2, sqeuclidean, cosine, ip; got '", std::string(metric_name), "'");
  if (sq_norms.has_value()) {
    AD_CHECK_DEVICE(*sq_norms, query.device());
    TORCH_CHECK_VALUE(sq_norms->dim() == 1 && sq_norms->size(0) == bank.size(0) &&
                          sq_norms->scalar_type() == at::kFloat,
                      "bank_sq_norms must be a float32 [N] tensor, got ", sq_norms->scalar_type(), " ",
                      sq_norms->sizes());
  }
  return metric;
}

}  // namespace knn
}  // namespace ad_fast
