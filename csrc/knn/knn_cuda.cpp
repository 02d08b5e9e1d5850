// ATen binding of the CUDA kNN: checks, device guard, scratch allocation, current stream, NaN/Inf report.
// Compiled only when torch has CUDA (setup.py adds *_cuda.cpp then).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "common/checks.h"
#include "common/cuda_dtype.h"
#include "knn/knn_checks.h"
#include "knn/knn_common.h"
#include "knn/knn_cuda.h"

namespace ad_fast {
namespace knn {
namespace {

std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& query_in, const at::Tensor& bank_in, int64_t k,
                                            c10::string_view metric_name, const c10::optional<at::Tensor>& sq_norms) {
  AD_CHECK_CUDA(query_in);
  const Metric metric = check_arguments(query_in, bank_in, k, metric_name, sq_norms);
  const DType dtype = cuda_float_dtype(query_in.scalar_type(), "query");
  TORCH_CHECK_TYPE(bank_in.scalar_type() == query_in.scalar_type(), "bank must have the query's dtype on CUDA (",
                   query_in.scalar_type(), "), got ", bank_in.scalar_type());
  const c10::cuda::CUDAGuard guard(query_in.device());
  const at::Tensor query = query_in.contiguous();
  const at::Tensor bank = bank_in.contiguous();
  const at::Tensor norms = sq_norms.has_value() ? sq_norms->contiguous() : at::Tensor();
  const int64_t M = query.size(0), N = bank.size(0), D = query.size(1);
  at::Tensor dist = at::empty({M, k}, query.options());
  at::Tensor index = at::empty({M, k}, query.options().dtype(at::kLong));
  if (M == 0) return {dist, index};

  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t splits = cuda_bank_splits(M, N, 4 * sms);
  const int64_t cap = std::min<int64_t>(k + kSlack, N);
  const auto f32 = query.options().dtype(at::kFloat);
  const auto i64 = query.options().dtype(at::kLong);
  const auto f64 = query.options().dtype(at::kDouble);
  at::Tensor coef = at::empty({2 * N}, f32);
  at::Tensor cand_key = at::empty({splits * M * cap}, f32);
  at::Tensor cand_idx = at::empty({splits * M * cap}, i64);
  at::Tensor cand_count = at::empty({splits * M}, query.options().dtype(at::kInt));
  at::Tensor merged_idx = at::empty({M * cap}, i64);
  at::Tensor merged_rank = at::empty({M * cap}, f64);
  at::Tensor merged_dist = at::empty({M * cap}, f64);
  at::Tensor nonfinite = at::zeros({1}, query.options().dtype(at::kInt));
  const KnnScratch scratch{coef.mutable_data_ptr<float>(),       cand_key.mutable_data_ptr<float>(),
                           cand_idx.mutable_data_ptr<int64_t>(), cand_count.mutable_data_ptr<int32_t>(),
                           merged_idx.mutable_data_ptr<int64_t>(), merged_rank.mutable_data_ptr<double>(),
                           merged_dist.mutable_data_ptr<double>(), nonfinite.mutable_data_ptr<int32_t>()};
  const cudaError_t err = launch_knn(query.const_data_ptr(), bank.const_data_ptr(), dtype, M, N, D, k, metric,
                                     norms.defined() ? norms.const_data_ptr<float>() : nullptr, splits, scratch,
                                     dist.mutable_data_ptr(), index.mutable_data_ptr<int64_t>(),
                                     c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "knn CUDA kernel failed: ", cudaGetErrorString(err));
  if (nonfinite.item<int32_t>() != 0) {
    TORCH_CHECK_VALUE(at::isfinite(query).all().item<bool>(), "query contains NaN or Inf");
    TORCH_CHECK_VALUE(at::isfinite(bank).all().item<bool>(), "bank contains NaN or Inf");
    TORCH_CHECK_VALUE(false, "query and bank values are too large: their distances overflow float32");
  }
  return {dist, index};
}

}  // namespace
}  // namespace knn
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CUDA, m) { m.impl("knn", &ad_fast::knn::knn_cuda); }
