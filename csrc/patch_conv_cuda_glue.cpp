// Torch glue of patch_conv / patch_conv_backward on CUDA: checks (shared with the CPU path, patch_conv.h),
// the GEMMs in cuBLAS through at::mm and at::addmm (written straight into the outputs), and the fused epilogue
// kernels of patch_conv_cuda.cu. Built only where torch has CUDA.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "patch_conv.h"
#include "patch_conv_cuda_glue.h"

namespace rhmfast {

void activation_grad_cuda(const at::Tensor& grad, const at::Tensor& saved, at::Tensor& d, const PatchShape& g,
                          Activation act, at::Tensor* grad_pos, at::Tensor* grad_bias) {
  at::Tensor workspace;
  if (grad_pos != nullptr || grad_bias != nullptr) {
    const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    workspace = at::empty({g.T_out, g.C_out}, grad.options().dtype(acc));
  }
  check_launch(cuda::launch_activation_grad(cuda_float_type(grad.scalar_type()), grad.data_ptr(),
                                            saved.defined() ? saved.data_ptr() : nullptr, d.data_ptr(), g.B, g.T_out,
                                            g.C_out, cuda_act(act), grad_pos ? grad_pos->data_ptr() : nullptr,
                                            grad_bias ? grad_bias->data_ptr() : nullptr,
                                            workspace.defined() ? workspace.data_ptr() : nullptr,
                                            c10::cuda::getCurrentCUDAStream()),
               "activation_grad");
}

namespace {

at::Tensor patch_conv_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_in,
                           const std::optional<at::Tensor>& pos_bias_in, int64_t patch_size, double scale,
                           c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_patch_conv(x, weight, bias_in, pos_bias_in, patch_size);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto bias = contiguous_or_none(bias_in);
  const auto pos_bias = contiguous_or_none(pos_bias_in);
  at::Tensor y = at::empty({g.B, g.T_out, g.C_out}, x.options());
  at::Tensor y2 = y.view({g.rows(), g.C_out});
  at::mm_out(y2, patch_rows(x, g), weight.t());
  if (scale == 1.0 && !bias && !pos_bias && act == Activation::kNone) return y;
  check_launch(cuda::launch_forward_epilogue(cuda_float_type(x.scalar_type()), y.data_ptr(), g.rows(), g.C_out,
                                             g.T_out, scale, ptr_or_null(bias), ptr_or_null(pos_bias), cuda_act(act),
                                             c10::cuda::getCurrentCUDAStream()),
               "forward_epilogue");
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_conv_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& pos_bias, const std::optional<at::Tensor>& out, int64_t patch_size, double scale,
    c10::string_view activation, std::array<bool, 4> output_mask) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_patch_conv(x, weight, bias, pos_bias, patch_size);
  check_layer_backward(grad_out, weight, g, act, out, /*relu_recomputes=*/false, bias.has_value(), pos_bias.has_value(),
                       output_mask[2], output_mask[3]);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor saved;
  if (act == Activation::kRelu) saved = out->contiguous();
  if (act == Activation::kSquare) saved = patch_conv_cuda(x, weight, bias, pos_bias, patch_size, scale, "none");
  const at::Tensor grad = grad_out.contiguous();
  at::Tensor grad_bias = output_mask[2] ? at::empty({g.C_out}, x.options()) : no_grad_placeholder(x);
  at::Tensor grad_pos = output_mask[3] ? at::empty({g.T_out, g.C_out}, x.options()) : no_grad_placeholder(x);
  at::Tensor d = grad;
  if (act != Activation::kNone || output_mask[2] || output_mask[3]) {
    d = at::empty_like(grad);
    activation_grad_cuda(grad, saved, d, g, act, output_mask[3] ? &grad_pos : nullptr,
                         output_mask[2] ? &grad_bias : nullptr);
  }
  const at::Tensor d2 = d.view({g.rows(), g.C_out});
  at::Tensor grad_x = no_grad_placeholder(x), grad_w = no_grad_placeholder(x);
  // The scale rides in the GEMMs' alpha (beta = 0: the uninitialised outputs are never read).
  if (output_mask[0]) {
    grad_x = at::empty({g.B, g.T, g.C_in}, x.options());
    at::Tensor grad_x2 = grad_x.view({g.rows(), g.s * g.C_in});
    at::addmm_out(grad_x2, grad_x2, d2, weight, /*beta=*/0, /*alpha=*/scale);
  }
  if (output_mask[1]) {
    grad_w = at::empty({g.C_out, g.s * g.C_in}, x.options());
    at::addmm_out(grad_w, grad_w, d2.t(), patch_rows(x, g), /*beta=*/0, /*alpha=*/scale);
  }
  return {grad_x, grad_w, grad_bias, grad_pos};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CUDA, m) {
  m.impl("patch_conv", &patch_conv_cuda);
  m.impl("patch_conv_backward", &patch_conv_backward_cuda);
}

}  // namespace rhmfast
