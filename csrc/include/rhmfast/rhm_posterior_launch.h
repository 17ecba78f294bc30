// Host interface of the CUDA kernel of rhm_posterior (rhm_posterior_cuda.cu), called by the torch glue
// (rhm_posterior_cuda_glue.cpp). Plain C++: no torch, no CUDA types beyond the runtime API's. Layout
// contract: csrc/rhm_posterior.h. All pointers are device pointers to dense row-major arrays.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace rhmfast {

struct RhmPosteriorLaunch {
  const int32_t* rules;   // [L][R][m][s], entries in [0, v)
  const bool* owned;      // [L][R]
  const double* weights;  // [L][R][m], P(rule | symbol); null: uniform
  const void* tokens;     // [batch][d], visible ones already checked to lie in [0, v)
  int32_t token_bytes;    // 1 (uint8), 2 (int16), 4 (int32) or 8 (int64)
  const bool* mask;       // [batch][d], true = hidden; null: all visible
  int64_t batch, L, R, m, s, v, n_classes;
  int64_t d, n_internal;  // s^L, (s^L - 1) / (s - 1)
  double* posterior;      // [batch][n_classes]
  double* log_prob;       // [batch]
  double* leaf_posterior; // [batch][d][v]; null: no downward pass
  double* scratch;        // slots * rhm_posterior_cuda_slot_doubles(*this)
  int64_t slots;          // from rhm_posterior_cuda_slots
};

// Doubles of scratch one sample in flight needs: its nodes' upward messages, and the downward ones when
// leaf_posterior is wanted.
int64_t rhm_posterior_cuda_slot_doubles(const RhmPosteriorLaunch& args);

// How many samples the launch keeps in flight (each one warp with its own scratch slot) on the current
// device: enough to fill it, fewer when their scratch would pass kScratchBytes, at least one block's worth.
int64_t rhm_posterior_cuda_slots(const RhmPosteriorLaunch& args);

// Enqueues the work on `stream` of the current device. Returns cudaErrorInvalidValue for arguments outside
// the contract and otherwise the launch status.
cudaError_t rhm_posterior_cuda_launch(const RhmPosteriorLaunch& args, cudaStream_t stream);

}  // namespace rhmfast
