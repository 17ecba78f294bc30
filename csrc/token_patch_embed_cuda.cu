// CUDA kernels of token_patch_embed: the gather-sum forward with its fused epilogue, and the
// deterministic segment sum of the table gradient.
//
// Data layout contract: tokens dense [B, T] (row r = (b, j) reads tokens[r*s .. r*s + s-1]), ids already
// checked to lie in [0, v) by the glue; table [s, v, C] dense (row k*v + t); y and d dense [rows, C];
// grad_table [s*v, C]. For the backward the glue stable-sorts the (row, k) pairs by table row k*v + t,
// so each segment of equal keys is summed by one thread per column in a fixed order: no atomics, the
// same bits every run.
#include "rhmfast/cuda_float.cuh"

namespace rhmfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, typename Tok>
__global__ void token_gather_kernel(const Tok* __restrict__ tokens, const T* __restrict__ table, T* __restrict__ y,
                                    int64_t n, int64_t s, int64_t v, int64_t C, int64_t T_out,
                                    typename Acc<T>::type scale, const T* __restrict__ bias,
                                    const T* __restrict__ pos_bias, Act act) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / C, c = i % C;
    A z = 0;
    for (int64_t k = 0; k < s; ++k) z += to_acc(table[(k * v + static_cast<int64_t>(tokens[r * s + k])) * C + c]);
    z *= scale;
    if (bias != nullptr) z += to_acc(bias[c]);
    if (pos_bias != nullptr) z += to_acc(pos_bias[(r % T_out) * C + c]);
    y[i] = from_acc<T>(activate(z, act));
  }
}

// blockIdx.x: segment (up to 2^31 - 1 of them); blockIdx.y and the threads: columns.
template <typename T>
__global__ void segment_sum_kernel(const int64_t* __restrict__ order, const int64_t* __restrict__ starts,
                                   const int64_t* __restrict__ keys, const T* __restrict__ d, T* __restrict__ grad,
                                   int64_t C, typename Acc<T>::type scale) {
  using A = typename Acc<T>::type;
  const int64_t g = blockIdx.x;
  const int64_t c = blockIdx.y * int64_t{blockDim.x} + threadIdx.x;
  if (c >= C) return;
  const A sum = ordered_sum<A>(starts[g], starts[g + 1], [&](int64_t i) { return to_acc(d[order[i] * C + c]); });
  grad[keys[g] * C + c] = from_acc<T>(sum * scale);
}

template <typename Fn> cudaError_t dispatch_token(TokenType type, Fn&& fn) {
  switch (type) {
    case TokenType::kUInt8: return fn(uint8_t{});
    case TokenType::kInt16: return fn(int16_t{});
    case TokenType::kInt32: return fn(int32_t{});
    case TokenType::kInt64: return fn(int64_t{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_token_gather(FloatType type, TokenType token_type, const void* tokens, const void* table, void* y,
                                int64_t rows, int64_t s, int64_t v, int64_t C, int64_t T_out, double scale,
                                const void* bias, const void* pos_bias, Act act, cudaStream_t stream) {
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    return dispatch_token(token_type, [&](auto token_tag) {
      using Tok = decltype(token_tag);
      const int64_t n = rows * C;
      if (n == 0) return cudaSuccess;
      token_gather_kernel<T, Tok><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
          static_cast<const Tok*>(tokens), static_cast<const T*>(table), static_cast<T*>(y), n, s, v, C, T_out,
          static_cast<A>(scale), static_cast<const T*>(bias), static_cast<const T*>(pos_bias), act);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_token_segment_sum(FloatType type, const int64_t* order, const int64_t* starts, const int64_t* keys,
                                     int64_t n_segments, const void* d, void* grad_table, int64_t C, double scale,
                                     cudaStream_t stream) {
  if (n_segments == 0 || C == 0) return cudaSuccess;
  const int64_t column_blocks = (C + kThreads - 1) / kThreads;
  if (n_segments > 0x7FFFFFFF || column_blocks > 65535) return cudaErrorInvalidConfiguration;
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const dim3 grid(static_cast<unsigned>(n_segments), static_cast<unsigned>(column_blocks));
    segment_sum_kernel<T><<<grid, kThreads, 0, stream>>>(order, starts, keys, static_cast<const T*>(d),
                                                         static_cast<T*>(grad_table), C, static_cast<A>(scale));
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace rhmfast
