// Schema of the exact nearest-neighbour op with projection pruning (see ad_fast/ops/pruned_knn.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ad_fast, m) {
  // query [M, D] float32; bank [N, D] float32/float16/bfloat16 (N >= 1); centre float32 [D]; axes float32 [P, D]
  // with orthonormal rows; bank_prefix float32 [N, P] = (bank - centre) @ axes^T; metric l2 or sqeuclidean.
  // Returns the nearest bank row of each query: distances [M, 1] (float32) and int64 indices [M, 1], ties to the
  // lower index; the same as knn(query, bank, 1, metric). NaN/Inf in query raises ValueError.
  m.def("knn_pruned(Tensor query, Tensor bank, Tensor centre, Tensor axes, Tensor bank_prefix, str metric) "
        "-> (Tensor, Tensor)");
}
