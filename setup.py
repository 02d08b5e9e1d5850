"""Build the ``ad_fast._C`` extension: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc exists.

Sources are found by glob, so a new kernel folder needs no edit here:
  csrc/**/*.cpp except *_cuda.cpp      CPU kernels and op schemas (always)
  csrc/**/*_cuda.cpp, csrc/**/*.cu     CUDA launchers and kernels (CUDA build only); a .cu must not share
                                       its stem with a .cpp (both would compile to <stem>.o): name it <op>_kernel.cu
Environment: CUDA is built whenever torch has CUDA and nvcc is found (no GPU needs to be visible);
AD_FAST_NO_CUDA=1 skips it; AD_FAST_MARCH sets -march (default "native": set
"x86-64-v2" or similar when building a wheel for other machines); TORCH_CUDA_ARCH_LIST picks the GPU targets (default "9.0").
"""

import glob
import os
import sys

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "**", pattern), recursive=True))


def _want_cuda() -> bool:
    import torch

    if os.environ.get("AD_FAST_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _openmp_flags() -> tuple[list[str], list[str]]:
    if sys.platform == "darwin":
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def make_extension():
    with_cuda = _want_cuda()
    cpu_sources = [s for s in _sources("*.cpp") if not s.endswith("_cuda.cpp")]
    omp_compile, omp_link = _openmp_flags()
    # Our sources are C++17; no -std flag here, because torch picks the standard its headers need (C++20 for 2.13).
    cxx_flags = ["-O3", "-DNDEBUG", f"-march={os.environ.get('AD_FAST_MARCH', 'native')}", *omp_compile]
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources = cpu_sources + _sources("*_cuda.cpp") + _sources("*.cu")
        define_macros.append(("AD_FAST_WITH_CUDA", "1"))
        extension = cpp_extension.CUDAExtension(
            "ad_fast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
            extra_link_args=omp_link,
            py_limited_api=True,
        )
    else:
        extension = cpp_extension.CppExtension(
            "ad_fast._C",
            cpu_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=omp_link,
            py_limited_api=True,
        )
    print(f"ad_fast: building _C with CUDA={'yes' if with_cuda else 'no'}; {len(extension.sources)} sources", file=sys.stderr)
    return extension


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
