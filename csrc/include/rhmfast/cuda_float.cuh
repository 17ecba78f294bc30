// Storage/accumulation types of the patchwise-layer CUDA kernels: half types are stored as such and
// computed in float; float64 stays float64.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "rhmfast/patch_conv_launch.h"

namespace rhmfast {
namespace cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename A> __device__ __forceinline__ A activate(A z, Act act) {
  if (act == Act::kRelu) return z > A(0) ? z : A(0);
  if (act == Act::kSquare) return z * z;
  return z;
}

// The sum of term(i) for i in [begin, end), added strictly in index order (so its bits are fixed), with
// the loads of four terms issued before their adds: a thread summing a long segment waits for memory
// once per four terms instead of once per term.
template <typename A, typename Term>
__device__ __forceinline__ A ordered_sum(int64_t begin, int64_t end, Term term) {
  A sum = 0;
  int64_t i = begin;
  for (; i + 4 <= end; i += 4) {
    const A t0 = term(i), t1 = term(i + 1), t2 = term(i + 2), t3 = term(i + 3);
    sum += t0;
    sum += t1;
    sum += t2;
    sum += t3;
  }
  for (; i < end; ++i) sum += term(i);
  return sum;
}

// Calls fn(T{}) with the storage type named by type.
template <typename Fn> cudaError_t dispatch_float(FloatType type, Fn&& fn) {
  switch (type) {
    case FloatType::kFloat32: return fn(float{});
    case FloatType::kFloat64: return fn(double{});
    case FloatType::kFloat16: return fn(__half{});
    case FloatType::kBFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

inline unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 * 32 ? (b > 0 ? b : 1) : 65535 * 32);  // grid-stride loops cover the rest
}

}  // namespace cuda
}  // namespace rhmfast
