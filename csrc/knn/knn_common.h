// Metric handling shared by the CPU and CUDA kNN kernels. Header-only, no torch types, so the .cu includes it.
//
// Every metric is ranked by an ascending key that is affine in the dot product s = <q, b>:
//   key = alpha[j] + beta[j] * s        (the per-query constant is added back when finishing)
//   l2 / sqeuclidean: alpha = ||b||^2, beta = -2      (distance^2 = ||q||^2 + key; the CPU kernel applies it to
//                     q - c and b - c, c the first query row, so a large common offset does not cancel the digits)
//   cosine:           alpha = 0,       beta = -1/max(||b||, eps)   (distance = 1 + key / max(||q||, eps))
//   ip:               alpha = 0,       beta = -1      (similarity = -key)
#pragma once

#include <cstring>

namespace ad_fast {
namespace knn {

enum class Metric : int { L2 = 0, SqEuclidean = 1, Cosine = 2, InnerProduct = 3 };

constexpr double kNormEps = 1e-12;  // cosine: rows are divided by max(||row||, kNormEps)

// Extra candidates kept per query beyond k and re-scored exactly, so products rounded in the tiled pass
// cannot reorder near-ties or drop the lower index of exact duplicates.
constexpr int kSlack = 8;

// Returns false for an unknown name.
inline bool parse_metric(const char* name, Metric* out) {
  if (std::strcmp(name, "l2") == 0) *out = Metric::L2;
  else if (std::strcmp(name, "sqeuclidean") == 0) *out = Metric::SqEuclidean;
  else if (std::strcmp(name, "cosine") == 0) *out = Metric::Cosine;
  else if (std::strcmp(name, "ip") == 0) *out = Metric::InnerProduct;
  else return false;
  return true;
}

}  // namespace knn
}  // namespace ad_fast
