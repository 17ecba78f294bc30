// CUDA kernels of patch_conv's epilogues (the shared ones in patch_epilogue.cuh); the GEMMs run in cuBLAS
// from the torch glue (patch_conv_cuda_glue.cpp).
//
// Data layout contract: y, grad, saved, d are dense row-major [rows = B*T_out, C] (channels-last, row r
// at position r % T_out of sample r / T_out); bias [C]; pos_bias and grad_pos [T_out, C]; half types are
// read and written as stored and computed in float (float64 in float64). Replica form: K replicas of each,
// replica k of an array `*_k` elements after replica 0 (each replica dense); the solo form is K = 1.
#include "rhmfast/patch_epilogue.cuh"

namespace rhmfast {
namespace cuda {
namespace {

template <typename T>
__global__ void bias_sum_kernel(const typename Acc<T>::type* __restrict__ acc, int64_t K, int64_t T_out, int64_t C,
                                T* __restrict__ grad_bias, int64_t bias_k) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < K * C; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t k = i / C, c = i - k * C;
    A sum = 0;
    for (int64_t t = 0; t < T_out; ++t) sum += acc[(k * T_out + t) * C + c];
    grad_bias[k * bias_k + c] = from_acc<T>(sum);
  }
}

}  // namespace

cudaError_t launch_forward_epilogue(FloatType type, void* y, int64_t y_k, int64_t K, int64_t rows, int64_t C,
                                    int64_t T_out, double scale, const void* bias, int64_t bias_k,
                                    const void* pos_bias, int64_t pos_k, Act act, cudaStream_t stream) {
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const int64_t n = K * rows * C;
    if (n == 0) return cudaSuccess;
    forward_epilogue_kernel<T><<<blocks_for(n, kEpilogueThreads), kEpilogueThreads, 0, stream>>>(
        static_cast<T*>(y), y_k, n, rows, C, T_out, static_cast<A>(scale), static_cast<const T*>(bias), bias_k,
        static_cast<const T*>(pos_bias), pos_k, act);
    return cudaGetLastError();
  });
}

cudaError_t launch_activation_grad(FloatType type, const void* grad, int64_t grad_k, const void* saved,
                                   int64_t saved_k, void* d, int64_t d_k, int64_t K, int64_t B, int64_t T_out,
                                   int64_t C, Act act, void* grad_pos, int64_t pos_k, void* grad_bias, int64_t bias_k,
                                   void* workspace, cudaStream_t stream) {
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const int64_t per = B * T_out * C, n = K * per;
    if (n > 0) {
      activation_grad_kernel<T><<<blocks_for(n, kEpilogueThreads), kEpilogueThreads, 0, stream>>>(
          static_cast<const T*>(grad), grad_k, static_cast<const T*>(saved), saved_k, static_cast<T*>(d), d_k, n,
          per, act);
    }
    if ((grad_pos != nullptr || grad_bias != nullptr) && K * T_out * C > 0) {
      A* acc = static_cast<A*>(workspace);
      position_sum_kernel<T><<<blocks_for(K * T_out * C, kEpilogueThreads), kEpilogueThreads, 0, stream>>>(
          static_cast<const T*>(d), d_k, K, B, T_out, C, acc, static_cast<T*>(grad_pos), pos_k);
      if (grad_bias != nullptr) {
        bias_sum_kernel<T><<<blocks_for(K * C, kEpilogueThreads), kEpilogueThreads, 0, stream>>>(
            acc, K, T_out, C, static_cast<T*>(grad_bias), bias_k);
      }
    } else if (grad_bias != nullptr && K * C > 0) {
      // No positions (an empty sequence): the bias gradient is an empty sum, all zeros (the bits of
      // 0.0 in every float type), and nothing else would write it.
      for (int64_t k = 0; k < K; ++k) {
        const cudaError_t status =
            cudaMemsetAsync(static_cast<T*>(grad_bias) + k * bias_k, 0, C * sizeof(T), stream);
        if (status != cudaSuccess) return status;
      }
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace rhmfast
