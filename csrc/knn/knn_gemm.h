// float32 GEMM tiles for the CPU kNN kernels: Y = X W^T through oneDNN, reached via torch's own
// mkldnn::_linear_pointwise op (plain float32, no reduced precision). On AMD CPUs MKL's sgemm (behind at::mm) runs
// at about half of oneDNN's speed, so float32 uses oneDNN when torch was built with it; other dtypes, or a torch
// without it, use at::mm into the caller's buffer.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

namespace ad_fast {
namespace knn {

inline const c10::optional<c10::OperatorHandle>& onednn_linear() {
  static const c10::optional<c10::OperatorHandle> handle =
      at::hasMKLDNN() ? c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""}) : c10::nullopt;
  return handle;
}

// Products [mb, nb] = q [mb, D] @ tile [nb, D]^T, in `prod_buf` (>= mb * nb values) or (oneDNN) a fresh
// contiguous tensor.
inline at::Tensor tile_products(const at::Tensor& q, const at::Tensor& tile, at::Tensor& prod_buf) {
  const auto& linear = onednn_linear();
  if (linear.has_value() && q.scalar_type() == at::kFloat) {
    torch::jit::Stack stack{q, tile, c10::IValue(), c10::IValue("none"),
                            c10::IValue(c10::List<c10::optional<at::Scalar>>()), c10::IValue()};
    linear->callBoxed(&stack);
    return stack[0].toTensor();
  }
  at::Tensor prod = prod_buf.narrow(0, 0, q.size(0) * tile.size(0)).view({q.size(0), tile.size(0)});
  at::mm_out(prod, q, tile.t());
  return prod;
}

}  // namespace knn
}  // namespace ad_fast
