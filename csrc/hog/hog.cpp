// Schema of the HOG op (see ad_fast/ops/hog.py for the full contract).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(ad_fast, m) {
  // images [B, C, H, W] (C in 1, 3; uint8 or floating) -> (descriptors [B, NBR, NBC, bh, bw, O],
  // hog_image [B, 1, H, W] when visualize, else an empty [0] tensor); float64 for float64 input, else float32.
  // block_norm: "L1", "L1-sqrt", "L2" or "L2-Hys".
  m.def(
      "hog(Tensor images, int orientations, int[] pixels_per_cell, int[] cells_per_block, str block_norm, "
      "bool transform_sqrt, bool visualize) -> (Tensor, Tensor)");
}
