// Autograd of patch_conv, for every device: the forward op runs below autograd and saves what
// patch_conv_backward reads; that op is itself not differentiable (autograd_utils.h).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "autograd_utils.h"

namespace rhmfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor call_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& pos_bias, int64_t patch_size, double scale,
                        c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rhmfast::patch_conv", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               const std::optional<at::Tensor>&, int64_t, double, c10::string_view)>();
  return op.call(x, weight, bias, pos_bias, patch_size, scale, activation);
}

Grads call_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
                    const std::optional<at::Tensor>& out, int64_t patch_size, double scale,
                    c10::string_view activation, std::array<bool, 4> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rhmfast::patch_conv_backward", "")
          .typed<Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                       const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, double,
                       c10::string_view, std::array<bool, 4>)>();
  return op.call(grad_out, x, weight, bias, pos_bias, out, patch_size, scale, activation, output_mask);
}

class PatchConv : public torch::autograd::Function<PatchConv> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
                            int64_t patch_size, double scale, c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = call_forward(x, weight, bias, pos_bias, patch_size, scale, activation);
    // relu's derivative is read off the output; square recomputes its pre-activation from x.
    ctx->save_for_backward(
        {x, weight, or_undefined(bias), or_undefined(pos_bias), activation == "relu" ? y : at::Tensor()});
    save_layer_config(ctx, patch_size, scale, activation, bias.has_value(), pos_bias.has_value());
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto [w, b, pb] = parameter_grads_wanted(ctx);
    const std::array<bool, 4> mask{ctx->needs_input_grad(0), w, b, pb};
    variable_list result(7);
    if (!mask[0] && !mask[1] && !mask[2] && !mask[3]) return result;
    const auto [patch_size, scale, activation] = layer_config(ctx);
    const Grads g = call_backward(grads[0], saved[0], saved[1], or_none(saved[2]), or_none(saved[3]),
                                  or_none(saved[4]), patch_size, scale, activation, mask);
    if (mask[0]) result[0] = std::get<0>(g);
    if (mask[1]) result[1] = std::get<1>(g);
    if (mask[2]) result[2] = std::get<2>(g);
    if (mask[3]) result[3] = std::get<3>(g);
    return result;
  }
};

at::Tensor patch_conv_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& pos_bias, int64_t patch_size, double scale,
                               c10::string_view activation) {
  if (!torch::autograd::GradMode::is_enabled() ||
      !any_requires_grad({x, weight, or_undefined(bias), or_undefined(pos_bias)})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(x, weight, bias, pos_bias, patch_size, scale, activation);
  }
  return PatchConv::apply(x, weight, bias, pos_bias, patch_size, scale, activation);
}

Grads patch_conv_backward_autograd(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
                                   const std::optional<at::Tensor>& out, int64_t patch_size, double scale,
                                   c10::string_view activation, std::array<bool, 4> output_mask) {
  const variable_list g = run_backward_op(
      "rhmfast::patch_conv_backward",
      {grad_out, x, weight, or_undefined(bias), or_undefined(pos_bias), or_undefined(out)}, [&] {
        const Grads r =
            call_backward(grad_out, x, weight, bias, pos_bias, out, patch_size, scale, activation, output_mask);
        return variable_list{std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r)};
      });
  return {g[0], g[1], g[2], g[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, Autograd, m) {
  m.impl("patch_conv", &patch_conv_autograd);
  m.impl("patch_conv_backward", &patch_conv_backward_autograd);
}

}  // namespace rhmfast
