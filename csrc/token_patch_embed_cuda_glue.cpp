// Torch glue of token_patch_embed / token_patch_embed_backward on CUDA: checks (patch_conv.h), the token
// range check, and the kernels of token_patch_embed_cuda.cu. For the deterministic table gradient the
// (row, k) pairs are stable-sorted by table row k*v + t here, and the kernel sums each run of equal
// keys in that order. Built only where torch has CUDA. The replica form ([K, ...] on every tensor) runs
// each kernel once over all replicas (table rows and output rows numbered globally), its results laid
// out as the CPU's (empty_replicas, patch_conv.h).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "patch_conv.h"
#include "patch_conv_cuda_glue.h"

#include <vector>

namespace rhmfast {
namespace {

cuda::TokenType cuda_token_type(at::ScalarType t) {
  switch (t) {
    case at::kByte: return cuda::TokenType::kUInt8;
    case at::kShort: return cuda::TokenType::kInt16;
    case at::kInt: return cuda::TokenType::kInt32;
    default: return cuda::TokenType::kInt64;  // dtype checked in check_token_patch_embed
  }
}

// One device-to-host sync: ids outside [0, v) are an error, never an out-of-bounds read.
void check_token_values(const at::Tensor& tokens, int64_t v) {
  if (tokens.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(tokens);
  const int64_t min_id = lo.item<int64_t>(), max_id = hi.item<int64_t>();
  TORCH_CHECK_VALUE(min_id >= 0 && max_id < v, "rhmfast: token ids must be in [0, vocab_size=", v, "), got ",
                    min_id < 0 ? min_id : max_id);
}

// The forward kernel on inputs already checked (shapes, devices, token ids), with the device guard set:
// the backward recomputes the pre-activation through it without a second device-to-host sync.
at::Tensor token_gather(const at::Tensor& tokens, const at::Tensor& table_in, const std::optional<at::Tensor>& bias_in,
                        const std::optional<at::Tensor>& pos_bias_in, const PatchShape& g, double scale,
                        Activation act) {
  const at::Tensor table = table_in.contiguous();
  const auto bias = contiguous_or_none(bias_in);
  const auto pos_bias = contiguous_or_none(pos_bias_in);
  at::Tensor y = g.replica ? empty_replicas(g.out_sizes(), table.options())
                           : at::empty({g.B, g.T_out, g.C_out}, table.options());
  check_launch(cuda::launch_token_gather(cuda_float_type(table.scalar_type()), cuda_token_type(tokens.scalar_type()),
                                         tokens.data_ptr(), table.data_ptr(), g.s * g.C_in * g.C_out, y.data_ptr(),
                                         g.replica ? y.stride(0) : 0, g.K, g.rows(), g.s, g.C_in, g.C_out, g.T_out,
                                         scale, ptr_or_null(bias), g.C_out, ptr_or_null(pos_bias), g.T_out * g.C_out,
                                         cuda_act(act), c10::cuda::getCurrentCUDAStream()),
               "token_gather");
  return y;
}

at::Tensor token_patch_embed_cuda(const at::Tensor& tokens_in, const at::Tensor& table,
                                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
                                  int64_t patch_size, double scale, c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_token_patch_embed(tokens_in, table, bias, pos_bias, patch_size);
  const c10::cuda::CUDAGuard guard(table.device());
  const at::Tensor tokens = tokens_in.contiguous();
  check_token_values(tokens, g.C_in);
  return token_gather(tokens, table, bias, pos_bias, g, scale, act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_patch_embed_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& tokens_in, const at::Tensor& table,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
    const std::optional<at::Tensor>& out, int64_t patch_size, double scale, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_token_patch_embed(tokens_in, table, bias, pos_bias, patch_size);
  check_layer_backward(grad_out, table, g, act, out, /*relu_recomputes=*/true, bias.has_value(), pos_bias.has_value(),
                       output_mask[1], output_mask[2]);
  const c10::cuda::CUDAGuard guard(table.device());
  const at::Tensor tokens = tokens_in.contiguous();
  check_token_values(tokens, g.C_in);
  at::Tensor saved;
  // relu's mask is the sign of the output or, without it, of the recomputed pre-activation.
  if (act == Activation::kRelu && out.has_value()) saved = g.replica ? replica_slices_dense(*out) : out->contiguous();
  if (act == Activation::kSquare || (act == Activation::kRelu && !out.has_value()))
    saved = token_gather(tokens, table, bias, pos_bias, g, scale, Activation::kNone);
  const at::Tensor grad = g.replica ? replica_slices_dense(grad_out) : grad_out.contiguous();
  const auto opts = table.options();
  auto empty_result = [&](const std::vector<int64_t>& dims) {
    return g.replica ? empty_replicas(dims, opts) : at::empty(dims, opts);
  };
  at::Tensor grad_table = output_mask[0] ? empty_result(table.sizes().vec()).zero_() : no_grad_placeholder(table);
  at::Tensor grad_bias = output_mask[1] ? empty_result(g.with_k({g.C_out})) : no_grad_placeholder(table);
  at::Tensor grad_pos = output_mask[2] ? empty_result(g.with_k({g.T_out, g.C_out})) : no_grad_placeholder(table);
  at::Tensor d = grad;
  if (act != Activation::kNone || output_mask[1] || output_mask[2]) {
    d = g.replica ? empty_replicas(grad.sizes(), grad.options()) : at::empty_like(grad);
    activation_grad_cuda(grad, saved, d, g, act, output_mask[2] ? &grad_pos : nullptr,
                         output_mask[1] ? &grad_bias : nullptr);
  }
  if (output_mask[0] && g.all_rows() > 0) {
    // Key of pair (row r, patch position k) of replica q = its global table row q*s*v + k*v + t; pairs are
    // numbered by global row (q*rows + r)*s + k.
    const at::Tensor offsets = at::arange(g.s, tokens.options().dtype(at::kLong)).mul_(g.C_in);
    const at::Tensor replica_offsets =
        at::arange(g.K, tokens.options().dtype(at::kLong)).mul_(g.s * g.C_in).view({g.K, 1, 1});
    const at::Tensor keys =
        tokens.view({g.K, g.rows(), g.s}).to(at::kLong).add(offsets).add(replica_offsets).view({-1});
    const auto [sorted, pair] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const auto [unique_keys, inverse, counts] = at::unique_consecutive(sorted, false, true);
    at::Tensor starts = at::zeros({counts.size(0) + 1}, counts.options());
    starts.narrow(0, 1, counts.size(0)).copy_(at::cumsum(counts, 0));
    const at::Tensor rows = pair.div(g.s, "floor");
    check_launch(cuda::launch_token_segment_sum(cuda_float_type(table.scalar_type()), rows.data_ptr<int64_t>(),
                                                starts.data_ptr<int64_t>(), unique_keys.data_ptr<int64_t>(),
                                                unique_keys.size(0), d.data_ptr(), g.replica ? d.stride(0) : 0,
                                                g.rows(), grad_table.data_ptr(),
                                                g.replica ? grad_table.stride(0) : 0, g.s * g.C_in, g.C_out, scale,
                                                c10::cuda::getCurrentCUDAStream()),
                 "token_segment_sum");
  }
  return {grad_table, grad_bias, grad_pos};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CUDA, m) {
  m.impl("token_patch_embed", &token_patch_embed_cuda);
  m.impl("token_patch_embed_backward", &token_patch_embed_backward_cuda);
}

}  // namespace rhmfast
