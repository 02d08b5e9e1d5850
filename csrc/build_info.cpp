// The ad_fast op namespace and its one introspection op: which backends this library was compiled with.
#include <torch/library.h>

#include <string>

namespace {

std::string build_info() {
  std::string info = "cpu";
#ifdef AD_FAST_WITH_CUDA
  info += ",cuda";
#endif
#ifdef _OPENMP
  info += ",openmp";
#endif
  return info;
}

}  // namespace

TORCH_LIBRARY(ad_fast, m) { m.def("_build_info() -> str", &build_info); }
