// Schema of the exact k-nearest-neighbour op (see ad_fast/ops/knn.py for the full contract).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ad_fast, m) {
  // query [M, D], bank [N, D], 1 <= k <= N, metric in {l2, sqeuclidean, cosine, ip}; bank_sq_norms: optional
  // float32 [N] precomputed ||b||^2. Returns distances [M, k] (query dtype) and int64 indices [M, k], sorted
  // ascending (descending for ip), ties to the lower index. NaN/Inf in query or bank raises ValueError.
  m.def("knn(Tensor query, Tensor bank, int k, str metric, Tensor? bank_sq_norms) -> (Tensor, Tensor)");
}
