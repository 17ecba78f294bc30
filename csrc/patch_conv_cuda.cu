// CUDA kernels of patch_conv's epilogues; the GEMMs run in cuBLAS from the torch glue
// (patch_conv_cuda_glue.cpp).
//
// Data layout contract: y, grad, saved, d are dense row-major [rows = B*T_out, C] (channels-last, row r
// at position r % T_out of sample r / T_out); bias [C]; pos_bias and grad_pos [T_out, C]; half types are
// read and written as stored and computed in float (float64 in float64).
#include "rhmfast/cuda_float.cuh"

namespace rhmfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void forward_epilogue_kernel(T* __restrict__ y, int64_t n, int64_t C, int64_t T_out,
                                        typename Acc<T>::type scale, const T* __restrict__ bias,
                                        const T* __restrict__ pos_bias, Act act) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = i % C;
    A z = to_acc(y[i]) * scale;
    if (bias != nullptr) z += to_acc(bias[c]);
    if (pos_bias != nullptr) z += to_acc(pos_bias[((i / C) % T_out) * C + c]);
    y[i] = from_acc<T>(activate(z, act));
  }
}

template <typename T>
__global__ void activation_grad_kernel(const T* __restrict__ grad, const T* __restrict__ saved, T* __restrict__ d,
                                       int64_t n, Act act) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const A g = to_acc(grad[i]);
    A out = g;
    if (act == Act::kRelu) out = to_acc(saved[i]) > A(0) ? g : A(0);
    else if (act == Act::kSquare) out = A(2) * to_acc(saved[i]) * g;
    d[i] = from_acc<T>(out);
  }
}

// One thread per (position t, channel c) sums d over the batch in order: coalesced along c, no atomics.
template <typename T>
__global__ void position_sum_kernel(const T* __restrict__ d, int64_t B, int64_t T_out, int64_t C,
                                    typename Acc<T>::type* __restrict__ acc, T* __restrict__ grad_pos) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < T_out * C; i += int64_t{gridDim.x} * blockDim.x) {
    const A sum = ordered_sum<A>(0, B, [&](int64_t b) { return to_acc(d[b * T_out * C + i]); });
    acc[i] = sum;
    if (grad_pos != nullptr) grad_pos[i] = from_acc<T>(sum);
  }
}

template <typename T>
__global__ void bias_sum_kernel(const typename Acc<T>::type* __restrict__ acc, int64_t T_out, int64_t C,
                                T* __restrict__ grad_bias) {
  using A = typename Acc<T>::type;
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < C; c += int64_t{gridDim.x} * blockDim.x) {
    A sum = 0;
    for (int64_t t = 0; t < T_out; ++t) sum += acc[t * C + c];
    grad_bias[c] = from_acc<T>(sum);
  }
}

}  // namespace

cudaError_t launch_forward_epilogue(FloatType type, void* y, int64_t rows, int64_t C, int64_t T_out, double scale,
                                    const void* bias, const void* pos_bias, Act act, cudaStream_t stream) {
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const int64_t n = rows * C;
    if (n == 0) return cudaSuccess;
    forward_epilogue_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
        static_cast<T*>(y), n, C, T_out, static_cast<A>(scale), static_cast<const T*>(bias),
        static_cast<const T*>(pos_bias), act);
    return cudaGetLastError();
  });
}

cudaError_t launch_activation_grad(FloatType type, const void* grad, const void* saved, void* d, int64_t B,
                                   int64_t T_out, int64_t C, Act act, void* grad_pos, void* grad_bias,
                                   void* workspace, cudaStream_t stream) {
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const int64_t n = B * T_out * C;
    if (n > 0) {
      activation_grad_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(grad), static_cast<const T*>(saved), static_cast<T*>(d), n, act);
    }
    if ((grad_pos != nullptr || grad_bias != nullptr) && T_out * C > 0) {
      A* acc = static_cast<A*>(workspace);
      position_sum_kernel<T><<<blocks_for(T_out * C, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(d), B, T_out, C, acc, static_cast<T*>(grad_pos));
      if (grad_bias != nullptr) {
        bias_sum_kernel<T><<<blocks_for(C, kThreads), kThreads, 0, stream>>>(acc, T_out, C,
                                                                             static_cast<T*>(grad_bias));
      }
    } else if (grad_bias != nullptr && C > 0) {
      // No positions (an empty sequence): the bias gradient is an empty sum, all zeros (the bits of
      // 0.0 in every float type), and nothing else would write it.
      const cudaError_t status = cudaMemsetAsync(grad_bias, 0, C * sizeof(T), stream);
      if (status != cudaSuccess) return status;
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace rhmfast
