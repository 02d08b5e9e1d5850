// The ad_fast._C Python extension module. It holds no Python functions: importing it loads this library,
// whose static registrations (TORCH_LIBRARY / TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in every
// csrc/<op>/ file) define the torch.ops.ad_fast.* ops.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "ad_fast compiled kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
