// CUDA kernel of rhm_posterior: exact belief propagation on the RHM tree, float64; the same computation
// as the CPU kernel (rhm_posterior_cpu.cpp), equal to it up to float64 rounding.
//
// Data layout contract (in full in csrc/rhm_posterior.h)
//   rules    int32 [L][R][m][s], entries in [0, v); owned bool [L][R]; weights float64 [L][R][m]
//            (P(rule | symbol)) or null (uniform).
//   tokens   [batch][s^L] of 1, 2, 4 or 8-byte integers, visible ones in [0, v) (checked by the glue);
//            mask bool [batch][s^L] (true = hidden) or null.
//   outputs  posterior [batch][n_classes], log_prob [batch], leaf_posterior [batch][s^L][v] or null.
//   scratch  one slot per warp of the grid: the upward messages of every internal node of the sample in
//            flight (root: n_classes doubles, then v per node, breadth-first), then the downward ones.
//
// Parallelisation
//   One warp per sample (grid-stride over samples, a warp's lanes always on the same one, so
//   __syncwarp() orders the levels). Upward, level L-1 to 0: lanes over (node, symbol) pairs, each the
//   sum over the symbol's m rules of the product of the children's messages; then lanes over the level's
//   nodes normalise each to sum 1 and keep the log of the sum, reduced across the warp at the end.
//   Downward, level 0 to L-1: lanes over children, each gathering from every rule of every symbol of its
//   parent the parent's weight times the other children's upward messages (no atomics: a child is one
//   lane's), then normalising. Nothing depends on timing: the bits are the same every run.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "rhmfast/rhm_posterior_launch.h"

namespace rhmfast {
namespace {

constexpr int kWarp = 32;
constexpr int kBlockThreads = 128;
constexpr int kWarpsPerBlock = kBlockThreads / kWarp;
constexpr int64_t kScratchBytes = int64_t{256} << 20;
constexpr unsigned kFullMask = 0xffffffffu;

struct Args {
  const int32_t* rules;
  const bool* owned;
  const double* weights;  // null: uniform
  const bool* mask;
  int64_t batch, L, R, m, s, v, n_classes, d, n_internal;
  double* posterior;
  double* log_prob;
  double* leaf_posterior;
  double* scratch;
  int64_t slot_doubles, messages;
};

__device__ __forceinline__ int64_t node_offset(const Args& a, int64_t node) {
  return node == 0 ? 0 : a.n_classes + (node - 1) * a.v;
}

// Leaf i of sample b: its token, or -1 when hidden.
template <typename Token>
__device__ __forceinline__ int64_t leaf_token(const Args& a, const Token* __restrict__ tokens, int64_t b, int64_t i) {
  const int64_t at = b * a.d + i;
  return a.mask != nullptr && a.mask[at] ? -1 : static_cast<int64_t>(tokens[at]);
}

// Whether rule r agrees with the visible leaves first .. first+s-1 (the upward product at level L-1).
template <typename Token>
__device__ __forceinline__ bool rule_matches(const Args& a, const Token* __restrict__ tokens, int64_t b, int64_t first,
                                             const int32_t* __restrict__ r) {
  for (int64_t k = 0; k < a.s; ++k) {
    const int64_t t = leaf_token(a, tokens, b, first + k);
    if (t >= 0 && t != r[k]) return false;
  }
  return true;
}

// The weight of rule c of a level's symbol: P(rule c | symbol), or 1 for a uniform grammar (its 1/m per node
// is taken out of log_prob at the end).
__device__ __forceinline__ double rule_weight(const Args& a, int64_t level, int64_t symbol, int64_t c) {
  return a.weights == nullptr ? 1.0 : a.weights[(level * a.R + symbol) * a.m + c];
}

__device__ __forceinline__ double warp_sum(double x) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

// Upward pass of sample b into up; returns the warp-wide log of the product of the node sums (lane 0's
// root sum in *root_total), or -INFINITY when some node's sum is 0 (impossible evidence).
template <typename Token>
__device__ __forceinline__ double upward(const Args& a, const Token* __restrict__ tokens, int64_t b, double* up,
                                         int lane, double* root_total) {
  double log_sum = 0;
  int64_t count = a.d / a.s, first = a.n_internal - count;  // the nodes of level L-1
  for (int64_t level = a.L - 1; level >= 0; --level) {
    const int64_t W = level == 0 ? a.n_classes : a.v;
    const int64_t child_first = first + count, items = count * W;
    for (int64_t item = lane; item < items; item += kWarp) {
      const int64_t j = item / W, symbol = item % W;
      double sum = 0;
      if (a.owned[level * a.R + symbol]) {
        const int32_t* r = a.rules + (level * a.R + symbol) * a.m * a.s;
        if (level == a.L - 1) {
          for (int64_t c = 0; c < a.m; ++c, r += a.s)
            if (rule_matches(a, tokens, b, j * a.s, r)) sum += rule_weight(a, level, symbol, c);
        } else {
          const double* child = up + node_offset(a, child_first + j * a.s);
          for (int64_t c = 0; c < a.m; ++c, r += a.s) {
            double product = rule_weight(a, level, symbol, c) * child[r[0]];
            for (int64_t k = 1; k < a.s; ++k) product *= child[k * a.v + r[k]];
            sum += product;
          }
        }
      }
      up[node_offset(a, first + j) + symbol] = sum;
    }
    __syncwarp();
    bool impossible = false;
    for (int64_t j = lane; j < count; j += kWarp) {
      double* out = up + node_offset(a, first + j);
      double total = 0;
      for (int64_t t = 0; t < W; ++t) total += out[t];
      impossible = impossible || total == 0;
      log_sum += log(total);
      if (level == 0) {
        *root_total = total;
      } else if (total > 0) {
        const double scale = 1.0 / total;
        for (int64_t t = 0; t < W; ++t) out[t] *= scale;
      }
    }
    __syncwarp();
    if (__any_sync(kFullMask, impossible)) return -INFINITY;
    count /= a.s;
    first -= count;
  }
  return warp_sum(log_sum);
}

// Downward pass of sample b into its leaf_posterior row, after an upward pass that found the evidence
// possible (every message sum below is positive).
template <typename Token>
__device__ __forceinline__ void downward(const Args& a, const Token* __restrict__ tokens, int64_t b, const double* up,
                                         double* down, int lane) {
  double* leaf_out = a.leaf_posterior + b * a.d * a.v;
  for (int64_t t = lane; t < a.n_classes; t += kWarp) down[t] = 1.0;  // the uniform label prior, up to a constant
  __syncwarp();
  int64_t count = 1, first = 0;
  for (int64_t level = 0; level < a.L; ++level) {
    const bool leaves = level == a.L - 1;
    const int64_t W = level == 0 ? a.n_classes : a.v;
    const int64_t child_first = first + count;
    for (int64_t child = lane; child < count * a.s; child += kWarp) {
      const int64_t j = child / a.s, k = child % a.s;
      double* target = leaves ? leaf_out + child * a.v : down + node_offset(a, child_first + child);
      for (int64_t t = 0; t < a.v; ++t) target[t] = 0;
      if (leaves) {
        const int64_t token = leaf_token(a, tokens, b, child);
        if (token >= 0) {  // observed: the posterior is the token's one-hot
          target[token] = 1.0;
          continue;
        }
      }
      const double* weight = down + node_offset(a, first + j);
      const double* siblings = leaves ? nullptr : up + node_offset(a, child_first + j * a.s);
      for (int64_t symbol = 0; symbol < W; ++symbol) {
        if (!a.owned[level * a.R + symbol] || weight[symbol] == 0) continue;
        const int32_t* r = a.rules + (level * a.R + symbol) * a.m * a.s;
        for (int64_t c = 0; c < a.m; ++c, r += a.s) {
          double others = weight[symbol] * rule_weight(a, level, symbol, c);
          if (leaves) {
            // Leaf messages are 0/1 and this leaf is hidden: all or nothing, as the rule agrees or not.
            if (!rule_matches(a, tokens, b, j * a.s, r)) continue;
          } else {
            for (int64_t i = 0; i < a.s; ++i)
              if (i != k) others *= siblings[i * a.v + r[i]];
          }
          target[r[k]] += others;
        }
      }
      double total = 0;
      for (int64_t t = 0; t < a.v; ++t) total += target[t];
      const double scale = 1.0 / total;
      for (int64_t t = 0; t < a.v; ++t) target[t] *= scale;
    }
    __syncwarp();
    first = child_first;
    count *= a.s;
  }
}

template <typename Token>
__global__ void posterior_kernel(Args a, const Token* __restrict__ tokens) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / kWarp;
  const int64_t warps = int64_t{gridDim.x} * kWarpsPerBlock;
  double* up = a.scratch + warp * a.slot_doubles;
  double* down = up + a.messages;
  for (int64_t b = warp; b < a.batch; b += warps) {
    double root_total = 0;
    const double log_sum = upward(a, tokens, b, up, lane, &root_total);
    double* post = a.posterior + b * a.n_classes;
    if (isinf(log_sum)) {  // impossible evidence: no posterior (NaN rows)
      for (int64_t t = lane; t < a.n_classes; t += kWarp) post[t] = NAN;
      if (lane == 0) a.log_prob[b] = -INFINITY;
      if (a.leaf_posterior != nullptr)
        for (int64_t t = lane; t < a.d * a.v; t += kWarp) a.leaf_posterior[b * a.d * a.v + t] = NAN;
      __syncwarp();
      continue;
    }
    root_total = __shfl_sync(kFullMask, root_total, 0);
    for (int64_t t = lane; t < a.n_classes; t += kWarp) post[t] = up[t] / root_total;
    // Each internal node picked one of m rules (weighted grammars: already in the sums), the root one of
    // n_classes labels.
    const double rule_choices =
        a.weights == nullptr ? static_cast<double>(a.n_internal) * log(static_cast<double>(a.m)) : 0.0;
    if (lane == 0) a.log_prob[b] = log_sum - rule_choices - log(static_cast<double>(a.n_classes));
    if (a.leaf_posterior != nullptr) downward(a, tokens, b, up, down, lane);
    __syncwarp();
  }
}

template <typename Token>
cudaError_t launch(const RhmPosteriorLaunch& p, const Args& a, cudaStream_t stream) {
  const int64_t blocks = p.slots / kWarpsPerBlock;
  posterior_kernel<Token><<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(
      a, static_cast<const Token*>(p.tokens));
  return cudaGetLastError();
}

}  // namespace

int64_t rhm_posterior_cuda_slot_doubles(const RhmPosteriorLaunch& p) {
  const int64_t messages = p.n_classes + (p.n_internal - 1) * p.v;
  return p.leaf_posterior != nullptr ? 2 * messages : messages;
}

int64_t rhm_posterior_cuda_slots(const RhmPosteriorLaunch& p) {
  int device = 0, sms = 1, blocks_per_sm = 1;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    // The token types' instances differ in their loads only: one stands for all.
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, posterior_kernel<uint8_t>, kBlockThreads, 0);
  }
  const int64_t bytes = rhm_posterior_cuda_slot_doubles(p) * static_cast<int64_t>(sizeof(double));
  int64_t slots = int64_t{sms} * (blocks_per_sm > 0 ? blocks_per_sm : 1) * kWarpsPerBlock;
  slots = slots < kScratchBytes / bytes ? slots : kScratchBytes / bytes;
  const int64_t wanted = (p.batch + kWarpsPerBlock - 1) / kWarpsPerBlock * kWarpsPerBlock;
  slots = slots < wanted ? slots : wanted;
  slots = slots / kWarpsPerBlock * kWarpsPerBlock;
  return slots > kWarpsPerBlock ? slots : kWarpsPerBlock;
}

cudaError_t rhm_posterior_cuda_launch(const RhmPosteriorLaunch& p, cudaStream_t stream) {
  if (p.batch < 0 || p.L < 1 || p.s < 2 || p.m < 1 || p.v < 1 || p.n_classes < 1 || p.slots < kWarpsPerBlock ||
      p.slots % kWarpsPerBlock != 0 || p.slots / kWarpsPerBlock > 0x7fffffff)
    return cudaErrorInvalidValue;
  if (p.batch == 0) return cudaSuccess;
  Args a;
  a.rules = p.rules;
  a.owned = p.owned;
  a.weights = p.weights;
  a.mask = p.mask;
  a.batch = p.batch;
  a.L = p.L;
  a.R = p.R;
  a.m = p.m;
  a.s = p.s;
  a.v = p.v;
  a.n_classes = p.n_classes;
  a.d = p.d;
  a.n_internal = p.n_internal;
  a.posterior = p.posterior;
  a.log_prob = p.log_prob;
  a.leaf_posterior = p.leaf_posterior;
  a.scratch = p.scratch;
  a.slot_doubles = rhm_posterior_cuda_slot_doubles(p);
  a.messages = p.n_classes + (p.n_internal - 1) * p.v;
  switch (p.token_bytes) {
    case 1: return launch<uint8_t>(p, a, stream);
    case 2: return launch<int16_t>(p, a, stream);
    case 4: return launch<int32_t>(p, a, stream);
    case 8: return launch<int64_t>(p, a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace rhmfast
