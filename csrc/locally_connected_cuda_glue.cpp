// Torch glue of locally_connected / locally_connected_backward on CUDA: the device's kernels for the op's steps
// (locally_connected.h: checks and sequence shared with the CPU path). The P per-patch products are one
// strided-batched cuBLAS GEMM each (at::baddbmm on [P, rows, cols] views of x, the output and the gradients:
// no copies, see the layout contract); the epilogue and the activation gradient are the layer's fused kernels
// (locally_connected_cuda.cu). Built only where torch has CUDA.
#include <ATen/core/Tensor.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "locally_connected.h"
#include "patch_conv_cuda_glue.h"
#include "rhmfast/locally_connected_launch.h"

namespace rhmfast {
namespace {

void batched_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double scale) {
  at::Tensor result = out;
  at::baddbmm_out(result, out, a, b, /*beta=*/0, /*alpha=*/scale);
}

void epilogue(const at::Tensor& y, const std::optional<at::Tensor>& bias, const PatchShape& g, Activation act) {
  check_launch(cuda::launch_locally_connected_epilogue(cuda_float_type(y.scalar_type()), y.data_ptr(), g.B, g.T_out,
                                                       g.C_out, ptr_or_null(bias), cuda_act(act),
                                                       c10::cuda::getCurrentCUDAStream()),
               "locally_connected_epilogue");
}

void activation_grad(const at::Tensor& grad, const at::Tensor& saved, const at::Tensor& d, const PatchShape& g,
                     Activation act, const at::Tensor* grad_bias) {
  check_launch(cuda::launch_locally_connected_activation_grad(
                   cuda_float_type(grad.scalar_type()), grad.data_ptr(), saved.defined() ? saved.data_ptr() : nullptr,
                   d.data_ptr(), g.B, g.T_out, g.C_out, cuda_act(act),
                   grad_bias != nullptr ? grad_bias->data_ptr() : nullptr, c10::cuda::getCurrentCUDAStream()),
               "locally_connected_activation_grad");
}

// x as it is: the GEMM view copies a channels-first x (patch_matrices).
constexpr LocallyConnectedKernels kCuda{
    +[](at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); },
    +[](const at::Tensor& x) { return x; }, &batched_gemm, &epilogue, &activation_grad};

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CUDA, m) { register_locally_connected<kCuda>(m); }

}  // namespace rhmfast
