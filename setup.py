"""Build of the rhmfast._C extension.

CPU kernels always build. CUDA kernels build only when the installed torch was built with CUDA
*and* nvcc is available; otherwise the package is CPU-only (and says so in rhmfast.backends()).
Set RHMFAST_NO_CUDA=1 to force a CPU-only build.
"""
import glob
import os
import shutil
import sys
import sysconfig

from setuptools import setup
from torch.utils import cpp_extension
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"


def _want_cuda():
    if os.environ.get("RHMFAST_NO_CUDA") == "1" or torch.version.cuda is None:
        return False
    home = cpp_extension.CUDA_HOME
    return shutil.which("nvcc") is not None or (home is not None and os.path.exists(os.path.join(home, "bin", "nvcc")))


def extension():
    with_cuda = _want_cuda()
    cpp = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    # *_cuda_glue.cpp files are the thin torch glue of CUDA kernels: only meaningful with CUDA.
    sources = [f for f in cpp if with_cuda or not f.endswith("_cuda_glue.cpp")]
    # Kernels use at::parallel_for, whose OpenMP backend lives in headers: without -fopenmp they
    # would silently run on one thread.
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"]
    kwargs = dict(
        name="rhmfast._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, CSRC, "include")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        kwargs["sources"] += sorted(glob.glob(os.path.join(CSRC, "*.cu")))
        kwargs["extra_compile_args"]["cxx"].append("-DRHMFAST_WITH_CUDA")
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-lineinfo", "-DRHMFAST_WITH_CUDA"]
        return cpp_extension.CUDAExtension(**kwargs)
    return cpp_extension.CppExtension(**kwargs)


class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's build_ext with ninja, compiling in a fixed folder under build/: pip's editable install
    would otherwise compile in a fresh temporary folder each time, rebuilding every file (minutes) where
    ninja recompiles only what changed."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(HERE, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


os.environ.setdefault("MAX_JOBS", "2")
setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension})
