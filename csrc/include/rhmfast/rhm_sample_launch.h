// Host interface of the CUDA kernels of rhm_sample / rhm_decode (rhm_sample_cuda.cu), called by the
// torch glue (rhm_sample_cuda_glue.cpp). Plain C++: no torch, no CUDA types beyond the runtime API's.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "rhmfast/rhm_core.h"

namespace rhmfast {

// Where the rule choices come from: Philox words (mode "iid"), the Feistel-permuted sample index
// (mode "index"), or explicit datum numbers (rhm_decode).
enum class RhmSource : int32_t { kIid, kIndex, kDecode };

constexpr int32_t kRhmMaxLevels = 64;

struct RhmSampleLaunch {
  const int32_t* rules;   // device, int32 [L][R][m][s] contiguous, entries in [0, R)
  RhmShape shape;
  RhmSource source;
  PhiloxKey key;          // iid, index
  uint64_t start;         // iid, index: row j is sample start + j
  FeistelDomain domain;   // index
  uint64_t per_class;     // index, decode: m^n_internal (< 2^63)
  const int64_t* datum;   // decode: device, [n], values in [0, pmax)
  int64_t n;              // rows
  int32_t symbol_bytes;   // 1 (uint8), 2 (int16), 4 (int32) or 8 (int64)
  void* tokens;           // device, [n][s^L] of the symbol type
  int64_t* labels;        // device, [n]
  void* tree[kRhmMaxLevels];  // device, level l: [n][s^l]; all null when the tree is not wanted
};

// True when the kernels can take this grammar: the rule table must have fewer than 2^32 entries
// (rule rows are 32-bit in shared memory).
bool rhm_sample_cuda_supported(const RhmShape& shape);

// Enqueues the work on `stream` of the current device. Returns cudaErrorInvalidValue for arguments
// outside the contract (including an unsupported grammar) and otherwise the launch status.
cudaError_t rhm_sample_cuda_launch(const RhmSampleLaunch& args, cudaStream_t stream);

}  // namespace rhmfast
