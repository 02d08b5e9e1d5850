// The ad_fast._C extension module. Importing it runs the static op registrations of every csrc/<op>/ file.
#include <Python.h>
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

TORCH_LIBRARY(ad_fast, m) {
  m.def("_build_info() -> str", &build_info);
}

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "ad_fast compiled kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
