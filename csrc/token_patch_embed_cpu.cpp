// CPU kernels of token_patch_embed / token_patch_embed_backward (layout contract in patch_conv.h).
//
// The one-hot first layer as a gather: output row (b, j) = act(scale * sum_k table[k, tokens[b, j*s+k]]
// + bias + pos_bias[j]), s row reads instead of a dense product over s*v inputs. Rows are independent,
// so the forward splits them over threads. The table gradient is a scatter-add; to make its bits
// independent of scheduling, every task owns a (patch position k, 64-column block) slice of the table
// and adds the rows into it in the fixed order of the positions.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "patch_conv_cpu.h"

namespace rhmfast {
namespace {

constexpr int64_t kColumnBlock = 64;

// Remembers one out-of-range token id seen by any thread (the kernels skip such ids, never read with them).
struct BadToken {
  std::atomic<bool> seen{false};
  std::atomic<int64_t> value{0};
  void record(int64_t t) {
    if (!seen.exchange(true)) value.store(t);
  }
  void raise_if_seen(int64_t v) const {
    TORCH_CHECK_VALUE(!seen.load(), "rhmfast: token ids must be in [0, vocab_size=", v, "), got ", value.load());
  }
};

template <typename Tok, typename T>
void gather_rows(const Tok* tokens, const T* table, T* y, const PatchShape& g, int64_t r0, int64_t r1, BadToken& bad) {
  const int64_t v = g.C_in, C = g.C_out;
  for (int64_t r = r0; r < r1; ++r) {
    const Tok* tk = tokens + r * g.s;  // tokens [B, T] contiguous: row r = (b, j) starts at b*T + j*s
    T* __restrict row = y + r * C;
    std::fill(row, row + C, T(0));
    for (int64_t k = 0; k < g.s; ++k) {
      const int64_t t = static_cast<int64_t>(tk[k]);
      if (t < 0 || t >= v) {
        bad.record(t);
        continue;
      }
      const T* __restrict src = table + (k * v + t) * C;
      for (int64_t c = 0; c < C; ++c) row[c] += src[c];
    }
  }
}

template <typename Tok, typename T>
void scatter_grad(const Tok* tokens, const T* d, T* grad_table, const PatchShape& g, BadToken& bad) {
  const int64_t v = g.C_in, C = g.C_out;
  const int64_t n_blocks = (C + kColumnBlock - 1) / kColumnBlock;
  at::parallel_for(0, g.s * n_blocks, 1, [&](int64_t task0, int64_t task1) {
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t k = task / n_blocks, c0 = (task % n_blocks) * kColumnBlock;
      const int64_t width = std::min(kColumnBlock, C - c0);
      for (int64_t r = 0; r < g.rows(); ++r) {
        const int64_t t = static_cast<int64_t>(tokens[r * g.s + k]);
        if (t < 0 || t >= v) {
          bad.record(t);
          continue;
        }
        T* __restrict dst = grad_table + (k * v + t) * C + c0;
        const T* __restrict src = d + r * C + c0;
        for (int64_t c = 0; c < width; ++c) dst[c] += src[c];
      }
    }
  });
}

template <typename Fn>
void dispatch_tokens(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kByte: fn(uint8_t{}); break;
    case at::kShort: fn(int16_t{}); break;
    case at::kInt: fn(int32_t{}); break;
    default: fn(int64_t{}); break;  // dtype checked in check_token_patch_embed
  }
}

}  // namespace

at::Tensor token_patch_embed_cpu(const at::Tensor& tokens_in, const at::Tensor& table_in,
                                 const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& pos_bias_in,
                                 int64_t patch_size, double scale, c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_token_patch_embed(tokens_in, table_in, bias_in, pos_bias_in, patch_size);
  const at::Tensor tokens = tokens_in.contiguous(), table = table_in.contiguous();
  const auto bias = contiguous_or_none(bias_in);
  const auto pos_bias = contiguous_or_none(pos_bias_in);
  at::Tensor y = at::empty({g.B, g.T_out, g.C_out}, table.options());
  BadToken bad;
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "token_patch_embed_cpu", [&] {
    dispatch_tokens(tokens.scalar_type(), [&](auto tag) {
      using Tok = decltype(tag);
      const Tok* tk = tokens.data_ptr<Tok>();
      const scalar_t* tab = table.data_ptr<scalar_t>();
      scalar_t* out = y.data_ptr<scalar_t>();
      const scalar_t* b = bias ? bias->data_ptr<scalar_t>() : nullptr;
      const scalar_t* pb = pos_bias ? pos_bias->data_ptr<scalar_t>() : nullptr;
      const std::vector<scalar_t> zeros(g.C_out, scalar_t(0));
      at::parallel_for(0, g.rows(), cpu::row_grain(g.C_out * g.s), [&](int64_t r0, int64_t r1) {
        gather_rows<Tok, scalar_t>(tk, tab, out, g, r0, r1, bad);
        cpu::forward_epilogue<scalar_t>(out, r0, r1, g.C_out, g.T_out, static_cast<scalar_t>(scale), b, pb,
                                        zeros.data(), act);
      });
    });
  });
  bad.raise_if_seen(g.C_in);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_patch_embed_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& tokens_in, const at::Tensor& table,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
    const std::optional<at::Tensor>& out, int64_t patch_size, double scale, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_token_patch_embed(tokens_in, table, bias, pos_bias, patch_size);
  check_layer_backward(grad_out, table, g, act, out, bias.has_value(), pos_bias.has_value(), output_mask[1],
                       output_mask[2]);
  const at::Tensor tokens = tokens_in.contiguous();
  at::Tensor saved;
  if (act == Activation::kRelu) saved = out->contiguous();
  if (act == Activation::kSquare) saved = token_patch_embed_cpu(tokens, table, bias, pos_bias, patch_size, scale, "none");
  const at::Tensor grad = grad_out.contiguous();
  const auto opts = table.options();
  at::Tensor grad_table = output_mask[0] ? at::zeros(table.sizes(), opts) : no_grad_placeholder(table);
  at::Tensor grad_bias = output_mask[1] ? at::empty({g.C_out}, opts) : no_grad_placeholder(table);
  at::Tensor grad_pos = output_mask[2] ? at::empty({g.T_out, g.C_out}, opts) : no_grad_placeholder(table);
  BadToken bad;
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "token_patch_embed_backward_cpu", [&] {
    at::Tensor d = grad;
    if (act != Activation::kNone || output_mask[1] || output_mask[2]) {
      d = at::empty_like(grad);
      cpu::activation_grad<scalar_t>(grad.data_ptr<scalar_t>(), saved.defined() ? saved.data_ptr<scalar_t>() : nullptr,
                                     d.data_ptr<scalar_t>(), g.B, g.T_out, g.C_out, act,
                                     output_mask[2] ? grad_pos.data_ptr<scalar_t>() : nullptr,
                                     output_mask[1] ? grad_bias.data_ptr<scalar_t>() : nullptr);
    }
    if (output_mask[0]) {
      dispatch_tokens(tokens.scalar_type(), [&](auto tag) {
        using Tok = decltype(tag);
        scatter_grad<Tok, scalar_t>(tokens.data_ptr<Tok>(), d.data_ptr<scalar_t>(),
                                    grad_table.data_ptr<scalar_t>(), g, bad);
      });
    }
  });
  bad.raise_if_seen(g.C_in);
  if (output_mask[0] && scale != 1.0) grad_table.mul_(scale);
  return {grad_table, grad_bias, grad_pos};
}

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) {
  m.impl("token_patch_embed", &token_patch_embed_cpu);
  m.impl("token_patch_embed_backward", &token_patch_embed_backward_cpu);
}

}  // namespace rhmfast
