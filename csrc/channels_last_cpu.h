// Channels-last copies of channels-first CPU activations.
//
// PatchConv1d(layout="ncl") hands the kernels x.transpose(1, 2) of a contiguous [B, C, T] input, and
// receives the gradient of its output the same way. Tensor::contiguous transposes such a tensor at a
// fraction of copy speed (measured 4-7x slower than a plain copy of the same bytes on the development
// EPYC); this copies it with 8x8 register-tile transposes instead, at close to copy speed (element by
// element without AVX2, or with RHMFAST_CPU_SIMD=scalar).
#pragma once

#include <ATen/core/Tensor.h>

namespace rhmfast {

// x [B, T, C] (CPU) as a tensor whose [T, C] part is row-major (what patch_rows views without a copy).
// x itself when it already is; a blocked transpose into a new contiguous tensor when each x[b] is a
// column-major matrix (stride(1) == 1, stride(2) >= T: a transposed channels-first tensor or a slice of
// one) of float32 or float64; x.contiguous() otherwise.
at::Tensor channels_last_rows_cpu(const at::Tensor& x);

}  // namespace rhmfast
