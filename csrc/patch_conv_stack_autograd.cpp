// Autograd of patch_conv_stack, for every device: the forward op runs below autograd and its outputs,
// every layer's, are what patch_conv_stack_backward reads; that op is itself not differentiable
// (autograd_utils.h). Gradients flow to the table, the weights and the biases; outputs nobody used send
// none (no zero tensors to add).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "autograd_utils.h"

namespace rhmfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensors = std::vector<at::Tensor>;
using GradOuts = std::vector<std::optional<at::Tensor>>;
using Grads = std::tuple<at::Tensor, Tensors, Tensors>;

// The kernels' C++ signature is patch_conv_stack.cpp's (one per op): lists as std::vector.

Tensors call_forward(const at::Tensor& tokens, const at::Tensor& table, const Tensors& weights, const Tensors& biases,
                     int64_t patch_size, const std::vector<double>& scales, c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rhmfast::patch_conv_stack", "")
                             .typed<Tensors(const at::Tensor&, const at::Tensor&, const Tensors&, const Tensors&,
                                            int64_t, const std::vector<double>&, c10::string_view)>();
  return op.call(tokens, table, weights, biases, patch_size, scales, activation);
}

Grads call_backward(const GradOuts& grad_outs, const at::Tensor& tokens, const at::Tensor& table,
                    const Tensors& weights, const Tensors& biases, const Tensors& outs, int64_t patch_size,
                    const std::vector<double>& scales, c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rhmfast::patch_conv_stack_backward", "")
                             .typed<Grads(const GradOuts&, const at::Tensor&, const at::Tensor&, const Tensors&,
                                          const Tensors&, const Tensors&, int64_t, const std::vector<double>&,
                                          c10::string_view)>();
  return op.call(grad_outs, tokens, table, weights, biases, outs, patch_size, scales, activation);
}

// Tensor lists go in as at::TensorList so that autograd counts each element as an input.
class PatchConvStack : public torch::autograd::Function<PatchConvStack> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& tokens, const at::Tensor& table,
                               at::TensorList weights, at::TensorList biases, int64_t patch_size,
                               at::ArrayRef<double> scales, c10::string_view activation) {
    variable_list outs;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      outs = call_forward(tokens, table, weights.vec(), biases.vec(), patch_size, scales.vec(), activation);
    }
    variable_list saved{tokens, table};
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), biases.begin(), biases.end());
    saved.insert(saved.end(), outs.begin(), outs.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["n_weights"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["n_biases"] = static_cast<int64_t>(biases.size());
    ctx->saved_data["patch_size"] = patch_size;
    ctx->saved_data["scales"] = scales.vec();
    ctx->saved_data["activation"] = std::string(activation);
    ctx->set_materialize_grads(false);
    return outs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const auto n_w = static_cast<size_t>(ctx->saved_data["n_weights"].toInt());
    const auto n_b = static_cast<size_t>(ctx->saved_data["n_biases"].toInt());
    const at::TensorList all(saved);
    const Tensors weights = all.slice(2, n_w).vec(), biases = all.slice(2 + n_w, n_b).vec(),
                  outs = all.slice(2 + n_w + n_b).vec();
    GradOuts grad_outs;
    for (const at::Tensor& g : grads) grad_outs.push_back(g.defined() ? std::optional<at::Tensor>(g) : std::nullopt);
    const std::vector<double> scales = ctx->saved_data["scales"].toDoubleVector();
    auto [g_table, g_weights, g_biases] =
        call_backward(grad_outs, saved[0], saved[1], weights, biases, outs, ctx->saved_data["patch_size"].toInt(),
                      scales, ctx->saved_data["activation"].toStringRef());
    // One entry per forward argument, list elements counted one by one: tokens, table, weights,
    // biases, then patch_size, scales and activation.
    variable_list result{at::Tensor(), g_table};
    result.insert(result.end(), g_weights.begin(), g_weights.end());
    result.insert(result.end(), g_biases.begin(), g_biases.end());
    result.resize(result.size() + 3);
    return result;
  }
};

Tensors patch_conv_stack_autograd(const at::Tensor& tokens, const at::Tensor& table, const Tensors& weights,
                                  const Tensors& biases, int64_t patch_size, const std::vector<double>& scales,
                                  c10::string_view activation) {
  Tensors params{table};
  params.insert(params.end(), weights.begin(), weights.end());
  params.insert(params.end(), biases.begin(), biases.end());
  if (!torch::autograd::GradMode::is_enabled() || !any_requires_grad(params)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(tokens, table, weights, biases, patch_size, scales, activation);
  }
  return PatchConvStack::apply(tokens, table, at::TensorList(weights), at::TensorList(biases), patch_size,
                               at::ArrayRef<double>(scales), activation);
}

Grads patch_conv_stack_backward_autograd(const GradOuts& grad_outs, const at::Tensor& tokens, const at::Tensor& table,
                                         const Tensors& weights, const Tensors& biases, const Tensors& outs,
                                         int64_t patch_size, const std::vector<double>& scales,
                                         c10::string_view activation) {
  Tensors inputs{tokens, table};
  for (const std::optional<at::Tensor>& g : grad_outs) inputs.push_back(g.has_value() ? *g : at::Tensor());
  for (const Tensors* list : {&weights, &biases, &outs}) inputs.insert(inputs.end(), list->begin(), list->end());
  const size_t n_w = weights.size();
  const variable_list g = run_backward_op("rhmfast::patch_conv_stack_backward", inputs, [&] {
    auto [g_table, g_weights, g_biases] =
        call_backward(grad_outs, tokens, table, weights, biases, outs, patch_size, scales, activation);
    variable_list flat{g_table};
    flat.insert(flat.end(), g_weights.begin(), g_weights.end());
    flat.insert(flat.end(), g_biases.begin(), g_biases.end());
    return flat;
  });
  return {g[0], Tensors(g.begin() + 1, g.begin() + 1 + n_w), Tensors(g.begin() + 1 + n_w, g.end())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, Autograd, m) {
  m.impl("patch_conv_stack", &patch_conv_stack_autograd);
  m.impl("patch_conv_stack_backward", &patch_conv_stack_backward_autograd);
}

}  // namespace rhmfast
