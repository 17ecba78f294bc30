// Device-independent part of locally_connected (see locally_connected.h): the checks, the GEMM views and the
// op's steps, each run by the device's kernels.
#include "locally_connected.h"

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

namespace rhmfast {

PatchShape check_locally_connected(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, int64_t patch_size) {
  check_float_dtype(x, "x");
  check_same(weight, x, "weight", "x");
  TORCH_CHECK_VALUE(x.dim() == 3, "rhmfast: x must have shape [B, T, C_in] (channels-last), got ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 3, "rhmfast: weight must have shape [n_patches, C_out, patch_size*C_in], got ",
                    weight.sizes());
  PatchShape g{x.size(0), x.size(1), x.size(2), patch_size, 0, weight.size(1)};
  check_patch_size(patch_size, g.T);
  g.T_out = g.T / patch_size;
  TORCH_CHECK_VALUE(weight.size(0) == g.T_out, "rhmfast: weight has ", weight.size(0),
                    " patches but the input has T/patch_size = ", g.T, "/", patch_size, " = ", g.T_out);
  check_weight_columns(weight.size(2), patch_size, g.C_in);
  if (bias.has_value()) {
    check_same(*bias, weight, "bias", "weight");
    TORCH_CHECK_VALUE(bias->dim() == 2 && bias->size(0) == g.T_out && bias->size(1) == g.C_out,
                      "rhmfast: bias must have shape [n_patches=", g.T_out, ", C_out=", g.C_out, "], got ",
                      bias->sizes());
  }
  return g;
}

at::Tensor patch_matrices(const at::Tensor& x, const PatchShape& g) {
  // reshape is a view whenever x's [T, C] part is dense row-major; otherwise it copies (the im2col a
  // channels-first input needs).
  return x.reshape({g.B, g.T_out, g.s * g.C_in}).transpose(0, 1);
}

namespace {

// The forward on x_rows (k.rows of x), its shape g checked.
at::Tensor forward(const LocallyConnectedKernels& k, const at::Tensor& x_rows, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias_in, const PatchShape& g, double scale, Activation act) {
  const auto bias = contiguous_or_none(bias_in);
  at::Tensor y = k.empty({g.B, g.T_out, g.C_out}, x_rows.options());
  // Patch p's output rows are y.transpose(0, 1)[p] ([B, C_out], row stride P*C_out): written in place.
  k.batched_gemm(y.transpose(0, 1), patch_matrices(x_rows, g), weight.transpose(1, 2), scale);
  if (bias || act != Activation::kNone) k.epilogue(y, bias, g, act);
  return y;
}

}  // namespace

at::Tensor locally_connected_forward(const LocallyConnectedKernels& k, const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, int64_t patch_size, double scale,
                                     c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_locally_connected(x, weight, bias, patch_size);
  const c10::DeviceGuard guard(x.device());
  return forward(k, k.rows(x), weight, bias, g, scale, act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> locally_connected_backward(
    const LocallyConnectedKernels& k, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& out, int64_t patch_size, double scale,
    c10::string_view activation, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_locally_connected(x, weight, bias, patch_size);
  check_layer_backward(grad_out, weight, g, act, out, /*relu_recomputes=*/false, bias.has_value(),
                       /*has_pos_bias=*/false, output_mask[2], /*want_pos_bias=*/false);
  const c10::DeviceGuard guard(x.device());
  // x is made dense (if it is not) only where it is read.
  const at::Tensor x_rows = act == Activation::kSquare || output_mask[1] ? k.rows(x) : x;
  at::Tensor saved;
  if (act == Activation::kRelu) saved = out->contiguous();
  if (act == Activation::kSquare) saved = forward(k, x_rows, weight, bias, g, scale, Activation::kNone);
  const at::Tensor grad = grad_out.contiguous();
  at::Tensor grad_bias = output_mask[2] ? at::empty({g.T_out, g.C_out}, x.options()) : no_grad_placeholder(x);
  at::Tensor d = grad;
  if (act != Activation::kNone || output_mask[2]) {
    d = k.empty(grad.sizes(), grad.options());
    k.activation_grad(grad, saved, d, g, act, output_mask[2] ? &grad_bias : nullptr);
  }
  at::Tensor grad_x = no_grad_placeholder(x), grad_w = no_grad_placeholder(x);
  const at::Tensor dp = d.transpose(0, 1);  // [P, B, C_out]
  if (output_mask[0]) {
    grad_x = k.empty({g.B, g.T, g.C_in}, x.options());
    k.batched_gemm(patch_matrices(grad_x, g), dp, weight, scale);  // a view: grad_x is contiguous
  }
  if (output_mask[1]) {
    grad_w = k.empty({g.T_out, g.C_out, g.s * g.C_in}, x.options());  // P times a shared weight's size
    k.batched_gemm(grad_w, dp.transpose(1, 2), patch_matrices(x_rows, g), scale);
  }
  return {grad_x, grad_w, grad_bias};
}

}  // namespace rhmfast
