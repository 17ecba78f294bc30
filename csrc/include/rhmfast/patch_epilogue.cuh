// The fused elementwise kernels of the patchwise layers' CUDA paths, shared by patch_conv_cuda.cu and
// locally_connected_cuda.cu: the forward epilogue after the GEMM and the backward's activation gradient and
// per-position sums over the batch. Launched by those files' launchers (patch_conv_launch.h,
// locally_connected_launch.h).
//
// Data layout contract: y, grad, saved, d are dense row-major [rows = B*T_out, C] (channels-last, row r at
// position r % T_out of sample r / T_out); bias [C]; pos_bias and grad_pos [T_out, C] (locally_connected's
// per-patch bias and its gradient are these, with T_out = P); half types are read and written as stored and
// computed in float (float64 in float64). Replica form: K replicas of each, replica k of an array `*_k`
// elements after replica 0 (each replica dense); the solo form is K = 1.
#pragma once

#include "rhmfast/cuda_float.cuh"

namespace rhmfast {
namespace cuda {

// Threads per block of these kernels (grid-stride loops, blocks_for).
constexpr int kEpilogueThreads = 256;

// y = act(scale * y + bias[c] + pos_bias[r % T_out, c]), one thread per element of the K*rows*C elements
// (global row r = i / C, replica r / rows); bias and pos_bias may be null.
template <typename T>
__global__ void forward_epilogue_kernel(T* __restrict__ y, int64_t y_k, int64_t n, int64_t rows, int64_t C,
                                        int64_t T_out, typename Acc<T>::type scale, const T* __restrict__ bias,
                                        int64_t bias_k, const T* __restrict__ pos_bias, int64_t pos_k, Act act) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / C, c = i % C, k = r / rows, local = r - k * rows;
    T* out = y + k * y_k + local * C + c;
    A z = to_acc(*out) * scale;
    if (bias != nullptr) z += to_acc(bias[k * bias_k + c]);
    if (pos_bias != nullptr) z += to_acc(pos_bias[k * pos_k + (local % T_out) * C + c]);
    *out = from_acc<T>(activate(z, act));
  }
}

// d = grad * act'(saved) (saved: the output for relu, the pre-activation for square, unused for none) on
// n = K * per elements; replica k's element j of each array at k * its stride + j.
template <typename T>
__global__ void activation_grad_kernel(const T* __restrict__ grad, int64_t grad_k, const T* __restrict__ saved,
                                       int64_t saved_k, T* __restrict__ d, int64_t d_k, int64_t n, int64_t per,
                                       Act act) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t k = i / per, j = i - k * per;
    const A g = to_acc(grad[k * grad_k + j]);
    A out = g;
    if (act == Act::kRelu) out = to_acc(saved[k * saved_k + j]) > A(0) ? g : A(0);
    else if (act == Act::kSquare) out = A(2) * to_acc(saved[k * saved_k + j]) * g;
    d[k * d_k + j] = from_acc<T>(out);
  }
}

// One thread per (replica k, position t, channel c) sums d over the batch in order: coalesced along c, no
// atomics. The sums go to acc [K, T_out, C] dense (in the accumulation type) and to grad_pos, each when
// non-null.
template <typename T>
__global__ void position_sum_kernel(const T* __restrict__ d, int64_t d_k, int64_t K, int64_t B, int64_t T_out,
                                    int64_t C, typename Acc<T>::type* __restrict__ acc, T* __restrict__ grad_pos,
                                    int64_t pos_k) {
  using A = typename Acc<T>::type;
  const int64_t per = T_out * C;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < K * per; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t k = i / per, j = i - k * per;
    const T* dk = d + k * d_k;
    const A sum = ordered_sum<A>(0, B, [&](int64_t b) { return to_acc(dk[b * per + j]); });
    if (acc != nullptr) acc[i] = sum;
    if (grad_pos != nullptr) grad_pos[k * pos_k + j] = from_acc<T>(sum);
  }
}

}  // namespace cuda
}  // namespace rhmfast
