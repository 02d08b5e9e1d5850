// Schemas of the soft- and hard-alignment ops (see ad_fast/ops/soft_align.py for the full contract).
// Shapes at the op level are flattened: q [B, Cqk, Nq], k [B, Cqk, Np], v [B, Cv, Np].
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ad_fast, m) {
  // out[b, :, i] = sum_p softmax_p(scale * <q[b, :, i], k[b, :, p]>) v[b, :, p]  -> out [B, Cv, Nq] (q's dtype)
  // lse[b, i] = logsumexp_p(scale * <q[b, :, i], k[b, :, p]>)                   -> lse [B, Nq] (float32; float64
  // for float64 inputs), saved for the backward.
  m.def("soft_align(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor out, Tensor lse)");
  // Gradients w.r.t. q, k, v, recomputing the attention tile by tile from lse (flash-attention-2):
  // P = exp(scale * q^T k - lse), dS = P * (grad_out^T v - delta). delta [B, Nq] (lse's dtype) is
  // rowsum(grad_out * out) minus any gradient on lse. grad_v has shape [0] when compute_dv is false.
  m.def(
      "_soft_align_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor lse, Tensor delta, float scale, "
      "bool compute_dv) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  // For each query position: the highest cosine similarity to a prompt position (norms clamped at 1e-8) and
  // the first prompt position reaching it. max_cos [B, Nq] (float32; float64 for float64), index [B, Nq] int64.
  m.def("hard_align_match(Tensor q, Tensor k) -> (Tensor max_cos, Tensor index)");
}
