// Launchers of the patchwise-layer CUDA kernels (patch_conv_cuda.cu, token_patch_embed_cuda.cu). Plain
// C++ and CUDA runtime types only, so the kernels compile with nvcc alone; the torch glue
// (patch_conv_cuda_glue.cpp, token_patch_embed_cuda_glue.cpp) checks arguments, allocates, runs the GEMMs
// (cuBLAS through at::mm) and calls these. Layout contract: csrc/patch_conv.h (channels-last rows
// [rows = B*T_out, C], row r at position r % T_out). All pointers are device pointers, all tensors dense.
// Replica form: K replicas of such arrays, replica k of an array starting `*_k` elements after replica 0
// (each replica dense; the strides may differ from array to array); the solo form is K = 1.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace rhmfast {
namespace cuda {

enum class FloatType { kFloat32, kFloat64, kFloat16, kBFloat16 };
enum class TokenType { kUInt8, kInt16, kInt32, kInt64 };
enum class Act { kNone = 0, kRelu = 1, kSquare = 2 };

// y [K][rows, C] in place: y = act(scale * y + bias[c] + pos_bias[r % T_out, c]) with replica k's y, bias
// [C] and pos_bias [T_out, C] at y + k*y_k, bias + k*bias_k, pos_bias + k*pos_k; bias/pos_bias may be null.
cudaError_t launch_forward_epilogue(FloatType type, void* y, int64_t y_k, int64_t K, int64_t rows, int64_t C,
                                    int64_t T_out, double scale, const void* bias, int64_t bias_k,
                                    const void* pos_bias, int64_t pos_k, Act act, cudaStream_t stream);

// d [K][B*T_out, C] = grad * act'(saved) (saved: output for relu, pre-activation for square, unused for
// none; replica k of each at k * its *_k). If grad_pos [K][T_out, C] or grad_bias [K][C] is non-null, also
// their sums of d over each replica's batch (and positions), in a fixed order (same bits every run), through
// workspace: K*T_out*C accumulators of float (float64 for kFloat64).
cudaError_t launch_activation_grad(FloatType type, const void* grad, int64_t grad_k, const void* saved,
                                   int64_t saved_k, void* d, int64_t d_k, int64_t K, int64_t B, int64_t T_out,
                                   int64_t C, Act act, void* grad_pos, int64_t pos_k, void* grad_bias, int64_t bias_k,
                                   void* workspace, cudaStream_t stream);

// y [K][rows, C] = act(scale * sum_k' table[k'][tokens[r*s + k']] + bias + pos_bias[r % T_out]) per replica:
// tokens dense [K*rows, s]; replica k's table [s, v, C] at table + k*table_k, y at y + k*y_k, bias at
// bias + k*bias_k, pos_bias at pos_bias + k*pos_k. Token ids must already be checked to lie in [0, v).
cudaError_t launch_token_gather(FloatType type, TokenType token_type, const void* tokens, const void* table,
                                int64_t table_k, void* y, int64_t y_k, int64_t K, int64_t rows, int64_t s, int64_t v,
                                int64_t C, int64_t T_out, double scale, const void* bias, int64_t bias_k,
                                const void* pos_bias, int64_t pos_k, Act act, cudaStream_t stream);

// Deterministic table gradient from rows sorted by table row: for segment g (global rows order[starts[g]]
// .. order[starts[g+1]-1] of d, all hitting global table row keys[g]), scale * their sum in that order.
// Global row r of d is local row r % rows_per_k of replica r / rows_per_k (at d + k*d_k); global table row
// key is row key % table_rows of replica key / table_rows of grad_table (at grad_table + k*grad_k, zeroed
// by the caller). order holds global row indices of d, int64.
cudaError_t launch_token_segment_sum(FloatType type, const int64_t* order, const int64_t* starts, const int64_t* keys,
                                     int64_t n_segments, const void* d, int64_t d_k, int64_t rows_per_k,
                                     void* grad_table, int64_t grad_k, int64_t table_rows, int64_t C, double scale,
                                     cudaStream_t stream);

}  // namespace cuda
}  // namespace rhmfast
