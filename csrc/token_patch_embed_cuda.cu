// CUDA kernels of token_patch_embed: the gather-sum forward with its fused epilogue, and the
// deterministic segment sum of the table gradient.
//
// Data layout contract: tokens dense [B, T] (row r = (b, j) reads tokens[r*s .. r*s + s-1]), ids already
// checked to lie in [0, v) by the glue; table [s, v, C] dense (row k*v + t); y and d dense [rows, C];
// grad_table [s*v, C]. Replica form: K replicas of each (tokens dense [K*rows, s]; replica k of the other
// arrays at k times its replica stride), table rows numbered globally k*s*v + row (keys) and output rows
// k*rows + row (order). For the backward the glue stable-sorts the (row, k) pairs by table row k*v + t,
// so each segment of equal keys is summed by one thread per column in a fixed order: no atomics, the
// same bits every run.
#include "rhmfast/cuda_float.cuh"

namespace rhmfast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, typename Tok>
__global__ void token_gather_kernel(const Tok* __restrict__ tokens, const T* __restrict__ table, int64_t table_k,
                                    T* __restrict__ y, int64_t y_k, int64_t n, int64_t rows, int64_t s, int64_t v,
                                    int64_t C, int64_t T_out, typename Acc<T>::type scale, const T* __restrict__ bias,
                                    int64_t bias_k, const T* __restrict__ pos_bias, int64_t pos_k, Act act) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / C, c = i % C, k = r / rows, local = r - k * rows;
    const T* tab = table + k * table_k;
    A z = 0;
    for (int64_t j = 0; j < s; ++j) z += to_acc(tab[(j * v + static_cast<int64_t>(tokens[r * s + j])) * C + c]);
    z *= scale;
    if (bias != nullptr) z += to_acc(bias[k * bias_k + c]);
    if (pos_bias != nullptr) z += to_acc(pos_bias[k * pos_k + (local % T_out) * C + c]);
    y[k * y_k + local * C + c] = from_acc<T>(activate(z, act));
  }
}

// blockIdx.x: segment (up to 2^31 - 1 of them); blockIdx.y and the threads: columns.
template <typename T>
__global__ void segment_sum_kernel(const int64_t* __restrict__ order, const int64_t* __restrict__ starts,
                                   const int64_t* __restrict__ keys, const T* __restrict__ d, int64_t d_k,
                                   int64_t rows_per_k, T* __restrict__ grad, int64_t grad_k, int64_t table_rows,
                                   int64_t C, typename Acc<T>::type scale) {
  using A = typename Acc<T>::type;
  const int64_t g = blockIdx.x;
  const int64_t c = blockIdx.y * int64_t{blockDim.x} + threadIdx.x;
  if (c >= C) return;
  const A sum = ordered_sum<A>(starts[g], starts[g + 1], [&](int64_t i) {
    const int64_t r = order[i], k = r / rows_per_k;
    return to_acc(d[k * d_k + (r - k * rows_per_k) * C + c]);
  });
  const int64_t key = keys[g], k = key / table_rows;
  grad[k * grad_k + (key - k * table_rows) * C + c] = from_acc<T>(sum * scale);
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

cudaError_t launch_token_gather(FloatType type, TokenType token_type, const void* tokens, const void* table,
                                int64_t table_k, void* y, int64_t y_k, int64_t K, int64_t rows, int64_t s, int64_t v,
                                int64_t C, int64_t T_out, double scale, const void* bias, int64_t bias_k,
                                const void* pos_bias, int64_t pos_k, Act act, cudaStream_t stream) {
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    return dispatch_token(token_type, [&](auto token_tag) {
      using Tok = decltype(token_tag);
      const int64_t n = K * rows * C;
      if (n == 0) return cudaSuccess;
      token_gather_kernel<T, Tok><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
          static_cast<const Tok*>(tokens), static_cast<const T*>(table), table_k, static_cast<T*>(y), y_k, n, rows, s,
          v, C, T_out, static_cast<A>(scale), static_cast<const T*>(bias), bias_k, static_cast<const T*>(pos_bias),
          pos_k, act);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_token_segment_sum(FloatType type, const int64_t* order, const int64_t* starts, const int64_t* keys,
                                     int64_t n_segments, const void* d, int64_t d_k, int64_t rows_per_k,
                                     void* grad_table, int64_t grad_k, int64_t table_rows, int64_t C, double scale,
                                     cudaStream_t stream) {
  if (n_segments == 0 || C == 0) return cudaSuccess;
  const int64_t column_blocks = (C + kThreads - 1) / kThreads;
  if (n_segments > 0x7FFFFFFF || column_blocks > 65535) return cudaErrorInvalidConfiguration;
  return dispatch_float(type, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    const dim3 grid(static_cast<unsigned>(n_segments), static_cast<unsigned>(column_blocks));
    segment_sum_kernel<T><<<grid, kThreads, 0, stream>>>(order, starts, keys, static_cast<const T*>(d), d_k,
                                                         rows_per_k, static_cast<T*>(grad_table), grad_k, table_rows,
                                                         C, static_cast<A>(scale));
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace rhmfast
