// CUDA kernels of locally_connected / locally_connected_backward: the layer's elementwise passes, launched
// over the fused kernels the patchwise layers share (patch_epilogue.cuh). The per-patch products are one
// strided-batched GEMM each (cublasGemmStridedBatchedEx through at::baddbmm), run by the torch glue
// (locally_connected_cuda_glue.cpp) straight on the views below: no copies, no im2col.
//
// Data layout contract (as csrc/locally_connected.h): x [B, T, C_in] channels-last with T = P*s; patch p of
// sample b is the s*C_in values at x + (b*T + p*s)*C_in (column k*C_in + c, k the position in the patch).
// weight [P, C_out, s*C_in] in that (k, c) order; bias [P, C_out]; y, grad, saved, d [B, P, C_out] dense.
// GEMM batch p: x's [B, s*C_in] rows at x + p*s*C_in (row stride T*C_in) times weight[p]ᵀ into y's [B, C_out]
// rows at y + p*C_out (row stride P*C_out). Rows (b, p) of y are the rows r = b*P + p of [B*P, C_out], at
// patch p = r % P: the shared kernels' position r % T_out with T_out = P, so the per-patch bias is their
// per-position bias and the bias gradient their per-position sum over the batch. Half types are read and
// written as stored and computed in float (float64 in float64).
#include "rhmfast/locally_connected_launch.h"
#include "rhmfast/patch_epilogue.cuh"

namespace rhmfast {
namespace cuda {

cudaError_t launch_locally_connected_epilogue(FloatType type, void* y, int64_t B, int64_t P, int64_t C,
                                              const void* bias, Act act, cudaStream_t stream) {
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const int64_t n = B * P * C;
    if (n == 0) return cudaSuccess;
    forward_epilogue_kernel<T><<<blocks_for(n, kEpilogueThreads), kEpilogueThreads, 0, stream>>>(
        static_cast<T*>(y), /*y_k=*/0, n, /*rows=*/B * P, C, /*T_out=*/P, /*scale=*/A(1), /*bias=*/nullptr,
        /*bias_k=*/0, static_cast<const T*>(bias), /*pos_k=*/0, act);
    return cudaGetLastError();
  });
}

cudaError_t launch_locally_connected_activation_grad(FloatType type, const void* grad, const void* saved, void* d,
                                                     int64_t B, int64_t P, int64_t C, Act act, void* grad_bias,
                                                     cudaStream_t stream) {
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = B * P * C;
    if (n > 0) {
      activation_grad_kernel<T><<<blocks_for(n, kEpilogueThreads), kEpilogueThreads, 0, stream>>>(
          static_cast<const T*>(grad), /*grad_k=*/0, static_cast<const T*>(saved), /*saved_k=*/0, static_cast<T*>(d),
          /*d_k=*/0, n, /*per=*/n, act);
    }
    // An empty batch sums to zeros: the kernel's ordered sum over no terms.
    if (grad_bias != nullptr && P * C > 0) {
      position_sum_kernel<T><<<blocks_for(P * C, kEpilogueThreads), kEpilogueThreads, 0, stream>>>(
          static_cast<const T*>(d), /*d_k=*/0, /*K=*/1, B, /*T_out=*/P, C, /*acc=*/nullptr,
          static_cast<T*>(grad_bias), /*pos_k=*/0);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace rhmfast
