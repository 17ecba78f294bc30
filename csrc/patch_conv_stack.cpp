// patch_conv_stack / patch_conv_stack_backward: a whole hCNN trunk (token layer, then L-1 patch
// layers, one activation) under one autograd boundary (layout contract in patch_conv.h). Device-generic:
// registered as CompositeExplicitAutograd, it calls the per-layer ops through the dispatcher, so it runs
// the CPU or the CUDA layer kernels (autograd is registered once, in rhmfast/ops/patch_conv_stack.py).
//
// Forward returns every layer's output: layer l's output is layer l+1's input, so these are exactly
// the tensors backward needs (for relu, outputs rather than pre-activations) and nothing is stored
// twice. Backward walks the layers top-down with the per-layer kernels, adding the gradient of any
// intermediate output the caller used (e.g. a layerwise readout).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace rhmfast {
namespace {

using OptTensor = std::optional<at::Tensor>;

at::Tensor patch_conv(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias, int64_t s, double scale,
                      c10::string_view act) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("rhmfast::patch_conv", "").typed<
      at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, int64_t, double,
                 c10::string_view)>();
  return op.call(x, weight, bias, std::nullopt, s, scale, act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_conv_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
    const at::Tensor& out, int64_t s, double scale, c10::string_view act, std::array<bool, 4> mask) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("rhmfast::patch_conv_backward", "").typed<
      std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
          const OptTensor&, int64_t, double, c10::string_view, std::array<bool, 4>)>();
  return op.call(grad, x, weight, bias, std::nullopt, out, s, scale, act, mask);
}

at::Tensor token_patch_embed(const at::Tensor& tokens, const at::Tensor& table, const OptTensor& bias, int64_t s,
                             double scale, c10::string_view act) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("rhmfast::token_patch_embed", "").typed<
      at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, int64_t, double,
                 c10::string_view)>();
  return op.call(tokens, table, bias, std::nullopt, s, scale, act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_patch_embed_backward(
    const at::Tensor& grad, const at::Tensor& tokens, const at::Tensor& table, const OptTensor& bias,
    const at::Tensor& out, int64_t s, double scale, c10::string_view act, std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("rhmfast::token_patch_embed_backward", "").typed<
      std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                     const OptTensor&, const OptTensor&, const OptTensor&, int64_t,
                                                     double, c10::string_view, std::array<bool, 3>)>();
  return op.call(grad, tokens, table, bias, std::nullopt, out, s, scale, act, mask);
}

std::optional<at::Tensor> bias_of(const std::vector<at::Tensor>& biases, size_t l) {
  if (biases.empty()) return std::nullopt;
  return biases[l];
}

void check_stack(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                 const std::vector<double>& scales) {
  const size_t L = weights.size() + 1;
  TORCH_CHECK_VALUE(biases.empty() || biases.size() == L, "rhmfast: biases must be empty or one per layer (", L,
                    "), got ", biases.size());
  TORCH_CHECK_VALUE(scales.size() == L, "rhmfast: scales must have one entry per layer (", L, "), got ",
                    scales.size());
}

std::vector<at::Tensor> patch_conv_stack_impl(const at::Tensor& tokens, const at::Tensor& table,
                                             const std::vector<at::Tensor>& weights,
                                             const std::vector<at::Tensor>& biases, int64_t patch_size,
                                             const std::vector<double>& scales, c10::string_view activation) {
  check_stack(weights, biases, scales);
  std::vector<at::Tensor> outs;
  outs.reserve(weights.size() + 1);
  outs.push_back(token_patch_embed(tokens, table, bias_of(biases, 0), patch_size, scales[0], activation));
  for (size_t l = 0; l < weights.size(); ++l)
    outs.push_back(patch_conv(outs.back(), weights[l], bias_of(biases, l + 1), patch_size, scales[l + 1], activation));
  return outs;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> patch_conv_stack_backward_impl(
    const std::vector<std::optional<at::Tensor>>& grad_outs, const at::Tensor& tokens, const at::Tensor& table,
    const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases, const std::vector<at::Tensor>& outs,
    int64_t patch_size, const std::vector<double>& scales, c10::string_view activation) {
  check_stack(weights, biases, scales);
  const size_t L = weights.size() + 1;
  TORCH_CHECK_VALUE(outs.size() == L && grad_outs.size() == L, "rhmfast: outs and grad_outs must have one entry per "
                    "layer (", L, "), got ", outs.size(), " and ", grad_outs.size());
  const bool with_bias = !biases.empty();
  std::vector<at::Tensor> grad_weights(L - 1), grad_biases(with_bias ? L : 0);
  at::Tensor grad;  // gradient of outs[l] flowing down; undefined while nothing above used it
  auto add_output_grad = [&](size_t l) {
    if (!grad_outs[l].has_value()) return;
    grad = grad.defined() ? grad.add(*grad_outs[l]) : *grad_outs[l];
  };
  for (size_t l = L - 1; l >= 1; --l) {
    add_output_grad(l);
    if (!grad.defined()) grad = at::zeros_like(outs[l]);
    auto [gx, gw, gb, gpb] = patch_conv_backward(grad, outs[l - 1], weights[l - 1], bias_of(biases, l), outs[l],
                                                 patch_size, scales[l], activation, {true, true, with_bias, false});
    grad = gx;
    grad_weights[l - 1] = gw;
    if (with_bias) grad_biases[l] = gb;
  }
  add_output_grad(0);
  if (!grad.defined()) grad = at::zeros_like(outs[0]);
  auto [gt, gb, gpb] = token_patch_embed_backward(grad, tokens, table, bias_of(biases, 0), outs[0], patch_size,
                                                  scales[0], activation, {true, with_bias, false});
  if (with_bias) grad_biases[0] = gb;
  return {gt, grad_weights, grad_biases};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CompositeExplicitAutograd, m) {
  m.impl("patch_conv_stack", &patch_conv_stack_impl);
  m.impl("patch_conv_stack_backward", &patch_conv_stack_backward_impl);
}

}  // namespace rhmfast
