// Launchers of locally_connected's CUDA kernels (locally_connected_cuda.cu). Plain C++ and CUDA runtime
// types only, so the kernels compile with nvcc alone; the torch glue (locally_connected_cuda_glue.cpp) checks
// arguments, allocates, runs the per-patch GEMMs (strided-batched cuBLAS through at::baddbmm) and calls these.
// Layout contract: csrc/locally_connected.h (y [B, P, C] dense, row (b, p) of the rows [B*P, C] at patch
// p = r % P; bias [P, C]). All pointers are device pointers, all arrays dense. FloatType and Act are
// patch_conv's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "rhmfast/patch_conv_launch.h"

namespace rhmfast {
namespace cuda {

// y [B, P, C] in place: y[b, p, c] = act(y[b, p, c] + bias[p, c]); bias may be null. (The scale is the
// GEMM's alpha.)
cudaError_t launch_locally_connected_epilogue(FloatType type, void* y, int64_t B, int64_t P, int64_t C,
                                              const void* bias, Act act, cudaStream_t stream);

// d [B, P, C] = grad * act'(saved) (saved: the output for relu, the pre-activation for square, unused for
// none). If grad_bias [P, C] is non-null, also grad_bias[p, c] = sum over b of d[b, p, c], added in batch
// order (the same bits every run).
cudaError_t launch_locally_connected_activation_grad(FloatType type, const void* grad, const void* saved, void* d,
                                                     int64_t B, int64_t P, int64_t C, Act act, void* grad_bias,
                                                     cudaStream_t stream);

}  // namespace cuda
}  // namespace rhmfast
