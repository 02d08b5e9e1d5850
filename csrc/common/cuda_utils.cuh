// Plain CUDA helpers for the .cu kernels. No ATen/c10/torch headers here: every .cu must compile with nvcc
// alone, on machines whose torch has no CUDA.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ad_fast {
namespace cuda {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid size for a grid-stride loop over n items: enough blocks to fill the device, capped.
inline unsigned int grid_for(int64_t n, int threads, int64_t cap = 65535) {
  int64_t blocks = ceil_div(n, threads);
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks < cap ? blocks : cap);
}

}  // namespace cuda
}  // namespace ad_fast

// Launchers return cudaError_t; the ATen binding turns a non-success code into an exception.
#define AD_CUDA_RETURN_IF_ERROR(expr)        \
  do {                                       \
    cudaError_t err__ = (expr);              \
    if (err__ != cudaSuccess) return err__;  \
  } while (0)
