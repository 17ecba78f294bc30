// Torch glue of patch_conv / patch_conv_backward on CUDA: checks (shared with the CPU path, patch_conv.h),
// the GEMMs in cuBLAS through at::mm and at::addmm (written straight into the outputs), and the fused epilogue
// kernels of patch_conv_cuda.cu. Built only where torch has CUDA. The replica form ([K, ...] on every
// tensor) runs its GEMMs as strided-batched cuBLAS calls (at::bmm / at::baddbmm on [K, rows, cols] views)
// and each epilogue once over all replicas; its results are laid out as the CPU's (empty_replicas).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "patch_conv.h"
#include "patch_conv_cuda_glue.h"

#include <initializer_list>

namespace rhmfast {

void activation_grad_cuda(const at::Tensor& grad, const at::Tensor& saved, at::Tensor& d, const PatchShape& g,
                          Activation act, at::Tensor* grad_pos, at::Tensor* grad_bias) {
  at::Tensor workspace;
  if (grad_pos != nullptr || grad_bias != nullptr) {
    const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    workspace = at::empty({g.K, g.T_out, g.C_out}, grad.options().dtype(acc));
  }
  // Elements between replicas of each array (unused in the solo form, K = 1).
  auto k_stride = [&](const at::Tensor* t) { return g.replica && t != nullptr && t->defined() ? t->stride(0) : 0; };
  check_launch(cuda::launch_activation_grad(
                   cuda_float_type(grad.scalar_type()), grad.data_ptr(), k_stride(&grad),
                   saved.defined() ? saved.data_ptr() : nullptr, k_stride(&saved), d.data_ptr(), k_stride(&d), g.K,
                   g.B, g.T_out, g.C_out, cuda_act(act), grad_pos ? grad_pos->data_ptr() : nullptr, k_stride(grad_pos),
                   grad_bias ? grad_bias->data_ptr() : nullptr, k_stride(grad_bias),
                   workspace.defined() ? workspace.data_ptr() : nullptr, c10::cuda::getCurrentCUDAStream()),
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
  at::Tensor y;
  if (!g.replica) {
    y = at::empty({g.B, g.T_out, g.C_out}, x.options());
    at::Tensor y2 = y.view({g.rows(), g.C_out});
    at::mm_out(y2, patch_rows(x, g), weight.t());
  } else {
    y = empty_replicas(g.out_sizes(), x.options());
    at::Tensor y3 = y.view({g.K, g.rows(), g.C_out});
    at::bmm_out(y3, patch_rows(x, g), weight.transpose(1, 2));
  }
  if (scale == 1.0 && !bias && !pos_bias && act == Activation::kNone) return y;
  check_launch(cuda::launch_forward_epilogue(cuda_float_type(x.scalar_type()), y.data_ptr(),
                                             g.replica ? y.stride(0) : 0, g.K, g.rows(), g.C_out, g.T_out, scale,
                                             ptr_or_null(bias), g.C_out, ptr_or_null(pos_bias), g.T_out * g.C_out,
                                             cuda_act(act), c10::cuda::getCurrentCUDAStream()),
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
  if (act == Activation::kRelu) saved = g.replica ? replica_slices_dense(*out) : out->contiguous();
  if (act == Activation::kSquare) saved = patch_conv_cuda(x, weight, bias, pos_bias, patch_size, scale, "none");
  const at::Tensor grad = g.replica ? replica_slices_dense(grad_out) : grad_out.contiguous();
  auto empty_result = [&](std::initializer_list<int64_t> dims) {
    return g.replica ? empty_replicas(g.with_k(dims), x.options()) : at::empty(dims, x.options());
  };
  at::Tensor grad_bias = output_mask[2] ? empty_result({g.C_out}) : no_grad_placeholder(x);
  at::Tensor grad_pos = output_mask[3] ? empty_result({g.T_out, g.C_out}) : no_grad_placeholder(x);
  at::Tensor d = grad;
  if (act != Activation::kNone || output_mask[2] || output_mask[3]) {
    d = g.replica ? empty_replicas(grad.sizes(), grad.options()) : at::empty_like(grad);
    activation_grad_cuda(grad, saved, d, g, act, output_mask[3] ? &grad_pos : nullptr,
                         output_mask[2] ? &grad_bias : nullptr);
  }
  at::Tensor grad_x = no_grad_placeholder(x), grad_w = no_grad_placeholder(x);
  // The scale rides in the GEMMs' alpha (beta = 0: the uninitialised outputs are never read).
  if (!g.replica) {
    const at::Tensor d2 = d.view({g.rows(), g.C_out});
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
  // Replica form: strided-batched GEMMs over [K, rows, cols] views.
  const at::Tensor d3 = d.view({g.K, g.rows(), g.C_out});
  if (output_mask[0]) {
    grad_x = empty_replicas(g.in_sizes(), x.options());
    at::Tensor grad_x3 = grad_x.view({g.K, g.rows(), g.s * g.C_in});
    at::baddbmm_out(grad_x3, grad_x3, d3, weight, /*beta=*/0, /*alpha=*/scale);
  }
  if (output_mask[1]) {
    grad_w = empty_replicas({g.K, g.C_out, g.s * g.C_in}, x.options());
    at::baddbmm_out(grad_w, grad_w, d3.transpose(1, 2), patch_rows(x, g), /*beta=*/0, /*alpha=*/scale);
  }
  return {grad_x, grad_w, grad_bias, grad_pos};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CUDA, m) {
  m.impl("patch_conv", &patch_conv_cuda);
  m.impl("patch_conv_backward", &patch_conv_backward_cuda);
}

}  // namespace rhmfast
