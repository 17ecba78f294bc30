// CPU kernels of patch_conv / patch_conv_backward (layout contract in patch_conv.h).
//
// Forward: one GEMM of the zero-copy view [B*T/s, s*C_in] with weightᵀ (BLAS or oneDNN, gemm_cpu.h),
// written straight into the output, then one fused pass (scale, bias, per-position bias, activation)
// while each row is in cache. Backward: one fused pass d = grad * act' (plus the bias sums),
// then grad_x = scale · d · W and grad_W = scale · dᵀ · X, each only when asked for. The fused passes
// get an AVX2 clone (cpu_clones.h). y, d and grad_x come from empty_output (large_output_cpu.h), so
// large ones reuse freed huge-page mappings instead of faulting in fresh pages every step. A channels-first
// x or grad (PatchConv1d's ncl layout) is first copied channels-last by channels_last_cpu.h's transposes.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <vector>

#include "channels_last_cpu.h"
#include "cpu_clones.h"
#include "gemm_cpu.h"
#include "large_output_cpu.h"
#include "patch_conv_cpu.h"

namespace rhmfast {
namespace {

// y = act(scale * y + bias + pos_bias[row % T_out]) on rows [r0, r1) of y [rows, C], one pass per row.
// zeros [C] stands in for a missing bias (adding 0 and scaling by 1 are exact), so every case is the
// same branch-free loop and vectorises.
template <typename T>
RHMFAST_CPU_CLONES void forward_epilogue(T* y, int64_t r0, int64_t r1, int64_t C, int64_t T_out, T scale,
                                         const T* bias, const T* pos_bias, const T* zeros, Activation act) {
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

// d = grad * act'(saved) on rows `rows[0..n)` (given by their first row and stride, so a block of
// consecutive rows and one position across the batch are the same loop), adding each row of d into acc
// [C] in row order when acc is given.
template <typename T>
RHMFAST_CPU_CLONES void activation_grad_rows(const T* grad, const T* saved, T* d, int64_t first, int64_t stride,
                                             int64_t n, int64_t C, Activation act, T* acc) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = first + i * stride;
    const T* __restrict g = grad + r * C;
    T* __restrict o = d + r * C;
    const T* __restrict sv = saved != nullptr ? saved + r * C : nullptr;
    if (act == Activation::kRelu) {
      // Both loads unconditional, so the select compiles to a vector blend instead of a branch.
      for (int64_t c = 0; c < C; ++c) {
        const T gc = g[c], yc = sv[c];
        o[c] = yc > T(0) ? gc : T(0);
      }
    } else if (act == Activation::kSquare) {
      for (int64_t c = 0; c < C; ++c) o[c] = T(2) * sv[c] * g[c];
    } else {
      for (int64_t c = 0; c < C; ++c) o[c] = g[c];
    }
    if (acc != nullptr) {
      T* __restrict a = acc;
      for (int64_t c = 0; c < C; ++c) a[c] += o[c];
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
  const int64_t rows = B * T_out;
  if (grad_pos == nullptr && grad_bias == nullptr) {
    at::parallel_for(0, rows, cpu::row_grain(C), [&](int64_t r0, int64_t r1) {
      activation_grad_rows<T>(grad, saved, d, r0, 1, r1 - r0, C, act, nullptr);
    });
    return;
  }
  if (grad_pos == nullptr) {
    // Bias only: fixed blocks of rows (independent of the thread count) each sum their rows while
    // writing d, then the blocks' sums are added in block order.
    constexpr int64_t kBlock = 256;
    const int64_t n_blocks = (rows + kBlock - 1) / kBlock;
    std::vector<T> partial(n_blocks * C, T(0));
    at::parallel_for(0, n_blocks, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        activation_grad_rows<T>(grad, saved, d, k * kBlock, 1, std::min(kBlock, rows - k * kBlock), C, act,
                                partial.data() + k * C);
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
      activation_grad_rows<T>(grad, saved, d, t, T_out, B, C, act, acc);
    }
  });
  if (grad_bias != nullptr) {
    std::fill(grad_bias, grad_bias + C, T(0));
    for (int64_t t = 0; t < T_out; ++t)
      for (int64_t c = 0; c < C; ++c) grad_bias[c] += grad_pos[t * C + c];
  }
}

}  // namespace

at::Tensor patch_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_in,
                          const std::optional<at::Tensor>& pos_bias_in, int64_t patch_size, double scale,
                          c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_patch_conv(x, weight, bias_in, pos_bias_in, patch_size);
  const auto bias = contiguous_or_none(bias_in);
  const auto pos_bias = contiguous_or_none(pos_bias_in);
  at::Tensor y = matmul_nt_cpu(patch_rows(channels_last_rows_cpu(x), g), weight, 1.0, {g.B, g.T_out, g.C_out});
  if (scale == 1.0 && !bias && !pos_bias && act == Activation::kNone) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "patch_conv_cpu", [&] {
    scalar_t* out = y.data_ptr<scalar_t>();
    const scalar_t* b = bias ? bias->data_ptr<scalar_t>() : nullptr;
    const scalar_t* pb = pos_bias ? pos_bias->data_ptr<scalar_t>() : nullptr;
    const std::vector<scalar_t> zeros(g.C_out, scalar_t(0));
    at::parallel_for(0, g.rows(), cpu::row_grain(g.C_out), [&](int64_t r0, int64_t r1) {
      forward_epilogue<scalar_t>(out, r0, r1, g.C_out, g.T_out, static_cast<scalar_t>(scale), b, pb,
                                zeros.data(), act);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_conv_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& pos_bias, const std::optional<at::Tensor>& out, int64_t patch_size, double scale,
    c10::string_view activation, std::array<bool, 4> output_mask) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_patch_conv(x, weight, bias, pos_bias, patch_size);
  check_layer_backward(grad_out, weight, g, act, out, /*relu_recomputes=*/false, bias.has_value(), pos_bias.has_value(),
                       output_mask[2], output_mask[3]);
  // An ncl layer's x and output gradient are channels-first: each is copied channels-last once (see
  // channels_last_cpu.h), x only where it is read.
  const at::Tensor x_rows = act == Activation::kSquare || output_mask[1] ? channels_last_rows_cpu(x) : x;
  at::Tensor saved;
  if (act == Activation::kRelu) saved = out->contiguous();
  if (act == Activation::kSquare) saved = patch_conv_cpu(x_rows, weight, bias, pos_bias, patch_size, scale, "none");
  const at::Tensor grad = channels_last_rows_cpu(grad_out).contiguous();
  at::Tensor grad_bias = output_mask[2] ? at::empty({g.C_out}, x.options()) : no_grad_placeholder(x);
  at::Tensor grad_pos = output_mask[3] ? at::empty({g.T_out, g.C_out}, x.options()) : no_grad_placeholder(x);
  at::Tensor d = grad;
  if (act != Activation::kNone || output_mask[2] || output_mask[3]) {
    d = empty_output(grad.sizes(), grad.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "patch_conv_backward_cpu", [&] {
      activation_grad<scalar_t>(grad.data_ptr<scalar_t>(), saved.defined() ? saved.data_ptr<scalar_t>() : nullptr,
                              d.data_ptr<scalar_t>(), g.B, g.T_out, g.C_out, act,
                              output_mask[3] ? grad_pos.data_ptr<scalar_t>() : nullptr,
                              output_mask[2] ? grad_bias.data_ptr<scalar_t>() : nullptr);
    });
  }
  const at::Tensor d2 = d.view({g.rows(), g.C_out});
  at::Tensor grad_x = no_grad_placeholder(x), grad_w = no_grad_placeholder(x);
  // The GEMMs apply the scale as their alpha (beta = 0: the uninitialised outputs are never read), so no
  // pass over the weight or a result is spent on it. dᵀ · X stays on BLAS: oneDNN was no faster for it.
  if (output_mask[0]) grad_x = matmul_nt_cpu(d2, weight.t(), scale, {g.B, g.T, g.C_in});
  if (output_mask[1]) {
    grad_w = at::empty({g.C_out, g.s * g.C_in}, x.options());
    at::addmm_out(grad_w, grad_w, d2.t(), patch_rows(x_rows, g), /*beta=*/0, /*alpha=*/scale);
  }
  return {grad_x, grad_w, grad_bias, grad_pos};
}

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) {
  m.impl("patch_conv", &patch_conv_cpu);
  m.impl("patch_conv_backward", &patch_conv_backward_cpu);
}

}  // namespace rhmfast
