// CPU kernels of patch_conv / patch_conv_backward (layout contract in patch_conv.h).
//
// Forward: one GEMM of the zero-copy view [B*T/s, s*C_in] with weightᵀ (BLAS or oneDNN, gemm_cpu.h),
// written straight into the output, then one fused pass (scale, bias, per-position bias, activation)
// while each row is in cache. Backward: one fused pass d = grad * act' (plus the bias sums),
// then grad_x = scale · d · W and grad_W = scale · dᵀ · X, each only when asked for. The fused passes
// get an AVX2 clone (cpu_clones.h). y, d and grad_x come from empty_output (large_output_cpu.h), so
// large ones reuse freed huge-page mappings instead of faulting in fresh pages every step. A channels-first
// x or grad (PatchConv1d's ncl layout) is first copied channels-last by channels_last_cpu.h's transposes.
//
// Replica form (x [K, B, T, C_in], weight [K, C_out, s*C_in], bias [K, C_out], pos_bias [K, T/s, C_out],
// y [K, B, T/s, C_out]): each replica's GEMMs are the solo path's calls on its slices, written into slices
// of one output, and the fused passes run over all K*B*T/s rows at once (per-replica parameter rows, the
// bias sums of each replica in the solo order), so replica k equals the solo op on its slices bit for bit.
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
namespace cpu {

// (Declared in patch_conv_cpu.h.) zeros [C] stands in for a missing bias (adding 0 and scaling by 1 are exact),
// so every case is the same branch-free loop and vectorises.
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

// The dtypes of the CPU kernels (AT_DISPATCH_FLOATING_TYPES).
template void forward_epilogue<float>(float*, int64_t, int64_t, int64_t, int64_t, float, const float*, const float*,
                                      const float*, Activation);
template void forward_epilogue<double>(double*, int64_t, int64_t, int64_t, int64_t, double, const double*,
                                       const double*, const double*, Activation);
template void activation_grad_rows<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                          Activation, float*);
template void activation_grad_rows<double>(const double*, const double*, double*, int64_t, int64_t, int64_t,
                                           int64_t, Activation, double*);

}  // namespace cpu

namespace {

// One replica's [rows, C] arrays for activation_grad: grad, saved (the output for relu, the pre-activation
// for square, null for none) and d, each `*_k` elements after the previous replica's (any stride(0)).
template <typename T>
struct ReplicaRows {
  const T* grad;
  int64_t grad_k;
  const T* saved;
  int64_t saved_k;
  T* d;
  int64_t d_k;
  RHMFAST_CPU_INLINE const T* grad_of(int64_t k) const { return grad + k * grad_k; }
  RHMFAST_CPU_INLINE const T* saved_of(int64_t k) const { return saved != nullptr ? saved + k * saved_k : nullptr; }
  RHMFAST_CPU_INLINE T* d_of(int64_t k) const { return d + k * d_k; }
};

// d = grad * act'(pre-activation) over K replicas of [B, T_out, C]. When grad_pos [K, T_out, C] (replica
// stride pos_k) or grad_bias [K, C] (stride bias_k) is given, also their sums of d over each replica's
// batch (and positions), in an order fixed by the shapes alone (and the same for a replica as for the solo
// form), so the bits do not depend on the thread count.
template <typename T>
void activation_grad(const ReplicaRows<T>& a, int64_t K, int64_t B, int64_t T_out, int64_t C, Activation act,
                     T* grad_pos, int64_t pos_k, T* grad_bias, int64_t bias_k) {
  const int64_t rows = B * T_out;  // per replica
  if (rows == 0 || C == 0) {
    for (int64_t k = 0; k < K; ++k) {
      if (grad_pos != nullptr) std::fill(grad_pos + k * pos_k, grad_pos + k * pos_k + T_out * C, T(0));
      if (grad_bias != nullptr) std::fill(grad_bias + k * bias_k, grad_bias + k * bias_k + C, T(0));
    }
    return;
  }
  if (grad_pos == nullptr && grad_bias == nullptr) {
    at::parallel_for(0, K * rows, cpu::row_grain(C), [&](int64_t i0, int64_t i1) {
      cpu::for_replica_rows(i0, i1, rows, [&](int64_t k, int64_t r0, int64_t r1) {
        cpu::activation_grad_rows<T>(a.grad_of(k), a.saved_of(k), a.d_of(k), r0, 1, r1 - r0, C, act, nullptr);
      });
    });
    return;
  }
  if (grad_pos == nullptr) {
    // Bias only: fixed blocks of a replica's rows (independent of the thread count) each sum their rows
    // while writing d, then each replica's block sums are added in block order.
    constexpr int64_t kBlock = 256;
    const int64_t n_blocks = (rows + kBlock - 1) / kBlock;
    std::vector<T> partial(K * n_blocks * C, T(0));
    at::parallel_for(0, K * n_blocks, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t k = i / n_blocks, blk = i % n_blocks;
        cpu::activation_grad_rows<T>(a.grad_of(k), a.saved_of(k), a.d_of(k), blk * kBlock, 1,
                                std::min(kBlock, rows - blk * kBlock), C, act, partial.data() + i * C);
      }
    });
    for (int64_t k = 0; k < K; ++k) {
      T* gb = grad_bias + k * bias_k;
      std::fill(gb, gb + C, T(0));
      for (int64_t blk = 0; blk < n_blocks; ++blk)
        for (int64_t c = 0; c < C; ++c) gb[c] += partial[(k * n_blocks + blk) * C + c];
    }
    return;
  }
  at::parallel_for(0, K * T_out, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t k = i / T_out, t = i % T_out;
      T* acc = grad_pos + k * pos_k + t * C;
      std::fill(acc, acc + C, T(0));
      cpu::activation_grad_rows<T>(a.grad_of(k), a.saved_of(k), a.d_of(k), t, T_out, B, C, act, acc);
    }
  });
  if (grad_bias != nullptr) {
    for (int64_t k = 0; k < K; ++k) {
      T* gb = grad_bias + k * bias_k;
      const T* gp = grad_pos + k * pos_k;
      std::fill(gb, gb + C, T(0));
      for (int64_t t = 0; t < T_out; ++t)
        for (int64_t c = 0; c < C; ++c) gb[c] += gp[t * C + c];
    }
  }
}

// x (or an output gradient) with each [T, C] block row-major: the channels-last copy of a solo
// channels-first tensor (channels_last_cpu.h); a replica-form tensor as it is when each replica slice is
// contiguous (the layers' own outputs), else copied (patch_conv.h).
at::Tensor dense_rows(const at::Tensor& x) {
  return x.dim() == 4 ? replica_slices_dense(x) : channels_last_rows_cpu(x);
}

int64_t stride0(const at::Tensor& t) { return t.dim() == 0 ? 0 : t.stride(0); }

}  // namespace

at::Tensor patch_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias_in,
                          const std::optional<at::Tensor>& pos_bias_in, int64_t patch_size, double scale,
                          c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_patch_conv(x, weight, bias_in, pos_bias_in, patch_size);
  const auto bias = contiguous_or_none(bias_in);
  const auto pos_bias = contiguous_or_none(pos_bias_in);
  at::Tensor y;
  if (!g.replica) {
    y = matmul_nt_cpu(patch_rows(channels_last_rows_cpu(x), g), weight, 1.0, {g.B, g.T_out, g.C_out});
  } else {
    y = empty_replicas({g.K, g.B, g.T_out, g.C_out}, x.options());
    const at::Tensor xr = patch_rows(dense_rows(x), g);
    at::Tensor y3 = y.view({g.K, g.rows(), g.C_out});
    for (int64_t k = 0; k < g.K; ++k) {
      at::Tensor yk = y3.select(0, k);
      matmul_nt_cpu_out(xr.select(0, k), weight.select(0, k), 1.0, yk);
    }
  }
  if (scale == 1.0 && !bias && !pos_bias && act == Activation::kNone) return y;
  if (g.all_rows() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "patch_conv_cpu", [&] {
    scalar_t* out = y.data_ptr<scalar_t>();
    const scalar_t* b = bias ? bias->data_ptr<scalar_t>() : nullptr;
    const scalar_t* pb = pos_bias ? pos_bias->data_ptr<scalar_t>() : nullptr;
    const std::vector<scalar_t> zeros(g.C_out, scalar_t(0));
    const int64_t rows = g.rows(), y_k = g.replica ? y.stride(0) : 0;
    const int64_t b_k = g.replica && bias ? bias->stride(0) : 0, pb_k = g.replica && pos_bias ? pos_bias->stride(0) : 0;
    at::parallel_for(0, g.all_rows(), cpu::row_grain(g.C_out), [&](int64_t i0, int64_t i1) {
      cpu::for_replica_rows(i0, i1, rows, [&](int64_t k, int64_t r0, int64_t r1) {
        cpu::forward_epilogue<scalar_t>(out + k * y_k, r0, r1, g.C_out, g.T_out, static_cast<scalar_t>(scale),
                                   b != nullptr ? b + k * b_k : nullptr, pb != nullptr ? pb + k * pb_k : nullptr,
                                   zeros.data(), act);
      });
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
  const at::Tensor x_rows = act == Activation::kSquare || output_mask[1] ? dense_rows(x) : x;
  at::Tensor saved;
  if (act == Activation::kRelu) saved = g.replica ? replica_slices_dense(*out) : out->contiguous();
  if (act == Activation::kSquare) saved = patch_conv_cpu(x_rows, weight, bias, pos_bias, patch_size, scale, "none");
  const at::Tensor grad = g.replica ? replica_slices_dense(grad_out) : channels_last_rows_cpu(grad_out).contiguous();
  auto empty_result = [&](std::initializer_list<int64_t> dims) {
    return g.replica ? empty_replicas(g.with_k(dims), x.options()) : at::empty(dims, x.options());
  };
  at::Tensor grad_bias = output_mask[2] ? empty_result({g.C_out}) : no_grad_placeholder(x);
  at::Tensor grad_pos = output_mask[3] ? empty_result({g.T_out, g.C_out}) : no_grad_placeholder(x);
  at::Tensor d = grad;
  if (act != Activation::kNone || output_mask[2] || output_mask[3]) {
    d = g.replica ? empty_replicas(grad.sizes(), grad.options()) : empty_output(grad.sizes(), grad.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "patch_conv_backward_cpu", [&] {
      const ReplicaRows<scalar_t> a{grad.data_ptr<scalar_t>(), stride0(grad),
                                    saved.defined() ? saved.data_ptr<scalar_t>() : nullptr,
                                    saved.defined() ? stride0(saved) : 0, d.data_ptr<scalar_t>(), stride0(d)};
      activation_grad<scalar_t>(a, g.K, g.B, g.T_out, g.C_out, act,
                                output_mask[3] ? grad_pos.data_ptr<scalar_t>() : nullptr, stride0(grad_pos),
                                output_mask[2] ? grad_bias.data_ptr<scalar_t>() : nullptr, stride0(grad_bias));
    });
  }
  at::Tensor grad_x = no_grad_placeholder(x), grad_w = no_grad_placeholder(x);
  // The GEMMs apply the scale as their alpha (beta = 0: the uninitialised outputs are never read), so no
  // pass over the weight or a result is spent on it. dᵀ · X stays on BLAS: oneDNN was no faster for it.
  if (!g.replica) {
    const at::Tensor d2 = d.view({g.rows(), g.C_out});
    if (output_mask[0]) grad_x = matmul_nt_cpu(d2, weight.t(), scale, {g.B, g.T, g.C_in});
    if (output_mask[1]) {
      grad_w = at::empty({g.C_out, g.s * g.C_in}, x.options());
      at::addmm_out(grad_w, grad_w, d2.t(), patch_rows(x_rows, g), /*beta=*/0, /*alpha=*/scale);
    }
    return {grad_x, grad_w, grad_bias, grad_pos};
  }
  // Replica form: replica k's GEMMs are the solo calls on its slices, written into slices of the results.
  const at::Tensor d3 = d.view({g.K, g.rows(), g.C_out});  // a view: each replica slice is contiguous
  if (output_mask[0]) {
    grad_x = empty_replicas({g.K, g.B, g.T, g.C_in}, x.options());
    at::Tensor gx3 = grad_x.view({g.K, g.rows(), g.s * g.C_in});
    for (int64_t k = 0; k < g.K; ++k) {
      at::Tensor gxk = gx3.select(0, k);
      matmul_nt_cpu_out(d3.select(0, k), weight.select(0, k).t(), scale, gxk);
    }
  }
  if (output_mask[1]) {
    grad_w = empty_replicas({g.K, g.C_out, g.s * g.C_in}, x.options());
    const at::Tensor xr = patch_rows(x_rows, g);
    for (int64_t k = 0; k < g.K; ++k) {
      at::Tensor gwk = grad_w.select(0, k);
      at::addmm_out(gwk, gwk, d3.select(0, k).t(), xr.select(0, k), /*beta=*/0, /*alpha=*/scale);
    }
  }
  return {grad_x, grad_w, grad_bias, grad_pos};
}

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) {
  m.impl("patch_conv", &patch_conv_cpu);
  m.impl("patch_conv_backward", &patch_conv_backward_cpu);
}

}  // namespace rhmfast
