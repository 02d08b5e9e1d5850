// Argument checks shared by every op entry point. Messages name the argument and say what was received,
// so a caller of torch.ops.ad_fast.* directly still gets a clear error (the Python layer checks first).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

#define AD_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)

#define AD_CHECK_NDIM(t, n) \
  TORCH_CHECK((t).dim() == (n), #t " must be a " #n "-d tensor, got ", (t).dim(), "-d with shape ", (t).sizes())

#define AD_CHECK_DEVICE(t, dev) \
  TORCH_CHECK((t).device() == (dev), #t " must be on ", (dev), ", got ", (t).device())

#define AD_CHECK_CPU(t) TORCH_CHECK((t).device().is_cpu(), #t " must be a CPU tensor, got ", (t).device())

#define AD_CHECK_CUDA(t) TORCH_CHECK((t).device().is_cuda(), #t " must be a CUDA tensor, got ", (t).device())

#define AD_CHECK_FLOATING(t)                                                                  \
  TORCH_CHECK(at::isFloatingType((t).scalar_type()), #t " must have a floating dtype, got ", \
              (t).scalar_type())

#define AD_CHECK_SAME_DTYPE(a, b)                                                                   \
  TORCH_CHECK((a).scalar_type() == (b).scalar_type(), #a " and " #b " must share a dtype, got ", \
              (a).scalar_type(), " and ", (b).scalar_type())

// NaN/Inf in a floating tensor is rejected with a ValueError naming the argument (one extra read of the tensor;
// integer tensors pass without a read).
#define AD_CHECK_FINITE(t, name)                                                                                 \
  TORCH_CHECK_VALUE(!at::isFloatingType((t).scalar_type()) || (t).numel() == 0 || at::isfinite(t).all().item<bool>(), \
                    name " contains NaN or Inf")

// An int64 argument that the kernels hold in a 32-bit int: checked before the cast, so 2**32 + 8 is not read as 8.
#define AD_CHECK_INT32_RANGE(value, name)                                                                        \
  TORCH_CHECK_VALUE((value) >= 1 && (value) <= std::numeric_limits<int32_t>::max(), name " must be in [1, ",     \
                    std::numeric_limits<int32_t>::max(), "], got ", (value))
