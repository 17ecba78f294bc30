// The rhmfast._C extension: every op's schema (one TORCH_LIBRARY block, the package's whole op API)
// and a pybind11 module that carries build information. Kernels register themselves per device in
// <op>_cpu.cpp and <op>_cuda_glue.cpp.
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#include "gemm_cpu.h"
#include "rhm_sample.h"

TORCH_LIBRARY(rhmfast, m) {
  // RHM generation (rhm_sample_cpu.cpp, rhm_sample_cuda.cu; reference rhmfast/reference/rhm_sample.py).
  m.def("rhm_sample(Tensor rules, int n_classes, int n, int seed, int start, str mode, ScalarType dtype, "
        "bool return_tree) -> (Tensor, Tensor, Tensor[])");
  m.def("rhm_decode(Tensor rules, Tensor datum, int n_classes, ScalarType dtype, bool return_tree) "
        "-> (Tensor, Tensor, Tensor[])");
  // Exact inference by belief propagation on the RHM tree (rhm_posterior_cpu.cpp, rhm_posterior_cuda.cu;
  // reference rhmfast/reference/rhm_posterior.py; layout contract in rhm_posterior.h).
  m.def("rhm_posterior(Tensor rules, Tensor owned, Tensor tokens, Tensor? mask, int n_classes, int v, bool leaves, "
        "Tensor? weights=None) -> (Tensor, Tensor, Tensor)");
  // Counter-based random numbers (philox_uniform_cpu.cpp; reference rhmfast/reference/philox.py).
  m.def("philox_uniform(Tensor counter, int seed, int bound) -> Tensor");
  // Patchwise layers (patch_conv*.cpp/.cu, token_patch_embed*.cpp/.cu, patch_conv_stack.cpp; reference
  // rhmfast/reference/patch_conv.py etc.; layout contract in patch_conv.h). Activations channels-last.
  m.def("patch_conv(Tensor x, Tensor weight, Tensor? bias, Tensor? pos_bias, int patch_size, float scale, "
        "str activation) -> Tensor");
  m.def("patch_conv_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? pos_bias, Tensor? out, "
        "int patch_size, float scale, str activation, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("token_patch_embed(Tensor tokens, Tensor table, Tensor? bias, Tensor? pos_bias, int patch_size, "
        "float scale, str activation) -> Tensor");
  m.def("token_patch_embed_backward(Tensor grad_out, Tensor tokens, Tensor table, Tensor? bias, Tensor? pos_bias, "
        "Tensor? out, int patch_size, float scale, str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("patch_conv_stack(Tensor tokens, Tensor table, Tensor[] weights, Tensor[] biases, int patch_size, "
        "float[] scales, str activation) -> Tensor[]");
  m.def("patch_conv_stack_backward(Tensor?[] grad_outs, Tensor tokens, Tensor table, Tensor[] weights, "
        "Tensor[] biases, Tensor[] outs, int patch_size, float[] scales, str activation) "
        "-> (Tensor, Tensor[], Tensor[])");
  // Locally connected layer, untied weights per patch (locally_connected*.cpp; reference
  // rhmfast/reference/locally_connected.py; layout contract in locally_connected.h).
  m.def("locally_connected(Tensor x, Tensor weight, Tensor? bias, int patch_size, float scale, str activation) "
        "-> Tensor");
  m.def("locally_connected_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? out, "
        "int patch_size, float scale, str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
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
  module.def("set_cpu_gemm", &rhmfast::set_cpu_gemm, "library for the layers' float32 CPU GEMMs: auto, blas, onednn");
  module.def("cpu_gemm", &rhmfast::cpu_gemm_in_use, "library computing the layers' large float32 CPU GEMMs now");
#if defined(__VERSION__)
  module.attr("compiler") = __VERSION__;
#endif
}
