// CPU kernels of locally_connected / locally_connected_backward (layout contract and the op's steps in
// locally_connected.h).
//
// Forward: one BLAS product per patch (at::addmm_out, the scale as its alpha), each reading its [B, s*C_in]
// rows of x in place and writing its [B, C_out] slice of the output in place (both strided matrices BLAS
// takes as they are), then patch_conv's fused pass (patch_conv_cpu.h; the per-patch bias is its per-position
// bias) while each row is in cache. The products are P times smaller than patch_conv's single one: at the
// library's sizes (width 256) each has at most 2^24 multiply-adds, below where oneDNN was measured faster
// (gemm_cpu.h), so they stay on BLAS. Backward: patch_conv's fused pass d = grad * act' with the bias sums
// (per patch, over the batch, in batch order: the bits do not depend on the thread count), then per patch
// grad_x = scale · d · W and grad_W = scale · dᵀ · X, each only when asked for. A channels-first x (a
// transposed [B, C, T]) is first copied channels-last by channels_last_cpu.h's transposes.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "channels_last_cpu.h"
#include "large_output_cpu.h"
#include "locally_connected.h"
#include "patch_conv_cpu.h"

namespace rhmfast {
namespace {

// One BLAS product per patch, on the strided matrices as they are.
void batched_gemm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double scale) {
  for (int64_t p = 0; p < out.size(0); ++p) {
    at::Tensor op = out.select(0, p);
    at::addmm_out(op, op, a.select(0, p), b.select(0, p), /*beta=*/0, /*alpha=*/scale);
  }
}

void epilogue(const at::Tensor& y, const std::optional<at::Tensor>& bias, const PatchShape& g, Activation act) {
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "locally_connected_cpu", [&] {
    scalar_t* out = y.data_ptr<scalar_t>();
    // The per-patch bias is patch_conv's per-position bias; the scale was the GEMMs' alpha.
    const scalar_t* b = bias ? bias->data_ptr<scalar_t>() : nullptr;
    const std::vector<scalar_t> zeros(g.C_out, scalar_t(0));
    at::parallel_for(0, g.rows(), cpu::row_grain(g.C_out), [&](int64_t r0, int64_t r1) {
      cpu::forward_epilogue<scalar_t>(out, r0, r1, g.C_out, g.T_out, scalar_t(1), nullptr, b, zeros.data(), act);
    });
  });
}

void activation_grad(const at::Tensor& grad, const at::Tensor& saved, const at::Tensor& d, const PatchShape& g,
                     Activation act, const at::Tensor* grad_bias) {
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "locally_connected_backward_cpu", [&] {
    const scalar_t* gr = grad.data_ptr<scalar_t>();
    const scalar_t* sv = saved.defined() ? saved.data_ptr<scalar_t>() : nullptr;
    scalar_t* dd = d.data_ptr<scalar_t>();
    scalar_t* gb = grad_bias != nullptr ? grad_bias->data_ptr<scalar_t>() : nullptr;
    // Patch p's rows p, p + P, ... of every sample; its bias gradient summed over them in batch order.
    at::parallel_for(0, g.T_out, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        scalar_t* acc = gb != nullptr ? gb + p * g.C_out : nullptr;
        if (acc != nullptr) std::fill(acc, acc + g.C_out, scalar_t(0));
        cpu::activation_grad_rows<scalar_t>(gr, sv, dd, p, g.T_out, g.B, g.C_out, act, acc);
      }
    });
  });
}

// y, d and the gradients from empty_output; a channels-first x copied channels-last by a transpose.
constexpr LocallyConnectedKernels kCpu{&empty_output, &channels_last_rows_cpu, &batched_gemm, &epilogue,
                                       &activation_grad};

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) { register_locally_connected<kCpu>(m); }

}  // namespace rhmfast
