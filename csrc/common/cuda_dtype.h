// ATen dtype -> the plain DType enum the CUDA launchers take. Included only by the *_cuda.cpp bindings.
#pragma once

#include <ATen/ATen.h>

#include "common/dtype.h"

namespace ad_fast {

// float32 / float16 / bfloat16, else a TypeError naming `what` (the kernels accumulate in float32).
inline DType cuda_float_dtype(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kFloat:
      return DType::Float32;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, what, " must be float32, float16 or bfloat16 on CUDA, got ", t);
  }
}

}  // namespace ad_fast
