// Pieces shared by the CPU and CUDA k-center kernels. Header-only, no torch types, so the .cu includes it.
#pragma once

#include <cstdint>

#ifndef AD_HOST_DEVICE
#ifdef __CUDACC__
#define AD_HOST_DEVICE __host__ __device__
#else
#define AD_HOST_DEVICE
#endif
#endif

namespace ad_fast {
namespace kcenter_greedy {

// Running arg-max: larger value wins, equal values keep the lower index (torch.argmax's first maximum).
struct ArgMax {
  float value;
  int64_t index;
};

AD_HOST_DEVICE inline ArgMax better(ArgMax a, ArgMax b) {
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

}  // namespace kcenter_greedy
}  // namespace ad_fast
