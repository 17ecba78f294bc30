// Torch-side contract of the patchwise layers (patch_conv, token_patch_embed, patch_conv_stack),
// shared by the CPU kernels and the CUDA glue: argument checks and the GEMM views, so both devices
// reject the same inputs with the same words.
//
// Layout contract (all ops): activations are channels-last. A layer input x [B, T, C_in] is read as
// the row-major matrix [B*T/s, s*C_in] (row = output position, column = k*C_in + c with k the
// position inside the patch, slowest). weight [C_out, s*C_in] in that (k, c) order; bias [C_out];
// pos_bias [T/s, C_out]; output y [B, T/s, C_out] contiguous. The token layer's table is
// [s, v, C_out]: table[k, t] is the output vector that token t at patch position k contributes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

namespace rhmfast {

enum class Activation { kNone, kRelu, kSquare };

Activation parse_activation(c10::string_view activation);

struct PatchShape {
  int64_t B, T, C_in, s, T_out, C_out;  // for the token layer, C_in is the vocabulary size v
  int64_t rows() const { return B * T_out; }
};

// Checks x [B, T, C_in], weight [C_out, s*C_in], bias [C_out], pos_bias [T/s, C_out]: same device,
// a floating dtype the device supports, T a multiple of s.
PatchShape check_patch_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos_bias, int64_t patch_size);

// Checks tokens [B, T] (uint8/int16/int32/int64) and table [s, v, C_out] (+ biases as above). Token
// values are checked where they are read (CPU kernels) or just before (CUDA glue).
PatchShape check_token_patch_embed(const at::Tensor& tokens, const at::Tensor& table,
                                   const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
                                   int64_t patch_size);

// Checks of a layer's backward: grad_out has the output's shape [B, T_out, C_out] and dtype; out, when
// given, too; relu has the forward output unless the op recomputes its mask (relu_recomputes: the token
// layer, whose pre-activation is a cheap gather); a bias gradient is asked for only when that bias exists.
void check_layer_backward(const at::Tensor& grad_out, const at::Tensor& params, const PatchShape& g, Activation act,
                          const std::optional<at::Tensor>& out, bool relu_recomputes, bool has_bias, bool has_pos_bias,
                          bool want_bias, bool want_pos_bias);

// x as the GEMM operand [B*T/s, s*C_in]: a view when the inner two dims are dense, else a copy.
at::Tensor patch_rows(const at::Tensor& x, const PatchShape& g);

// An optional tensor made contiguous (absent stays absent).
std::optional<at::Tensor> contiguous_or_none(const std::optional<at::Tensor>& t);

// Shape of a gradient an op does not compute (output_mask false): an empty tensor of x's options.
at::Tensor no_grad_placeholder(const at::Tensor& like);

}  // namespace rhmfast
