// CPU kernels of patch_conv / patch_conv_backward (layout contract in patch_conv.h).
//
// Forward: one GEMM of the zero-copy view [B*T/s, s*C_in] with weightᵀ by the BLAS torch ships (MKL
// here), written straight into the output, then one fused pass (scale, bias, per-position bias,
// activation) while each row is in cache. Backward: one fused pass d = grad * act' (plus the bias sums),
// then grad_x = d · (scale·W) and grad_W = scale · dᵀ · X, each only when asked for.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <vector>

#include "patch_conv_cpu.h"

namespace rhmfast {

at::Tensor patch_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_in,
                          const std::optional<at::Tensor>& pos_bias_in, int64_t patch_size, double scale,
                          c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_patch_conv(x, weight, bias_in, pos_bias_in, patch_size);
  const auto bias = contiguous_or_none(bias_in);
  const auto pos_bias = contiguous_or_none(pos_bias_in);
  at::Tensor y = at::empty({g.B, g.T_out, g.C_out}, x.options());
  at::Tensor y2 = y.view({g.rows(), g.C_out});
  at::mm_out(y2, patch_rows(x, g), weight.t());
  if (scale == 1.0 && !bias && !pos_bias && act == Activation::kNone) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "patch_conv_cpu", [&] {
    scalar_t* out = y.data_ptr<scalar_t>();
    const scalar_t* b = bias ? bias->data_ptr<scalar_t>() : nullptr;
    const scalar_t* pb = pos_bias ? pos_bias->data_ptr<scalar_t>() : nullptr;
    const std::vector<scalar_t> zeros(g.C_out, scalar_t(0));
    at::parallel_for(0, g.rows(), cpu::row_grain(g.C_out), [&](int64_t r0, int64_t r1) {
      cpu::forward_epilogue<scalar_t>(out, r0, r1, g.C_out, g.T_out, static_cast<scalar_t>(scale), b, pb,
                                        zeros.data(), act);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_conv_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& pos_bias, const std::optional<at::Tensor>& out, int64_t patch_size, double scale,
    c10::string_view activation, std::array<bool, 4> output_mask) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_patch_conv(x, weight, bias, pos_bias, patch_size);
  check_layer_backward(grad_out, weight, g, act, out, /*relu_recomputes=*/false, bias.has_value(), pos_bias.has_value(),
                       output_mask[2], output_mask[3]);
  at::Tensor saved;
  if (act == Activation::kRelu) saved = out->contiguous();
  if (act == Activation::kSquare) saved = patch_conv_cpu(x, weight, bias, pos_bias, patch_size, scale, "none");
  const at::Tensor grad = grad_out.contiguous();
  at::Tensor grad_bias = output_mask[2] ? at::empty({g.C_out}, x.options()) : no_grad_placeholder(x);
  at::Tensor grad_pos = output_mask[3] ? at::empty({g.T_out, g.C_out}, x.options()) : no_grad_placeholder(x);
  at::Tensor d = grad;
  if (act != Activation::kNone || output_mask[2] || output_mask[3]) {
    d = at::empty_like(grad);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "patch_conv_backward_cpu", [&] {
      cpu::activation_grad<scalar_t>(grad.data_ptr<scalar_t>(), saved.defined() ? saved.data_ptr<scalar_t>() : nullptr,
                                     d.data_ptr<scalar_t>(), g.B, g.T_out, g.C_out, act,
                                     output_mask[3] ? grad_pos.data_ptr<scalar_t>() : nullptr,
                                     output_mask[2] ? grad_bias.data_ptr<scalar_t>() : nullptr);
    });
  }
  const at::Tensor d2 = d.view({g.rows(), g.C_out});
  at::Tensor grad_x = no_grad_placeholder(x), grad_w = no_grad_placeholder(x);
  if (output_mask[0]) {
    // Scaling the small weight instead of the large gradient saves a pass over grad_x.
    grad_x = at::mm(d2, scale == 1.0 ? weight : weight.mul(scale)).view({g.B, g.T, g.C_in});
  }
  if (output_mask[1]) {
    grad_w = at::mm(d2.t(), patch_rows(x, g));
    if (scale != 1.0) grad_w.mul_(scale);
  }
  return {grad_x, grad_w, grad_bias, grad_pos};
}

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) {
  m.impl("patch_conv", &patch_conv_cpu);
  m.impl("patch_conv_backward", &patch_conv_backward_cpu);
}

}  // namespace rhmfast
