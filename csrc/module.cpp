// The rhmfast._C extension: every op's schema (one TORCH_LIBRARY block, the package's whole op API)
// and a pybind11 module that carries build information. Kernels register themselves per device in
// <op>_cpu.cpp and <op>_cuda.cpp.
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#include "rhm_sample.h"

TORCH_LIBRARY(rhmfast, m) {
  // RHM generation (rhm_sample_cpu.cpp, rhm_sample_cuda.cu; reference rhmfast/reference/rhm_sample.py).
  m.def("rhm_sample(Tensor rules, int n_classes, int n, int seed, int start, str mode, ScalarType dtype, "
        "bool return_tree) -> (Tensor, Tensor, Tensor[])");
  m.def("rhm_decode(Tensor rules, Tensor datum, int n_classes, ScalarType dtype, bool return_tree) "
        "-> (Tensor, Tensor, Tensor[])");
  // Counter-based random numbers (philox_uniform_cpu.cpp; reference rhmfast/reference/philox.py).
  m.def("philox_uniform(Tensor counter, int seed, int bound) -> Tensor");
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "rhmfast C++/CUDA kernels; ops are registered under torch.ops.rhmfast";
#ifdef RHMFAST_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
#ifdef _OPENMP
  module.attr("openmp") = true;
#else
  module.attr("openmp") = false;
#endif
  module.attr("torch_version") = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) +
                                 "." + std::to_string(TORCH_VERSION_PATCH);
  module.def("cpu_simd", &rhmfast::rhm_sample_cpu_simd, "SIMD path of the CPU sampler");
#if defined(__VERSION__)
  module.attr("compiler") = __VERSION__;
#endif
}
