// CPU implementations of the patchwise layers (schemas and layout contract: module.cpp, patch_conv.h),
// declared here so each backward can call its forward (square recomputes its pre-activation), and the
// parallel grain their row-wise passes share.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

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

// The fused row passes of the patchwise layers (defined in patch_conv_cpu.cpp for float and double, each with
// an AVX2 clone, cpu_clones.h), shared with locally_connected_cpu.cpp, whose per-patch bias is their
// per-position bias.
// y = act(scale * y + bias + pos_bias[row % T_out]) on rows [r0, r1) of one replica's y [rows, C], one pass
// per row; bias / pos_bias null: none; zeros: C zeros.
template <typename T>
void forward_epilogue(T* y, int64_t r0, int64_t r1, int64_t C, int64_t T_out, T scale, const T* bias,
                      const T* pos_bias, const T* zeros, Activation act);

// d = grad * act'(saved) on the n rows first, first + stride, ... of [rows, C] (a block of consecutive rows,
// or one position across the batch), adding each row of d into acc [C] in row order when acc is given.
// saved: the output for relu, the pre-activation for square, null for none.
template <typename T>
void activation_grad_rows(const T* grad, const T* saved, T* d, int64_t first, int64_t stride, int64_t n, int64_t C,
                          Activation act, T* acc);

// Calls fn(k, local r0, local r1) for the part of global rows [r0, r1) (of K replicas of `rows` rows each,
// rows > 0) that falls in each replica k.
template <typename Fn>
void for_replica_rows(int64_t r0, int64_t r1, int64_t rows, Fn&& fn) {
  while (r0 < r1) {
    const int64_t k = r0 / rows, end = std::min(r1, (k + 1) * rows);
    fn(k, r0 - k * rows, end - k * rows);
    r0 = end;
  }
}

}  // namespace cpu
}  // namespace rhmfast
