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
//
// Replica form (tokens [K, B, T], table [K, s, v, C0], weights[l] [K, C_{l+1}, s*C_l], biases [K, C_l],
// outputs [K, B, T_l, C_l]): the per-layer ops take the replica form, so each layer is one call for all
// K replicas. The shortcut is taken exactly when the solo op would take it for one replica's [B, T]
// tokens; its tables U [K, s, v^s, C2] come from each replica's h and W2 by the solo path's GEMM calls.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/add.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <initializer_list>
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

void check_stack(const at::Tensor& tokens, const at::Tensor& table, const std::vector<at::Tensor>& weights,
                 const std::vector<at::Tensor>& biases, int64_t patch_size, const std::vector<double>& scales) {
  const size_t L = weights.size() + 1;
  TORCH_CHECK_VALUE(biases.empty() || biases.size() == L, "rhmfast: biases must be empty or one per layer (", L,
                    "), got ", biases.size());
  TORCH_CHECK_VALUE(scales.size() == L, "rhmfast: scales must have one entry per layer (", L, "), got ",
                    scales.size());
  // The form (solo or replica) of the whole trunk is the token layer's; weights and biases must follow it,
  // each named when it does not (the per-layer ops check the rest of their shapes).
  const bool replica = tokens.dim() == 3 || table.dim() == 4;
  if (!replica) {
    for (size_t l = 0; l < weights.size(); ++l)
      TORCH_CHECK_VALUE(weights[l].dim() == 2, "rhmfast: weights[", l, "] must have shape [C_", l + 1,
                        ", patch_size*C_", l, "] (solo form, as table is [patch_size, vocab_size, C_0]), got ",
                        weights[l].sizes());
    for (size_t l = 0; l < biases.size(); ++l)
      TORCH_CHECK_VALUE(biases[l].dim() == 1, "rhmfast: biases[", l, "] must have shape [C_", l,
                        "] (solo form, as table is [patch_size, vocab_size, C_0]), got ", biases[l].sizes());
    return;
  }
  check_token_patch_embed(tokens, table, std::nullopt, std::nullopt, patch_size);  // the form's dims and K
  const int64_t K = table.size(0);
  for (size_t l = 0; l < weights.size(); ++l) {
    TORCH_CHECK_VALUE(weights[l].dim() == 3, "rhmfast: weights[", l, "] must have shape [K, C_", l + 1,
                      ", patch_size*C_", l, "] (replica form, as table is [K, patch_size, vocab_size, C_0]), got ",
                      weights[l].sizes());
    TORCH_CHECK_VALUE(weights[l].size(0) == K, "rhmfast: weights[", l, "] has K=", weights[l].size(0),
                      " replicas but table has K=", K, ": the replica dim (dim 0) must agree");
  }
  for (size_t l = 0; l < biases.size(); ++l) {
    TORCH_CHECK_VALUE(biases[l].dim() == 2, "rhmfast: biases[", l, "] must have shape [K, C_", l,
                      "] (replica form, as table is [K, patch_size, vocab_size, C_0]), got ", biases[l].sizes());
    TORCH_CHECK_VALUE(biases[l].size(0) == K, "rhmfast: biases[", l, "] has K=", biases[l].size(0),
                      " replicas but table has K=", K, ": the replica dim (dim 0) must agree");
  }
}

// Whether layer 2 runs on distinct patches: when that at least halves its FLOPs, positions >= 2 s v^s
// (positions of one replica in the replica form: the decision is the solo op's for each replica).
bool use_distinct_patches(const at::Tensor& tokens, const at::Tensor& table, const std::vector<at::Tensor>& weights) {
  const bool replica = tokens.dim() == 3 && table.dim() == 4;
  if (weights.empty() || !(replica || (tokens.dim() == 2 && table.dim() == 3))) return false;
  const int64_t o = replica ? 1 : 0;
  const int64_t s = table.size(o), v = table.size(o + 1), B = tokens.size(o), T = tokens.size(o + 1);
  if (s < 1 || T % (s * s) != 0) return false;  // the plain path reports bad shapes
  double n_patches = 1;
  for (int64_t k = 0; k < s; ++k) n_patches *= static_cast<double>(v);
  const double positions = static_cast<double>(B) * static_cast<double>(T / s);
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
  at::Tensor patches;  // [(K,) v^s, s] int64: every patch, as a batch of token rows (one copy per replica)
  at::Tensor ids;      // [(K,) B, T/s] int64: the patch id at each first-layer position
  int64_t count;
  bool replica;
  // dims with K in front in the replica form.
  std::vector<int64_t> shape(std::initializer_list<int64_t> dims, int64_t K) const {
    std::vector<int64_t> v;
    if (replica) v.push_back(K);
    v.insert(v.end(), dims.begin(), dims.end());
    return v;
  }
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
  d.replica = tokens.dim() == 3;
  d.patches = all.div(digits, "floor").remainder(v);
  if (d.replica) {
    const int64_t K = tokens.size(0);
    d.patches = d.patches.unsqueeze(0).expand({K, count, s});
    d.ids = tokens.reshape({K, tokens.size(1), tokens.size(2) / s, s}).to(at::kLong).mul(digits).sum(-1);
  } else {
    d.ids = tokens.reshape({tokens.size(0), tokens.size(1) / s, s}).to(at::kLong).mul(digits).sum(-1);
  }
  d.patches = d.patches.contiguous();
  d.count = count;
  return d;
}

// U [s, n, C2] with U[k] = h [n, C] · W2[:, k*C:(k+1)*C]ᵀ; in the replica form U [K, s, n, C2] from h
// [K, n, C] and W2 [K, C2, s*C], replica by replica with the solo form's GEMM calls.
at::Tensor second_layer_table(const at::Tensor& h, const at::Tensor& w2, int64_t s) {
  if (h.dim() == 3) {
    const int64_t K = h.size(0), n = h.size(1), C = h.size(2);
    at::Tensor U = at::empty({K, s, n, w2.size(1)}, h.options());
    if (!h.is_cpu()) {  // one strided-batched GEMM per patch position (the CPU keeps the solo calls' bits)
      for (int64_t k = 0; k < s; ++k) {
        at::Tensor u = U.select(1, k);
        at::bmm_out(u, h, w2.narrow(2, k * C, C).transpose(1, 2));
      }
      return U;
    }
    for (int64_t r = 0; r < K; ++r) {
      const at::Tensor hr = h.select(0, r), wr = w2.select(0, r);
      for (int64_t k = 0; k < s; ++k) {
        at::Tensor u = U.select(0, r).select(0, k);
        at::mm_out(u, hr, wr.narrow(1, k * C, C).t());
      }
    }
    return U;
  }
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
  check_stack(tokens, table, weights, biases, patch_size, scales);
  std::vector<at::Tensor> outs;
  outs.reserve(weights.size() + 1);
  outs.push_back(token_patch_embed(tokens, table, bias_of(biases, 0), patch_size, scales[0], activation));
  size_t first = 0;  // first weight applied by the plain per-layer path
  if (use_distinct_patches(tokens, table, weights)) {
    check_patch_conv(outs[0], weights[0], bias_of(biases, 1), std::nullopt, patch_size);  // as the plain path would
    const DistinctPatches d = distinct_patches(tokens, table.size(-2), patch_size);
    const at::Tensor h = token_patch_embed(d.patches, table, bias_of(biases, 0), patch_size, scales[0], activation);
    const int64_t K = d.replica ? table.size(0) : 1;
    const at::Tensor U = second_layer_table(h.view(d.shape({d.count, h.size(-1)}, K)), weights[0], patch_size);
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
  check_stack(tokens, table, weights, biases, patch_size, scales);
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
  const bool replica = table.dim() == 4;
  auto add_output_grad = [&](size_t l) {
    if (!grad_outs[l].has_value()) return;
    if (!grad.defined()) {
      grad = *grad_outs[l];
    } else if (replica) {  // the sum as a replica-form result (each replica slice aligned, patch_conv.h)
      at::Tensor sum = empty_replicas(grad.sizes(), grad.options());
      at::add_out(sum, grad, *grad_outs[l]);
      grad = sum;
    } else {
      grad = grad.add(*grad_outs[l]);
    }
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
    const int64_t s = patch_size, C = table.size(-1);
    const DistinctPatches d = distinct_patches(tokens, table.size(-2), s);
    const int64_t K = d.replica ? table.size(0) : 1;
    const at::Tensor h = token_patch_embed(d.patches, table, bias_of(biases, 0), s, scales[0], activation);
    const at::Tensor h2 = h.view(d.shape({d.count, C}, K));
    const at::Tensor& w2 = weights[0];
    check_patch_conv(outs[0], w2, bias_of(biases, 1), std::nullopt, s);
    const int64_t C2 = w2.size(-2);
    // Only square reads U's values (to recompute its pre-activation); the others need its shape.
    const at::Tensor U = activation == "square" ? second_layer_table(h2, w2, s)
                                                : at::empty(d.shape({s, d.count, C2}, K), table.options());
    auto [gU, gb1, gpb1] = token_patch_embed_backward(grad, d.ids, U, bias_of(biases, 1), outs[1], s, scales[1],
                                                      activation, {true, with_bias, false});
    // Column block k of W2's gradient is gU_kᵀ · h, written in place (BLAS takes the row stride s*C); in
    // the replica form the same calls on each replica's slices.
    at::Tensor grad_w2 = d.replica ? empty_replicas(w2.sizes(), w2.options())
                                   : at::empty_like(w2, at::MemoryFormat::Contiguous);
    at::Tensor grad_h = d.replica ? empty_replicas(h2.sizes(), h2.options()).zero_() : at::zeros_like(h2);
    if (d.replica && !table.is_cpu()) {  // strided-batched GEMMs (the CPU keeps the solo calls' bits below)
      for (int64_t k = 0; k < s; ++k) {
        at::Tensor block = grad_w2.narrow(2, k * C, C);
        at::bmm_out(block, gU.select(1, k).transpose(1, 2), h2);
        grad_h.baddbmm_(gU.select(1, k), w2.narrow(2, k * C, C));
      }
    }
    for (int64_t r = 0; r < (d.replica && !table.is_cpu() ? 0 : K); ++r) {
      const at::Tensor gUr = d.replica ? gU.select(0, r) : gU, hr = d.replica ? h2.select(0, r) : h2;
      const at::Tensor wr = d.replica ? w2.select(0, r) : w2;
      at::Tensor gwr = d.replica ? grad_w2.select(0, r) : grad_w2;
      at::Tensor ghr = d.replica ? grad_h.select(0, r) : grad_h;
      for (int64_t k = 0; k < s; ++k) {
        at::Tensor block = gwr.narrow(1, k * C, C);
        at::mm_out(block, gUr.select(0, k).t(), hr);
        ghr.addmm_(gUr.select(0, k), wr.narrow(1, k * C, C));
      }
    }
    grad_weights[0] = grad_w2;
    if (with_bias) grad_biases[1] = gb1;
    if (grad_outs[0].has_value()) {  // a used first-layer output: sum its gradient per patch id
      const at::Tensor g_ids = std::get<0>(token_patch_embed_backward(
          *grad_outs[0], d.ids, at::empty(d.shape({1, d.count, C}, K), table.options()), std::nullopt, std::nullopt,
          1, 1.0, "none", {true, false, false}));
      grad_h.add_(g_ids.view(d.shape({d.count, C}, K)));
    }
    auto [gt, gb, gpb] = token_patch_embed_backward(grad_h.view(d.shape({d.count, 1, C}, K)), d.patches, table,
                                                    bias_of(biases, 0), h, s, scales[0], activation,
                                                    {true, with_bias, false});
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
