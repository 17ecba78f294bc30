// Helpers of the C++ autograd kernels (<op>_autograd.cpp). Autograd lives in C++ rather than in
// torch.library.register_autograd because the Python route costs ~0.1 ms per layer and call (measured
// on a 2-core EPYC), as much as the token layer's whole forward at width 64.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <functional>
#include <string>
#include <vector>

namespace rhmfast {

// Makes the outputs of a backward op non-differentiable the loud way: run() computes them; when grad
// mode is on and an input requires grad (backward with create_graph=True), they get a grad_fn that raises
// if reached, instead of the dispatcher's fallback, which would give silently wrong second derivatives.
struct NotDifferentiable : public torch::autograd::Function<NotDifferentiable> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const std::function<torch::autograd::variable_list()>& run,
                                                const std::string& op, at::TensorList inputs) {
    ctx->saved_data["op"] = op;
    return run();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK(false, "rhmfast: ", ctx->saved_data["op"].toStringRef(),
                " is not differentiable (double backward is not supported)");
  }
};

inline bool any_requires_grad(at::TensorList tensors) {
  for (const at::Tensor& t : tensors)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

// Runs a backward op's kernel below autograd: `inputs` are its tensor arguments, run() calls it.
inline torch::autograd::variable_list run_backward_op(const std::string& op, at::TensorList inputs,
                                                      const std::function<torch::autograd::variable_list()>& run) {
  auto below = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return run();
  };
  if (!torch::autograd::GradMode::is_enabled() || !any_requires_grad(inputs)) return below();
  std::vector<at::Tensor> defined;  // autograd's bookkeeping wants no undefined (absent optional) inputs
  for (const at::Tensor& t : inputs)
    if (t.defined()) defined.push_back(t);
  return NotDifferentiable::apply(std::function<torch::autograd::variable_list()>(below), op, at::TensorList(defined));
}

// Tensor arguments of an op, undefined where an optional one is absent.
inline at::Tensor or_undefined(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }
inline std::optional<at::Tensor> or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// A patchwise layer's non-tensor arguments, kept for its backward.
inline void save_layer_config(torch::autograd::AutogradContext* ctx, int64_t patch_size, double scale,
                              c10::string_view activation, bool has_bias, bool has_pos_bias) {
  ctx->saved_data["patch_size"] = patch_size;
  ctx->saved_data["scale"] = scale;
  ctx->saved_data["activation"] = std::string(activation);
  ctx->saved_data["has_bias"] = has_bias;
  ctx->saved_data["has_pos_bias"] = has_pos_bias;
}

// Which of (weight or table, bias, pos_bias) a patchwise layer's backward must return: needs_input_grad
// counts tensor arguments only, the input (x or tokens) and the weight, then bias and pos_bias when given.
inline std::array<bool, 3> parameter_grads_wanted(torch::autograd::AutogradContext* ctx) {
  const bool has_bias = ctx->saved_data["has_bias"].toBool();
  return {ctx->needs_input_grad(1), has_bias && ctx->needs_input_grad(2),
          ctx->saved_data["has_pos_bias"].toBool() && ctx->needs_input_grad(2 + has_bias)};
}

// The layer's (patch_size, scale, activation) as saved.
inline std::tuple<int64_t, double, std::string> layer_config(torch::autograd::AutogradContext* ctx) {
  return {ctx->saved_data["patch_size"].toInt(), ctx->saved_data["scale"].toDouble(),
          ctx->saved_data["activation"].toStringRef()};
}

}  // namespace rhmfast
