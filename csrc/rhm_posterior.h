// Torch-side contract of the rhm_posterior op (exact belief propagation on the RHM tree), shared by the
// CPU kernel (rhm_posterior_cpu.cpp) and the CUDA glue (rhm_posterior_cuda_glue.cpp): argument checks and
// output allocation, so both devices reject the same inputs with the same words.
//
// Layout contract
//   rules   int32 [L][R][m][s] (the sampler's table): rules[l][a][c] is the s-tuple of level-(l+1)
//           symbols that rule c of level-l symbol a produces; every entry in [0, v).
//   owned   bool [L][R]: owned[l][a] says level-l symbol a owns rules (its row of rules is meaningful);
//           a symbol that owns none cannot occur at that level. Level 0 has n_classes symbols, the
//           levels below v; R >= max(n_classes, v).
//   weights float64 [L][R][m] or none: weights[l][a][c] = P(rule c | level-l symbol a), each owned row
//           summing to 1 (Zipf productions); none = uniform, 1/m. The label prior is always uniform.
//   tokens  [B][s^L] uint8/int16/int32/int64; mask bool [B][s^L] or none, true = hidden (marginalised).
//           Visible tokens must lie in [0, v); hidden ones are never read.
//   outputs posterior float64 [B][n_classes] = P(label | visible leaves);
//           log_prob float64 [B] = log P(visible leaves);
//           leaf_posterior float64 [B][s^L][v] = P(leaf i = t | visible leaves) (one-hot for a visible
//           leaf), or an empty [0] when the downward pass is not asked for.
//           Evidence the grammar cannot produce: log_prob = -inf, its posterior and leaf rows NaN.
//   messages the upward message of a node is P(evidence below it | its symbol), the downward one
//           P(evidence outside it, its symbol); both are normalised to sum 1 at every node (the logs of
//           the upward sums are added up into log_prob), so nothing underflows however deep the tree.
//           Internal nodes are numbered breadth-first (node j of level l has children j*s .. j*s+s-1);
//           a sample's messages lie at node_offset(): the root's n_classes values, then v per node.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace rhmfast {

struct PosteriorShape {
  int64_t L, R, m, s, v, n_classes;
  int64_t batch, d, n_internal;  // d = s^L leaves, n_internal = (s^L - 1) / (s - 1)
  // Doubles of one message per internal node: n_classes + (n_internal - 1) * v.
  int64_t messages() const { return n_classes + (n_internal - 1) * v; }
};

// The message of internal node `node` (breadth-first) starts this many doubles into a sample's buffer.
inline int64_t node_offset(const PosteriorShape& g, int64_t node) {
  return node == 0 ? 0 : g.n_classes + (node - 1) * g.v;
}

using PosteriorResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Checks dtypes, shapes, devices and the rule entries (in [0, v)); token values are checked where they
// are read (CPU kernel) or just before the launch (CUDA glue).
PosteriorShape check_posterior_args(const at::Tensor& rules, const at::Tensor& owned, const at::Tensor& tokens,
                                    const std::optional<at::Tensor>& mask, int64_t n_classes, int64_t v,
                                    const std::optional<at::Tensor>& weights);

// Throws the ValueError of a visible token outside [0, v) (the same words on every device).
[[noreturn]] void fail_visible_token(int64_t value, int64_t v);

// posterior [B, n_classes], log_prob [B] and leaf_posterior ([B, s^L, v] when leaves, else [0]), float64.
PosteriorResult allocate_posterior_outputs(const PosteriorShape& g, bool leaves, const at::TensorOptions& device);

}  // namespace rhmfast
