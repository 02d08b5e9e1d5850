// Launchers of the CUDA soft-/hard-alignment kernels: raw pointers, sizes, a dtype enum and a stream; no torch
// types. Every tensor is contiguous [B, C, N] (batch, channels, positions); lse / delta are float32 [B, N].
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace ad_fast {
namespace soft_align {

// out [B, Cv, Nq] (dtype) and lse [B, Nq] (float32) of softmax_p(scale * q^T k) v.
cudaError_t launch_soft_align_forward(const void* q, const void* k, const void* v, int64_t batch, int64_t cqk,
                                      int64_t cv, int64_t nq, int64_t np, float scale, DType dtype, void* out,
                                      float* lse, cudaStream_t stream);

// grad_q [B, Cqk, Nq], grad_k [B, Cqk, Np] and (when grad_v is not null) grad_v [B, Cv, Np], all of dtype,
// from grad_out [B, Cv, Nq], lse and delta = rowsum(grad_out * out) (float32 [B, Nq]). Recomputes the
// attention tile by tile (one pass per gradient), writes every output once: no atomics, deterministic.
cudaError_t launch_soft_align_backward(const void* grad_out, const void* q, const void* k, const void* v,
                                       const float* lse, const float* delta, int64_t batch, int64_t cqk, int64_t cv,
                                       int64_t nq, int64_t np, float scale, DType dtype, void* grad_q, void* grad_k,
                                       void* grad_v, cudaStream_t stream);

// For float32 q [B, C, Nq] and unit-norm float32 k_unit [B, C, Np]: best_dot [B, Nq] = max_p <q_i, k_p> and
// index [B, Nq] = the lowest p reaching it.
cudaError_t launch_hard_align_match(const float* q, const float* k_unit, int64_t batch, int64_t channels,
                                    int64_t nq, int64_t np, float* best_dot, int64_t* index, cudaStream_t stream);

}  // namespace soft_align
}  // namespace ad_fast
