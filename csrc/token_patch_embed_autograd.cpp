// Autograd of token_patch_embed, for every device: the forward op runs below autograd and saves what
// token_patch_embed_backward reads; that op is itself not differentiable (autograd_utils.h).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "autograd_utils.h"

namespace rhmfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& tokens, const at::Tensor& table, const std::optional<at::Tensor>& bias,
                        const std::optional<at::Tensor>& pos_bias, int64_t patch_size, double scale,
                        c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rhmfast::token_patch_embed", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               const std::optional<at::Tensor>&, int64_t, double, c10::string_view)>();
  return op.call(tokens, table, bias, pos_bias, patch_size, scale, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& table,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
    const std::optional<at::Tensor>& out, int64_t patch_size, double scale, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rhmfast::token_patch_embed_backward", "")
          .typed<Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                       const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, double,
                       c10::string_view, std::array<bool, 3>)>();
  return op.call(grad_out, tokens, table, bias, pos_bias, out, patch_size, scale, activation, output_mask);
}

class TokenPatchEmbed : public torch::autograd::Function<TokenPatchEmbed> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& tokens, const at::Tensor& table,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
                            int64_t patch_size, double scale, c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = call_forward(tokens, table, bias, pos_bias, patch_size, scale, activation);
    // relu's backward needs the sign of the pre-activation. The CPU kernel recomputes it from the cached
    // table (measured within 15% of re-reading a cached output), so there the output is not kept alive;
    // the CUDA kernel reads the saved output.
    const bool keep_output = activation == "relu" && !y.is_cpu();
    ctx->save_for_backward({tokens, table, or_undefined(bias), or_undefined(pos_bias),
                            keep_output ? y : at::Tensor()});
    save_layer_config(ctx, patch_size, scale, activation, bias.has_value(), pos_bias.has_value());
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask = parameter_grads_wanted(ctx);
    variable_list result(7);
    if (!mask[0] && !mask[1] && !mask[2]) return result;
    const auto [patch_size, scale, activation] = layer_config(ctx);
    auto [g_table, g_bias, g_pos] = call_backward(grads[0], saved[0], saved[1], or_none(saved[2]), or_none(saved[3]),
                                                  or_none(saved[4]), patch_size, scale, activation, mask);
    if (mask[0]) result[1] = g_table;
    if (mask[1]) result[2] = g_bias;
    if (mask[2]) result[3] = g_pos;
    return result;
  }
};

at::Tensor token_patch_embed_autograd(const at::Tensor& tokens, const at::Tensor& table,
                                      const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
                                      int64_t patch_size, double scale, c10::string_view activation) {
  if (!torch::autograd::GradMode::is_enabled() ||
      !any_requires_grad({table, or_undefined(bias), or_undefined(pos_bias)})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(tokens, table, bias, pos_bias, patch_size, scale, activation);
  }
  return TokenPatchEmbed::apply(tokens, table, bias, pos_bias, patch_size, scale, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_patch_embed_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& table,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
    const std::optional<at::Tensor>& out, int64_t patch_size, double scale, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  const variable_list g = run_backward_op(
      "rhmfast::token_patch_embed_backward",
      {grad_out, tokens, table, or_undefined(bias), or_undefined(pos_bias), or_undefined(out)}, [&] {
        auto [a, b, c] = call_backward(grad_out, tokens, table, bias, pos_bias, out, patch_size, scale, activation,
                                       output_mask);
        return variable_list{a, b, c};
      });
  return {g[0], g[1], g[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, Autograd, m) {
  m.impl("token_patch_embed", &token_patch_embed_autograd);
  m.impl("token_patch_embed_backward", &token_patch_embed_backward_autograd);
}

}  // namespace rhmfast
