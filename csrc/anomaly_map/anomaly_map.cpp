// Schema of the fused anomaly-map op (see ad_fast/ops/anomaly_map.py for the full contract).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ad_fast, m) {
  // Per level l: d_l = 1 - cos(a_l, b_l) over channels ("cosine") or ||a_l - b_l||_2 ("l2"), [B, H_l, W_l];
  // out = blur(sum_l weights[l] * bilinear(d_l -> out_size)), [B, 1, H, W]. blur_sigma <= 0 means no blur.
  m.def(
      "anomaly_map(Tensor[] feats_a, Tensor[] feats_b, int[] out_size, str metric, float[] weights, "
      "float blur_sigma) -> Tensor");
}
