// C++ unit test (ctest): the anomaly_map CPU kernel, called through the dispatcher, against composed ATen ops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <vector>

namespace {

at::Tensor fused(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b, std::vector<int64_t> size,
                 const std::string& metric, std::vector<double> weights, double sigma) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ad_fast::anomaly_map", "")
                       .typed<at::Tensor(at::TensorList, at::TensorList, at::IntArrayRef, c10::string_view,
                                         at::ArrayRef<double>, double)>();
  return op.call(a, b, size, metric, weights, sigma);
}

at::Tensor composed(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b, std::vector<int64_t> size,
                    bool cosine, std::vector<double> weights) {
  at::Tensor total;
  for (size_t l = 0; l < a.size(); ++l) {
    at::Tensor d = cosine ? 1 - at::cosine_similarity(a[l], b[l], 1, 1e-8) : (a[l] - b[l]).norm(2, {1});
    at::Tensor up = at::upsample_bilinear2d(d.unsqueeze(1), size, false);
    total = l == 0 ? weights[l] * up : total + weights[l] * up;
  }
  return total;
}

int check(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "PASS" : "FAIL", what);
  return ok ? 0 : 1;
}

}  // namespace

int main() {
  at::manual_seed(0);
  int failures = 0;
  for (bool cosine : {true, false}) {
    std::vector<at::Tensor> a = {at::randn({3, 13, 7, 5}), at::randn({3, 9, 4, 3})};
    std::vector<at::Tensor> b = {at::randn({3, 13, 7, 5}), at::randn({3, 9, 4, 3})};
    at::Tensor out = fused(a, b, {33, 17}, cosine ? "cosine" : "l2", {0.5, 2.0}, 0.0);
    at::Tensor ref = composed(a, b, {33, 17}, cosine, {0.5, 2.0});
    const double err = ((out - ref).norm() / ref.norm()).item<double>();
    failures += check(err < 1e-5, cosine ? "cosine map matches ATen (rel err < 1e-5)" : "l2 map matches ATen");
  }
  bool threw = false;
  try {
    fused({at::randn({1, 2, 3, 3})}, {at::randn({1, 2, 3, 4})}, {4, 4}, "cosine", {1.0}, 0.0);
  } catch (const c10::Error&) {
    threw = true;
  }
  failures += check(threw, "shape mismatch raises c10::Error");
  std::printf("%d passed, %d failed\n", 3 - failures, failures);
  return failures == 0 ? 0 : 1;
}
