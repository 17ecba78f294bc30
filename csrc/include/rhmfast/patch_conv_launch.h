// Launchers of the patchwise-layer CUDA kernels (patch_conv_cuda.cu, token_patch_embed_cuda.cu). Plain
// C++ and CUDA runtime types only, so the kernels compile with nvcc alone; the torch glue
// (patch_conv_cuda_glue.cpp, token_patch_embed_cuda_glue.cpp) checks arguments, allocates, runs the GEMMs
// (cuBLAS through at::mm) and calls these. Layout contract: csrc/patch_conv.h (channels-last rows
// [rows = B*T_out, C], row r at position r % T_out). All pointers are device pointers, all tensors dense.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace rhmfast {
namespace cuda {

enum class FloatType { kFloat32, kFloat64, kFloat16, kBFloat16 };
enum class TokenType { kUInt8, kInt16, kInt32, kInt64 };
enum class Act { kNone = 0, kRelu = 1, kSquare = 2 };

// y [rows, C] in place: y = act(scale * y + bias[c] + pos_bias[r % T_out, c]); bias/pos_bias may be null.
cudaError_t launch_forward_epilogue(FloatType type, void* y, int64_t rows, int64_t C, int64_t T_out, double scale,
                                    const void* bias, const void* pos_bias, Act act, cudaStream_t stream);

// d [B*T_out, C] = grad * act'(saved) (saved: output for relu, pre-activation for square, unused for
// none). If grad_pos [T_out, C] or grad_bias [C] is non-null, also their sums of d over the batch (and
// positions), in a fixed order (same bits every run), through workspace: T_out*C accumulators of
// float (float64 for kFloat64).
cudaError_t launch_activation_grad(FloatType type, const void* grad, const void* saved, void* d, int64_t B,
                                   int64_t T_out, int64_t C, Act act, void* grad_pos, void* grad_bias,
                                   void* workspace, cudaStream_t stream);

// y [rows, C] = act(scale * sum_k table[k, tokens[r*s + k]] + bias + pos_bias[r % T_out]); table
// [s, v, C]. Token ids must already be checked to lie in [0, v) (the glue does).
cudaError_t launch_token_gather(FloatType type, TokenType token_type, const void* tokens, const void* table, void* y,
                                int64_t rows, int64_t s, int64_t v, int64_t C, int64_t T_out, double scale,
                                const void* bias, const void* pos_bias, Act act, cudaStream_t stream);

// Deterministic table gradient from rows sorted by table row: grad_table [s*v, C] (zeroed by the caller)
// gets, for segment g (rows order[starts[g]] .. order[starts[g+1]-1] of d, all hitting table row
// keys[g]), scale * their sum in that order. order holds (row index) of d [rows, C], int64.
cudaError_t launch_token_segment_sum(FloatType type, const int64_t* order, const int64_t* starts, const int64_t* keys,
                                     int64_t n_segments, const void* d, void* grad_table, int64_t C, double scale,
                                     cudaStream_t stream);

}  // namespace cuda
}  // namespace rhmfast
