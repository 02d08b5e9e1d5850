// ATen binding of the CUDA soft-/hard-alignment kernels: checks, device guard, contiguous inputs, allocation,
// current stream. Compiled only when torch has CUDA (setup.py adds *_cuda.cpp then).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "common/cuda_dtype.h"
#include "soft_align/soft_align_checks.h"
#include "soft_align/soft_align_cuda.h"

namespace ad_fast {
namespace soft_align {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " CUDA kernel failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> soft_align_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                   const at::Tensor& v_in, double scale) {
  check_soft_align_inputs(q_in, k_in, v_in);
  check_logit_range(q_in, k_in, scale);
  AD_CHECK_CUDA(q_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const DType dtype = cuda_float_dtype(q_in.scalar_type(), "q, k, v");
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t B = q.size(0), Cqk = q.size(1), Nq = q.size(2), Np = k.size(2), Cv = v.size(1);
  at::Tensor out = at::empty({B, Cv, Nq}, q.options());
  at::Tensor lse = at::empty({B, Nq}, q.options().dtype(at::kFloat));
  check_launch(launch_soft_align_forward(q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(), B, Cqk, Cv, Nq,
                                         Np, static_cast<float>(scale), dtype, out.mutable_data_ptr(),
                                         lse.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream().stream()),
               "soft_align");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_align_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& lse_in, const at::Tensor& delta_in, double scale, bool compute_dv) {
  check_soft_align_backward_inputs(grad_out_in, q_in, k_in, v_in, lse_in, delta_in);
  AD_CHECK_CUDA(q_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const DType dtype = cuda_float_dtype(q_in.scalar_type(), "q, k, v");
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const at::Tensor grad_out = grad_out_in.to(q.scalar_type()).contiguous();
  const at::Tensor lse = lse_in.to(at::kFloat).contiguous(), delta = delta_in.to(at::kFloat).contiguous();
  const int64_t B = q.size(0), Cqk = q.size(1), Nq = q.size(2), Np = k.size(2), Cv = v.size(1);
  at::Tensor grad_q = at::empty_like(q), grad_k = at::empty_like(k);
  at::Tensor grad_v = compute_dv ? at::empty_like(v) : at::empty({0}, v.options());
  if (Nq == 0) {  // no query: nothing flows back to the prompt
    grad_k.zero_();
    if (compute_dv) grad_v.zero_();
    return {grad_q, grad_k, grad_v};
  }
  check_launch(launch_soft_align_backward(grad_out.const_data_ptr(), q.const_data_ptr(), k.const_data_ptr(),
                                          v.const_data_ptr(), lse.const_data_ptr<float>(),
                                          delta.const_data_ptr<float>(), B, Cqk, Cv, Nq, Np,
                                          static_cast<float>(scale), dtype, grad_q.mutable_data_ptr(),
                                          grad_k.mutable_data_ptr(), compute_dv ? grad_v.mutable_data_ptr() : nullptr,
                                          c10::cuda::getCurrentCUDAStream().stream()),
               "_soft_align_backward");
  return {grad_q, grad_k, grad_v};
}

std::tuple<at::Tensor, at::Tensor> hard_align_match_cuda(const at::Tensor& q_in, const at::Tensor& k_in) {
  check_match_inputs(q_in, k_in);
  AD_CHECK_CUDA(q_in);
  TORCH_CHECK(q_in.scalar_type() != at::kDouble, "q must be float32, float16 or bfloat16 on CUDA, got float64");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.to(at::kFloat).contiguous();
  const at::Tensor k = k_in.to(at::kFloat);
  const at::Tensor k_unit = (k / at::linalg_vector_norm(k, 2, {1}, true).clamp_min(1e-8)).contiguous();
  const int64_t B = q.size(0), C = q.size(1), Nq = q.size(2), Np = k.size(2);
  at::Tensor best_dot = at::empty({B, Nq}, q.options());
  at::Tensor index = at::empty({B, Nq}, q.options().dtype(at::kLong));
  check_launch(launch_hard_align_match(q.const_data_ptr<float>(), k_unit.const_data_ptr<float>(), B, C, Nq, Np,
                                       best_dot.mutable_data_ptr<float>(), index.mutable_data_ptr<int64_t>(),
                                       c10::cuda::getCurrentCUDAStream().stream()),
               "hard_align_match");
  const at::Tensor max_cos = best_dot / at::linalg_vector_norm(q, 2, {1}).clamp_min(1e-8);
  return {max_cos, index};
}

}  // namespace
}  // namespace soft_align
}  // namespace ad_fast

TORCH_LIBRARY_IMPL(ad_fast, CUDA, m) {
  m.impl("soft_align", &ad_fast::soft_align::soft_align_cuda);
  m.impl("_soft_align_backward", &ad_fast::soft_align::soft_align_backward_cuda);
  m.impl("hard_align_match", &ad_fast::soft_align::hard_align_match_cuda);
}
