// Element types a CUDA launcher accepts, passed from the ATen binding as a plain enum (no torch types).
#pragma once

namespace ad_fast {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2, Float64 = 3 };

}  // namespace ad_fast
