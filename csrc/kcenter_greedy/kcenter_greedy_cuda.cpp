// ATen binding of the CUDA k-center selection: checks, device guard, state allocation, current stream.
// Compiled only when torch has CUDA (setup.py adds *_cuda.cpp then).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "common/checks.h"
#include "kcenter_greedy/kcenter_greedy_checks.h"
#include "kcenter_greedy/kcenter_greedy_cuda.h"

namespace ad_fast {
namespace kcenter_greedy {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> kcenter_greedy_cuda(const at::Tensor& projected_in,
                                                                   int64_t n_select, int64_t start_index,
                                                                   const c10::optional<at::Tensor>& init_distances) {
  AD_CHECK_CUDA(projected_in);
  check_arguments(projected_in, n_select, start_index, init_distances);
  const int64_t N = projected_in.size(0), d = projected_in.size(1);
  const c10::cuda::CUDAGuard guard(projected_in.device());
  at::Tensor picks = at::empty({n_select}, projected_in.options().dtype(at::kLong));
  at::Tensor radii = at::empty({n_select}, projected_in.options());
  at::Tensor min_dist = init_distances.has_value()
                            ? init_distances->contiguous().clone()
                            : at::full({N}, std::numeric_limits<float>::infinity(), projected_in.options());
  if (n_select == 0) return {picks, radii, min_dist};
  TORCH_CHECK_VALUE(d > 0, "projected must have at least one column");
  const at::Tensor projected = projected_in.contiguous();
  if (!init_distances.has_value()) picks.narrow(0, 0, 1).fill_(start_index);
  // ArgMax is {float, int64}: 16 bytes with padding; allocate it as raw bytes.
  at::Tensor partial = at::empty({cuda_partials(N) * static_cast<int64_t>(sizeof(ArgMax))},
                                 projected.options().dtype(at::kByte));
  const cudaError_t err = launch_kcenter_greedy(
      projected.const_data_ptr<float>(), N, d, n_select, init_distances.has_value(), min_dist.mutable_data_ptr<float>(),
      picks.mutable_data_ptr<int64_t>(), radii.mutable_data_ptr<float>(),
      reinterpret_cast<ArgMax*>(partial.mutable_data_ptr<uint8_t>()), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "kcenter_greedy CUDA kernel failed: ", cudaGetErrorString(err));
  return {picks, radii, min_dist};
}

}  // namespace
}  // namespace kcenter_greedy
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CUDA, m) { m.impl("kcenter_greedy", &ad_fast::kcenter_greedy::kcenter_greedy_cuda); }
