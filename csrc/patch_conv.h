// Torch-side contract of the patchwise layers (patch_conv, token_patch_embed, patch_conv_stack),
// shared by the CPU kernels and the CUDA glue: argument checks and the GEMM views, so both devices
// reject the same inputs with the same words.
//
// Layout contract (all ops): activations are channels-last. A layer input x [B, T, C_in] is read as
// the row-major matrix [B*T/s, s*C_in] (row = output position, column = k*C_in + c with k the
// position inside the patch, slowest). weight [C_out, s*C_in] in that (k, c) order; bias [C_out];
// pos_bias [T/s, C_out]; output y [B, T/s, C_out] contiguous. The token layer's table is
// [s, v, C_out]: table[k, t] is the output vector that token t at patch position k contributes.
// Replica form: every data and parameter tensor gains a leading K (x [K, B, T, C_in], weight
// [K, C_out, s*C_in], bias [K, C_out], pos_bias [K, T/s, C_out], tokens [K, B, T], table [K, s, v, C_out],
// y [K, B, T/s, C_out]): K independent layers in one call, replica k computed exactly as the solo form
// on replica k's slices. The form is chosen by the dims (x 4-D or weight 3-D; tokens 3-D or table 4-D).
// Every tensor a replica-form op returns has each replica's slice contiguous and 64-byte aligned (like a
// fresh solo output: the CPU BLAS's bits depend on its operands' alignment), so stride(0) is rounded up
// to 64 bytes where a replica's size is not a multiple of it (empty_replicas; the tensor is then not
// contiguous as a whole). Inputs may have any stride(0).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <initializer_list>
#include <optional>
#include <vector>

namespace rhmfast {

enum class Activation { kNone, kRelu, kSquare };

Activation parse_activation(c10::string_view activation);

struct PatchShape {
  int64_t B, T, C_in, s, T_out, C_out;  // for the token layer, C_in is the vocabulary size v
  int64_t K = 1;                        // replicas (1 in the solo form)
  bool replica = false;                 // the replica form (leading K dim on every tensor)
  int64_t rows() const { return B * T_out; }  // GEMM rows of one replica
  int64_t all_rows() const { return K * rows(); }
  // Shapes of the output [(K,) B, T_out, C_out] and of a patch layer's input [(K,) B, T, C_in].
  std::vector<int64_t> out_sizes() const { return with_k({B, T_out, C_out}); }
  std::vector<int64_t> in_sizes() const { return with_k({B, T, C_in}); }
  // dims with K in front in the replica form.
  std::vector<int64_t> with_k(std::initializer_list<int64_t> dims) const {
    std::vector<int64_t> v;
    if (replica) v.push_back(K);
    v.insert(v.end(), dims.begin(), dims.end());
    return v;
  }
};

// The argument checks the patchwise layers share (and locally_connected.cpp): t has a floating dtype its
// device supports (float32/float64; CUDA adds float16 and bfloat16); t is on ref's device with ref's dtype;
// patch_size >= 1 divides the input length T; a weight has patch_size * C_in columns.
void check_float_dtype(const at::Tensor& t, const char* name);
void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name);
void check_patch_size(int64_t patch_size, int64_t T);
void check_weight_columns(int64_t cols, int64_t patch_size, int64_t C_in);

// Checks x [B, T, C_in], weight [C_out, s*C_in], bias [C_out], pos_bias [T/s, C_out]: same device,
// a floating dtype the device supports, T a multiple of s; or all of them with a leading K (replica form,
// chosen by x 4-D or weight 3-D; one K for all).
PatchShape check_patch_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos_bias, int64_t patch_size);

// Checks tokens [B, T] (uint8/int16/int32/int64) and table [s, v, C_out] (+ biases as above), or all of
// them with a leading K (replica form, chosen by tokens 3-D or table 4-D). Token
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

// x as the GEMM operand [B*T/s, s*C_in] ([K, B*T/s, s*C_in] in the replica form): a view when the
// inner dims are dense, else a copy.
at::Tensor patch_rows(const at::Tensor& x, const PatchShape& g);

// Elements between replica slices of a tensor the replica-form ops return: per_replica rounded up to 64
// bytes (per_replica itself when K <= 1 or it is a multiple of 64 bytes).
int64_t replica_stride(int64_t K, int64_t per_replica, int64_t element_size);

// An uninitialised replica-form result of shape sizes [K, ...]: each replica slice contiguous, stride(0)
// = replica_stride (large CPU outputs from empty_output, large_output_cpu.h).
at::Tensor empty_replicas(at::IntArrayRef sizes, const at::TensorOptions& options);

// t [K, ...] when each replica slice is contiguous (any stride(0)), else a copy into empty_replicas.
at::Tensor replica_slices_dense(const at::Tensor& t);

// An optional tensor made contiguous (absent stays absent).
std::optional<at::Tensor> contiguous_or_none(const std::optional<at::Tensor>& t);

// Shape of a gradient an op does not compute (output_mask false): an empty tensor of x's options.
at::Tensor no_grad_placeholder(const at::Tensor& like);

}  // namespace rhmfast
