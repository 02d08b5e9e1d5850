// Argument checks and geometry of the HOG op, shared by the CPU kernel and the CUDA binding (ATen side only).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/checks.h"
#include "hog/hog_common.h"

namespace ad_fast {
namespace hog {

inline BlockNorm parse_block_norm(c10::string_view name) {
  if (name == "L1") return BlockNorm::L1;
  if (name == "L1-sqrt") return BlockNorm::L1Sqrt;
  if (name == "L2") return BlockNorm::L2;
  AD_CHECK(name == "L2-Hys", "block_norm must be 'L1', 'L1-sqrt', 'L2' or 'L2-Hys', got '", std::string(name), "'");
  return BlockNorm::L2Hys;
}

inline HogGeometry check_hog_args(const at::Tensor& images, int64_t orientations, at::IntArrayRef pixels_per_cell,
                                  at::IntArrayRef cells_per_block, c10::string_view block_norm, bool visualize) {
  AD_CHECK_NDIM(images, 4);
  const auto dtype = images.scalar_type();
  AD_CHECK(dtype == at::kByte || dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
               dtype == at::kBFloat16,
           "images must be uint8, float16, bfloat16, float32 or float64, got ", dtype);
  AD_CHECK(images.size(1) == 1 || images.size(1) == 3, "images must have 1 or 3 channels, got shape ", images.sizes());
  AD_CHECK(orientations >= 1 && orientations <= kMaxOrientations, "orientations must be in 1..", kMaxOrientations,
           ", got ", orientations);
  AD_CHECK(pixels_per_cell.size() == 2 && pixels_per_cell[0] >= 1 && pixels_per_cell[1] >= 1,
           "pixels_per_cell must be two positive ints, got ", pixels_per_cell);
  AD_CHECK(cells_per_block.size() == 2 && cells_per_block[0] >= 1 && cells_per_block[1] >= 1,
           "cells_per_block must be two positive ints, got ", cells_per_block);
  // The geometry is held in 32-bit ints: a cell or block larger than the image is rejected before the cast
  // (2**32 + 8 would otherwise wrap to 8, and 2**32 to 0, a division by zero).
  AD_CHECK(pixels_per_cell[0] <= images.size(2) && pixels_per_cell[1] <= images.size(3),
           "pixels_per_cell must fit in the ", images.size(2), "x", images.size(3), " images, got ", pixels_per_cell);
  AD_CHECK(cells_per_block[0] <= images.size(2) && cells_per_block[1] <= images.size(3),
           "cells_per_block must fit in the ", images.size(2), "x", images.size(3), " images, got ", cells_per_block);
  AD_CHECK_INT32_RANGE(images.size(2), "images' height");
  AD_CHECK_INT32_RANGE(images.size(3), "images' width");
  AD_CHECK(!visualize || (pixels_per_cell[0] >= 2 && pixels_per_cell[1] >= 2),
           "visualize needs pixels_per_cell of at least 2x2, got ", pixels_per_cell);
  HogGeometry g;
  g.batch = images.size(0);
  g.channels = images.size(1);
  g.height = images.size(2);
  g.width = images.size(3);
  g.orientations = static_cast<int>(orientations);
  g.cell_h = static_cast<int>(pixels_per_cell[0]);
  g.cell_w = static_cast<int>(pixels_per_cell[1]);
  g.block_h = static_cast<int>(cells_per_block[0]);
  g.block_w = static_cast<int>(cells_per_block[1]);
  g.cells_r = g.height / g.cell_h;
  g.cells_c = g.width / g.cell_w;
  g.blocks_r = g.cells_r - g.block_h + 1;
  g.blocks_c = g.cells_c - g.block_w + 1;
  AD_CHECK(g.blocks_r >= 1 && g.blocks_c >= 1, "images of ", g.height, "x", g.width,
           " are smaller than one block; need at least ", g.cell_h * g.block_h, "x", g.cell_w * g.block_w);
  g.norm = parse_block_norm(block_norm);
  AD_CHECK_FINITE(images, "images");
  return g;
}

// Output dtype: float64 for float64 images, float32 otherwise.
inline at::ScalarType hog_output_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace hog
}  // namespace ad_fast
