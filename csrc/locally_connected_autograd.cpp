// Autograd of locally_connected, for every device: the forward op runs below autograd and saves what
// locally_connected_backward reads; that op is itself not differentiable (autograd_utils.h).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "autograd_utils.h"

namespace rhmfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

at::Tensor call_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t patch_size, double scale, c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rhmfast::locally_connected", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               int64_t, double, c10::string_view)>();
  return op.call(x, weight, bias, patch_size, scale, activation);
}

Grads call_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& out, int64_t patch_size,
                    double scale, c10::string_view activation, std::array<bool, 3> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rhmfast::locally_connected_backward", "")
          .typed<Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                       const std::optional<at::Tensor>&, int64_t, double, c10::string_view, std::array<bool, 3>)>();
  return op.call(grad_out, x, weight, bias, out, patch_size, scale, activation, output_mask);
}

class LocallyConnected : public torch::autograd::Function<LocallyConnected> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t patch_size, double scale,
                            c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = call_forward(x, weight, bias, patch_size, scale, activation);
    // relu's derivative is read off the output; square recomputes its pre-activation from x.
    ctx->save_for_backward({x, weight, or_undefined(bias), activation == "relu" ? y : at::Tensor()});
    save_layer_config(ctx, patch_size, scale, activation, bias.has_value(), /*has_pos_bias=*/false);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto [w, b, unused_pos_bias] = parameter_grads_wanted(ctx);
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), w, b};
    variable_list result(6);
    if (!mask[0] && !mask[1] && !mask[2]) return result;
    const auto [patch_size, scale, activation] = layer_config(ctx);
    const Grads g = call_backward(grads[0], saved[0], saved[1], or_none(saved[2]), or_none(saved[3]), patch_size,
                                  scale, activation, mask);
    if (mask[0]) result[0] = std::get<0>(g);
    if (mask[1]) result[1] = std::get<1>(g);
    if (mask[2]) result[2] = std::get<2>(g);
    return result;
  }
};

at::Tensor locally_connected_autograd(const at::Tensor& x, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, int64_t patch_size, double scale,
                                      c10::string_view activation) {
  if (!torch::autograd::GradMode::is_enabled() || !any_requires_grad({x, weight, or_undefined(bias)})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(x, weight, bias, patch_size, scale, activation);
  }
  return LocallyConnected::apply(x, weight, bias, patch_size, scale, activation);
}

Grads locally_connected_backward_autograd(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias,
                                          const std::optional<at::Tensor>& out, int64_t patch_size, double scale,
                                          c10::string_view activation, std::array<bool, 3> output_mask) {
  const variable_list g = run_backward_op(
      "rhmfast::locally_connected_backward", {grad_out, x, weight, or_undefined(bias), or_undefined(out)}, [&] {
        const Grads r = call_backward(grad_out, x, weight, bias, out, patch_size, scale, activation, output_mask);
        return variable_list{std::get<0>(r), std::get<1>(r), std::get<2>(r)};
      });
  return {g[0], g[1], g[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, Autograd, m) {
  m.impl("locally_connected", &locally_connected_autograd);
  m.impl("locally_connected_backward", &locally_connected_backward_autograd);
}

}  // namespace rhmfast
