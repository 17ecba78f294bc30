// patch_conv_stack / patch_conv_stack_backward: a whole hCNN trunk (token layer, then L-1 patch
// layers, one activation) under one autograd boundary (layout contract in patch_conv.h). Device-generic:
// registered as CompositeExplicitAutograd, it calls the per-layer ops through the dispatcher, so it runs
// the CPU or the CUDA layer kernels (autograd: patch_conv_stack_autograd.cpp).
//
// Forward returns every layer's output: layer l's output is layer l+1's input, so these are exactly
// the tensors backward needs (for relu, outputs rather than pre-activations) and nothing is stored
// twice. Backward walks the layers top-down with the per-layer kernels, adding the gradient of any
// intermediate output the caller used (e.g. a layerwise readout).
//
// Distinct-patch shortcut for the second layer: the first layer's output at a position depends only on
// its s tokens, one of v^s patches. When there are many more positions than patches, layer 2's GEMM is
// done once per distinct patch, U_k = h(patch) · W2_kᵀ, and layer 2 becomes a token layer on patch ids
// with table U (same sums, grouped differently); its backward maps back the same way. This cuts the
// trunk's largest GEMM (and its two backward GEMMs) by positions / (s * v^s).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "patch_conv.h"

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
    const OptTensor& out, int64_t s, double scale, c10::string_view act, std::array<bool, 3> mask) {
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

// Whether layer 2 runs on distinct patches: when that at least halves its FLOPs, positions >= 2 s v^s.
bool use_distinct_patches(const at::Tensor& tokens, const at::Tensor& table, const std::vector<at::Tensor>& weights) {
  if (weights.empty() || tokens.dim() != 2 || table.dim() != 3) return false;
  const int64_t s = table.size(0), v = table.size(1);
  if (s < 1 || tokens.size(1) % (s * s) != 0) return false;  // the plain path reports bad shapes
  double n_patches = 1;
  for (int64_t k = 0; k < s; ++k) n_patches *= static_cast<double>(v);
  const double positions = static_cast<double>(tokens.size(0)) * static_cast<double>(tokens.size(1) / s);
  return n_patches <= static_cast<double>(1 << 20) && 2 * static_cast<double>(s) * n_patches <= positions;
}

// Powers v^(s-1-k), k < s: a patch's id is sum_k token_k * v^(s-1-k).
at::Tensor patch_digits(int64_t v, int64_t s, const at::TensorOptions& opts) {
  at::Tensor p = at::empty({s}, at::TensorOptions().dtype(at::kLong));
  int64_t* data = p.data_ptr<int64_t>();
  data[s - 1] = 1;
  for (int64_t k = s - 2; k >= 0; --k) data[k] = data[k + 1] * v;
  return p.to(opts.device());
}

struct DistinctPatches {
  at::Tensor patches;  // [v^s, s] int64: every patch, as a batch of token rows
  at::Tensor ids;      // [B, T/s] int64: the patch id at each first-layer position
  int64_t count;
};

DistinctPatches distinct_patches(const at::Tensor& tokens, int64_t v, int64_t s) {
  if (tokens.numel() > 0) {  // ids are built before any kernel sees the tokens: check them first
    const auto [lo, hi] = at::aminmax(tokens);
    const int64_t min_id = lo.item<int64_t>(), max_id = hi.item<int64_t>();
    TORCH_CHECK_VALUE(min_id >= 0 && max_id < v, "rhmfast: token ids must be in [0, vocab_size=", v, "), got ",
                      min_id < 0 ? min_id : max_id);
  }
  const at::Tensor digits = patch_digits(v, s, tokens.options());
  const int64_t count = digits[0].item<int64_t>() * v;
  const at::Tensor all = at::arange(count, tokens.options().dtype(at::kLong)).unsqueeze(1);
  DistinctPatches d;
  d.patches = all.div(digits, "floor").remainder(v).contiguous();
  d.ids = tokens.reshape({tokens.size(0), tokens.size(1) / s, s}).to(at::kLong).mul(digits).sum(-1);
  d.count = count;
  return d;
}

// U [s, n, C2] with U[k] = h [n, C] · W2[:, k*C:(k+1)*C]ᵀ.
at::Tensor second_layer_table(const at::Tensor& h, const at::Tensor& w2, int64_t s) {
  const int64_t n = h.size(0), C = h.size(1);
  at::Tensor U = at::empty({s, n, w2.size(0)}, h.options());
  for (int64_t k = 0; k < s; ++k) {
    at::Tensor u = U.select(0, k);
    at::mm_out(u, h, w2.narrow(1, k * C, C).t());
  }
  return U;
}

std::vector<at::Tensor> patch_conv_stack_impl(const at::Tensor& tokens, const at::Tensor& table,
                                             const std::vector<at::Tensor>& weights,
                                             const std::vector<at::Tensor>& biases, int64_t patch_size,
                                             const std::vector<double>& scales, c10::string_view activation) {
  check_stack(weights, biases, scales);
  std::vector<at::Tensor> outs;
  outs.reserve(weights.size() + 1);
  outs.push_back(token_patch_embed(tokens, table, bias_of(biases, 0), patch_size, scales[0], activation));
  size_t first = 0;  // first weight applied by the plain per-layer path
  if (use_distinct_patches(tokens, table, weights)) {
    check_patch_conv(outs[0], weights[0], bias_of(biases, 1), std::nullopt, patch_size);  // as the plain path would
    const DistinctPatches d = distinct_patches(tokens, table.size(1), patch_size);
    const at::Tensor h = token_patch_embed(d.patches, table, bias_of(biases, 0), patch_size, scales[0], activation);
    const at::Tensor U = second_layer_table(h.view({d.count, -1}), weights[0], patch_size);
    outs.push_back(token_patch_embed(d.ids, U, bias_of(biases, 1), patch_size, scales[1], activation));
    first = 1;
  }
  for (size_t l = first; l < weights.size(); ++l)
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
  for (size_t l = 0; l < L; ++l) {
    if (!grad_outs[l].has_value()) continue;
    TORCH_CHECK_VALUE(grad_outs[l]->sizes() == outs[l].sizes(), "rhmfast: grad_outs[", l, "] must have the shape of "
                      "outs[", l, "], ", outs[l].sizes(), ", got ", grad_outs[l]->sizes());
    TORCH_CHECK_VALUE(grad_outs[l]->device() == table.device(), "rhmfast: grad_outs[", l, "] is on ",
                      grad_outs[l]->device(), ", table on ", table.device(), ": they must be on one device");
    TORCH_CHECK_TYPE(grad_outs[l]->scalar_type() == outs[l].scalar_type(), "rhmfast: grad_outs[", l, "] has dtype ",
                     grad_outs[l]->scalar_type(), ", outs[", l, "] ", outs[l].scalar_type(), ": they must have one dtype");
  }
  const bool with_bias = !biases.empty();
  std::vector<at::Tensor> grad_weights(L - 1), grad_biases(with_bias ? L : 0);
  at::Tensor grad;  // gradient of outs[l] flowing down; undefined while nothing above used it
  auto add_output_grad = [&](size_t l) {
    if (!grad_outs[l].has_value()) return;
    grad = grad.defined() ? grad.add(*grad_outs[l]) : *grad_outs[l];
  };
  const bool distinct = use_distinct_patches(tokens, table, weights);
  for (size_t l = L - 1; l >= (distinct ? 2 : 1); --l) {
    add_output_grad(l);
    if (!grad.defined()) grad = at::zeros_like(outs[l]);
    auto [gx, gw, gb, gpb] = patch_conv_backward(grad, outs[l - 1], weights[l - 1], bias_of(biases, l), outs[l],
                                                 patch_size, scales[l], activation, {true, true, with_bias, false});
    grad = gx;
    grad_weights[l - 1] = gw;
    if (with_bias) grad_biases[l] = gb;
  }
  if (distinct) {
    // Layer 2 as a token layer on patch ids (see the top of this file), then layer 1 on the patches.
    add_output_grad(1);
    if (!grad.defined()) grad = at::zeros_like(outs[1]);
    const int64_t s = patch_size, C = table.size(2);
    const DistinctPatches d = distinct_patches(tokens, table.size(1), s);
    const at::Tensor h = token_patch_embed(d.patches, table, bias_of(biases, 0), s, scales[0], activation);
    const at::Tensor h2 = h.view({d.count, C});
    const at::Tensor& w2 = weights[0];
    check_patch_conv(outs[0], w2, bias_of(biases, 1), std::nullopt, s);
    // Only square reads U's values (to recompute its pre-activation); the others need its shape.
    const at::Tensor U = activation == "square" ? second_layer_table(h2, w2, s)
                                                : at::empty({s, d.count, w2.size(0)}, table.options());
    auto [gU, gb1, gpb1] = token_patch_embed_backward(grad, d.ids, U, bias_of(biases, 1), outs[1], s, scales[1],
                                                      activation, {true, with_bias, false});
    // Column block k of W2's gradient is gU_kᵀ · h, written in place (BLAS takes the row stride s*C).
    at::Tensor grad_w2 = at::empty_like(w2, at::MemoryFormat::Contiguous);
    at::Tensor grad_h = at::zeros_like(h2);
    for (int64_t k = 0; k < s; ++k) {
      at::Tensor block = grad_w2.narrow(1, k * C, C);
      at::mm_out(block, gU.select(0, k).t(), h2);
      grad_h.addmm_(gU.select(0, k), w2.narrow(1, k * C, C));
    }
    grad_weights[0] = grad_w2;
    if (with_bias) grad_biases[1] = gb1;
    if (grad_outs[0].has_value()) {  // a used first-layer output: sum its gradient per patch id
      const at::Tensor g_ids = std::get<0>(token_patch_embed_backward(
          *grad_outs[0], d.ids, at::empty({1, d.count, C}, table.options()), std::nullopt, std::nullopt, 1, 1.0,
          "none", {true, false, false}));
      grad_h.add_(g_ids.view({d.count, C}));
    }
    auto [gt, gb, gpb] = token_patch_embed_backward(grad_h.view({d.count, 1, C}), d.patches, table, bias_of(biases, 0),
                                                    h, s, scales[0], activation, {true, with_bias, false});
    if (with_bias) grad_biases[0] = gb;
    return {gt, grad_weights, grad_biases};
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
