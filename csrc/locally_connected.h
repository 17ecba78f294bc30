// Torch-side contract of locally_connected, the patchwise layer with untied weights (one weight matrix per
// patch: the layer of the 2024 library's hierarchical LCN), shared by the CPU kernels and the CUDA glue:
// argument checks, the GEMM views and the op's steps (locally_connected.cpp), so both devices reject the same
// inputs with the same words and run the same sequence; each device brings its kernels for the steps
// (LocallyConnectedKernels: locally_connected_cpu.cpp, locally_connected_cuda_glue.cpp).
//
// Layout contract: activations are channels-last, as patch_conv's (patch_conv.h). x [B, T, C_in] with
// T = P*s holds P patches of s positions; patch p of sample b is the s*C_in values x[b, p*s .. p*s+s-1, :]
// (column k*C_in + c, k the position in the patch, slowest). weight [P, C_out, s*C_in] in that (k, c)
// order; bias [P, C_out]; output y [B, P, C_out] contiguous,
//     y[b, p] = act(scale * weight[p] · patch(b, p) + bias[p]).
// The P products are one strided-batched GEMM without copies: patch p's operand is the matrix [B, s*C_in]
// at x + p*s*C_in with row stride T*C_in (when x's [T, C_in] part is dense), its result the matrix
// [B, C_out] at y + p*C_out with row stride P*C_out (batch strides s*C_in, C_out*s*C_in and C_out). As y's
// rows (b, p) sit at position p = r % P of the row index r, the epilogue is patch_conv's with the per-patch
// bias in the place of its per-position bias (pos_bias [T/s, C_out]), and so is the backward's bias sum.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "patch_conv.h"

namespace rhmfast {

// Checks x [B, T, C_in], weight [P, C_out, s*C_in], bias [P, C_out]: same device, a floating dtype the
// device supports (patch_conv's), T = P * patch_size. Returns the shape with T_out = P.
PatchShape check_locally_connected(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, int64_t patch_size);

// x as the batched GEMM operand [P, B, s*C_in] (strides s*C_in, T*C_in, 1): a view when x's [T, C_in] part is
// dense, else a copy.
at::Tensor patch_matrices(const at::Tensor& x, const PatchShape& g);

// One device's kernels for the op's steps.
struct LocallyConnectedKernels {
  // An uninitialised result.
  at::Tensor (*empty)(at::IntArrayRef sizes, const at::TensorOptions& options);
  // x [B, T, C_in] for the GEMM views: made channels-last where the device copies it faster than
  // patch_matrices' reshape would (the CPU's transposes), else as it is.
  at::Tensor (*rows)(const at::Tensor& x);
  // out[p] = scale * a[p] · b[p] for every patch p, written in place into out (never read: beta = 0).
  void (*batched_gemm)(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double scale);
  // y [B, P, C_out] = act(y + bias[p]) in place; bias [P, C_out] contiguous or absent.
  void (*epilogue)(const at::Tensor& y, const std::optional<at::Tensor>& bias, const PatchShape& g, Activation act);
  // d = grad * act'(saved) (saved: the output for relu, the pre-activation for square), all [B, P, C_out]
  // contiguous; with grad_bias [P, C_out], also the sums of d over the batch, in batch order (the same bits
  // every run).
  void (*activation_grad)(const at::Tensor& grad, const at::Tensor& saved, const at::Tensor& d, const PatchShape& g,
                          Activation act, const at::Tensor* grad_bias);
};

// The op (schema in module.cpp) on the kernels k: checks, the GEMMs (the scale their alpha) and the epilogue.
at::Tensor locally_connected_forward(const LocallyConnectedKernels& k, const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, int64_t patch_size, double scale,
                                     c10::string_view activation);

// Its backward: (grad_x, grad_weight, grad_bias), those whose output_mask is false empty. out (the op's output)
// is needed for relu; square recomputes its pre-activation from x.
std::tuple<at::Tensor, at::Tensor, at::Tensor> locally_connected_backward(
    const LocallyConnectedKernels& k, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& out, int64_t patch_size, double scale,
    c10::string_view activation, std::array<bool, 3> output_mask);

// Registers locally_connected and locally_connected_backward for one dispatch key with that device's kernels K.
template <const LocallyConnectedKernels& K>
void register_locally_connected(torch::Library& m) {
  m.impl("locally_connected", +[](const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, int64_t patch_size, double scale,
                                  c10::string_view activation) {
    return locally_connected_forward(K, x, weight, bias, patch_size, scale, activation);
  });
  m.impl("locally_connected_backward",
         +[](const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
             const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& out, int64_t patch_size,
             double scale, c10::string_view activation, std::array<bool, 3> output_mask) {
           return locally_connected_backward(K, grad_out, x, weight, bias, out, patch_size, scale, activation,
                                             output_mask);
         });
}

}  // namespace rhmfast
