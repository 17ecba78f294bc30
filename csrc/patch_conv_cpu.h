// CPU implementations of the patchwise layers (schemas and layout contract: module.cpp, patch_conv.h),
// declared here so each can reuse the others (backward recomputes square's pre-activation with the
// forward), and the fused epilogues they share.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "patch_conv.h"

namespace rhmfast {

at::Tensor patch_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& pos_bias, int64_t patch_size, double scale,
                          c10::string_view activation);

// (grad_x, grad_weight, grad_bias, grad_pos_bias); entries whose output_mask is false are empty.
// out (the layer's output) is needed for relu; square recomputes its pre-activation from x.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_conv_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& pos_bias, const std::optional<at::Tensor>& out, int64_t patch_size, double scale,
    c10::string_view activation, std::array<bool, 4> output_mask);

at::Tensor token_patch_embed_cpu(const at::Tensor& tokens, const at::Tensor& table,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
                                 int64_t patch_size, double scale, c10::string_view activation);

// (grad_table, grad_bias, grad_pos_bias); entries whose output_mask is false are empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> token_patch_embed_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& tokens, const at::Tensor& table,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
    const std::optional<at::Tensor>& out, int64_t patch_size, double scale, c10::string_view activation,
    std::array<bool, 3> output_mask);

namespace cpu {

// Rows per parallel task for row-wise passes over [rows, C]: ~16k elements per task.
inline int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)); }

// y = act(scale * y + bias + pos_bias[row % T_out]) on rows [r0, r1) of y [rows, C], one pass per row.
// zeros [C] stands in for a missing bias (adding 0 and scaling by 1 are exact), so every case is the
// same branch-free loop and vectorises.
template <typename T>
void forward_epilogue(T* y, int64_t r0, int64_t r1, int64_t C, int64_t T_out, T scale, const T* bias,
                      const T* pos_bias, const T* zeros, Activation act) {
  const T* __restrict b = bias != nullptr ? bias : zeros;
  for (int64_t r = r0; r < r1; ++r) {
    T* __restrict row = y + r * C;
    const T* __restrict pb = pos_bias != nullptr ? pos_bias + (r % T_out) * C : zeros;
    if (act == Activation::kRelu) {
      for (int64_t c = 0; c < C; ++c) {
        const T z = row[c] * scale + b[c] + pb[c];
        row[c] = z > T(0) ? z : T(0);
      }
    } else if (act == Activation::kSquare) {
      for (int64_t c = 0; c < C; ++c) {
        const T z = row[c] * scale + b[c] + pb[c];
        row[c] = z * z;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) row[c] = row[c] * scale + b[c] + pb[c];
    }
  }
}

// d = grad * act'(pre-activation) over [B, T_out, C] (saved: the output for relu, the pre-activation for
// square, unused for none). When grad_pos [T_out, C] or grad_bias [C] is given, also their sums of d
// over the batch (and positions), in an order fixed by the shapes alone, so the bits do not depend on
// the thread count.
template <typename T>
void activation_grad(const T* grad, const T* saved, T* d, int64_t B, int64_t T_out, int64_t C, Activation act,
                     T* grad_pos, T* grad_bias) {
  auto one_row = [&](int64_t r, T* acc) {
    const T* __restrict g = grad + r * C;
    T* __restrict o = d + r * C;
    const T* __restrict sv = saved != nullptr ? saved + r * C : nullptr;
    if (act == Activation::kRelu) {
      // Both loads unconditional, so the select compiles to a vector blend instead of a branch.
      for (int64_t c = 0; c < C; ++c) {
        const T gc = g[c], yc = sv[c];
        o[c] = yc > T(0) ? gc : T(0);
      }
    }
    else if (act == Activation::kSquare)
      for (int64_t c = 0; c < C; ++c) o[c] = T(2) * sv[c] * g[c];
    else
      for (int64_t c = 0; c < C; ++c) o[c] = g[c];
    if (acc != nullptr)
      for (int64_t c = 0; c < C; ++c) acc[c] += o[c];
  };
  if (grad_pos == nullptr && grad_bias == nullptr) {
    at::parallel_for(0, B * T_out, row_grain(C), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) one_row(r, nullptr);
    });
    return;
  }
  if (grad_pos == nullptr) {
    // Bias only: fixed blocks of rows (independent of the thread count) each sum their rows while
    // writing d, then the blocks' sums are added in block order.
    constexpr int64_t kBlock = 256;
    const int64_t rows = B * T_out, n_blocks = (rows + kBlock - 1) / kBlock;
    std::vector<T> partial(n_blocks * C, T(0));
    at::parallel_for(0, n_blocks, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t r = k * kBlock; r < std::min(rows, (k + 1) * kBlock); ++r) one_row(r, partial.data() + k * C);
    });
    std::fill(grad_bias, grad_bias + C, T(0));
    for (int64_t k = 0; k < n_blocks; ++k)
      for (int64_t c = 0; c < C; ++c) grad_bias[c] += partial[k * C + c];
    return;
  }
  at::parallel_for(0, T_out, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      T* acc = grad_pos + t * C;
      std::fill(acc, acc + C, T(0));
      for (int64_t b = 0; b < B; ++b) one_row(b * T_out + t, acc);
    }
  });
  if (grad_bias != nullptr) {
    std::fill(grad_bias, grad_bias + C, T(0));
    for (int64_t t = 0; t < T_out; ++t)
      for (int64_t c = 0; c < C; ++c) grad_bias[c] += grad_pos[t * C + c];
  }
}

}  // namespace cpu
}  // namespace rhmfast
