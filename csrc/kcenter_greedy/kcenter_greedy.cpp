// Schema of the greedy k-center op (see ad_fast/ops/kcenter_greedy.py for the full contract).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ad_fast, m) {
  // projected: float32 [N, d] rows (already projected). Picks n_select rows: the first is start_index, or the
  // argmax of init_distances [N] when given (then start_index is ignored); each later pick is the argmax
  // (first on ties) of every row's running Euclidean min-distance to the picked set. Returns int64 indices
  // [n_select] in pick order, float32 radii [n_select] (max running min-distance after each pick) and the
  // float32 running min-distances [N] after the last pick (init_distances, or +inf, when n_select is 0).
  m.def(
      "kcenter_greedy(Tensor projected, int n_select, int start_index, Tensor? init_distances) -> "
      "(Tensor, Tensor, Tensor)");
}
