// Launcher of the CUDA kNN kernels: raw pointers, sizes, a dtype enum and a stream; no torch types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"
#include "knn/knn_common.h"

namespace ad_fast {
namespace knn {

constexpr int kCudaMaxSplits = 64;  // bank splits per query (their candidate lists are merged per query)

// Bank splits to use so that about `target_blocks` thread blocks run: ceil(M / 64) query blocks x splits.
int64_t cuda_bank_splits(int64_t M, int64_t N, int64_t target_blocks);

// Scratch the caller allocates (device memory), with cap = min(k + kSlack, N):
//   coef:       2 * N floats (ranking-key coefficients alpha, beta)
//   cand_key:   splits * M * cap floats;   cand_idx: splits * M * cap int64;   cand_count: splits * M int32
//   merged_idx: M * cap int64;  merged_rank, merged_dist: M * cap doubles
//   nonfinite:  one int32, zeroed by the caller; set to 1 when a key is NaN/Inf (the caller then raises)
// query [M, D] and bank [N, D] are contiguous rows of `dtype` (float32/float16/bfloat16); bank_sq_norms is
// an optional float32 [N] (nullptr: computed here). out_dist: M * k of `dtype`; out_idx: M * k int64.
struct KnnScratch {
  float* coef;
  float* cand_key;
  int64_t* cand_idx;
  int32_t* cand_count;
  int64_t* merged_idx;
  double* merged_rank;
  double* merged_dist;
  int32_t* nonfinite;
};

cudaError_t launch_knn(const void* query, const void* bank, DType dtype, int64_t M, int64_t N, int64_t D, int64_t k,
                       Metric metric, const float* bank_sq_norms, int64_t splits, KnnScratch scratch,
                       void* out_dist, int64_t* out_idx, cudaStream_t stream);

}  // namespace knn
}  // namespace ad_fast
