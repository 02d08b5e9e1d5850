// Launcher of the CUDA k-center kernels: raw pointers, sizes and a stream; no torch types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kcenter_greedy/kcenter_greedy_common.h"

namespace ad_fast {
namespace kcenter_greedy {

// Number of ArgMax partials (thread blocks of the update kernel) the caller allocates in `partial`.
int64_t cuda_partials(int64_t n);

// projected: float32 [n, d] rows (device); min_dist: n floats, filled by the caller with +inf or the initial
// distances; picks: n_select int64 (device), picks[0] set by the caller unless `pick_first_from_min_dist`
// (then the arg-max of min_dist); radii: n_select floats; partial: cuda_partials(n) ArgMax entries.
// Per pick: one fused update + block arg-max kernel and one single-block reduction kernel; the next pick
// stays on the device, so the loop never waits on the host.
cudaError_t launch_kcenter_greedy(const float* projected, int64_t n, int64_t d, int64_t n_select,
                                  bool pick_first_from_min_dist, float* min_dist, int64_t* picks, float* radii,
                                  ArgMax* partial, cudaStream_t stream);

}  // namespace kcenter_greedy
}  // namespace ad_fast
