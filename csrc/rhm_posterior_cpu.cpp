// CPU kernel of rhm_posterior: exact belief propagation on the RHM tree, float64.
//
// Layout contract (in full in rhm_posterior.h): rules int32 [L][R][m][s], owned bool [L][R], tokens
// [B][s^L] (uint8/int16/int32/int64), mask bool [B][s^L] or none (true = hidden); outputs posterior
// [B][n_classes], log_prob [B], leaf_posterior [B][s^L][v] (or [0]), all float64. A sample's messages
// live in a buffer of PosteriorShape::messages() doubles, node by node (node_offset()).
//
// Samples are independent: at::parallel_for splits the batch and each thread runs one sample at a time
// through its own buffers. Upward, level L-1 to 0: a node's message for symbol a is the sum over a's m
// rules of the product of its children's messages at the rule's s symbols, times the rule's weight when
// the grammar has weights (uniform ones: the 1/m of each rule choice is added to log_prob once at the end);
// every node below the root is normalised to sum 1 and the log of the sum accumulated. Downward, level 0 to L-1: each rule of each symbol of a node
// sends to child k its weight times the product of the other children's upward messages (prefix and
// suffix products, O(s) per rule), and each child's message is normalised. Work per sample is
// O(n_internal * max(n_classes, v) * m * s), about s^L * v * m.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "rhm_posterior.h"

namespace rhmfast {
namespace {

// The grammar as the loops read it: the symbols that own rules, per level, and their rule rows.
struct Grammar {
  PosteriorShape g;
  const int32_t* rules;                      // [L][R][m][s]
  const double* weights;                     // [L][R][m], or null: uniform
  std::vector<std::vector<int32_t>> owners;  // owners[l]: the level-l symbols (< width(l)) that own rules
  int64_t width(int64_t level) const { return level == 0 ? g.n_classes : g.v; }
  const int32_t* rows(int64_t level, int64_t symbol) const { return rules + ((level * g.R + symbol) * g.m) * g.s; }
  // The row P(rule c | symbol), c < m, of a symbol; null for a uniform grammar (every rule counts 1).
  const double* weight_row(int64_t level, int64_t symbol) const {
    return weights == nullptr ? nullptr : weights + (level * g.R + symbol) * g.m;
  }
};

// Per-thread buffers of one sample.
struct Work {
  std::vector<double> up, down;  // messages of every internal node
  std::vector<int64_t> leaf;     // the sample's tokens, -1 where hidden
  std::vector<double> prefix;    // prefix products of one rule's child messages, [s + 1]
};

// Whether a rule's s-tuple r agrees with the observed leaves below a node (-1: hidden, anything goes).
// A leaf's upward message is 1 where it agrees and 0 elsewhere, so at level L-1 a rule's product of
// child messages is exactly this.
inline bool rule_matches(const int64_t* leaf, const int32_t* r, int64_t s) {
  for (int64_t k = 0; k < s; ++k)
    if (leaf[k] >= 0 && leaf[k] != r[k]) return false;
  return true;
}

// The log of a product of positive factors with few calls to log (one per node took a third of the upward
// pass of small grammars): factors multiply into a running product, folded into the log when it leaves
// [1e-100, 1e100] (factors outside that range go to the log directly, so the product never under- or
// overflows).
class LogProduct {
 public:
  void multiply(double x) {
    if (x < 1e-100 || x > 1e100) {
      log_ += std::log(x);
      return;
    }
    product_ *= x;
    if (product_ < 1e-100 || product_ > 1e100) {
      log_ += std::log(product_);
      product_ = 1;
    }
  }
  double log() const { return log_ + std::log(product_); }

 private:
  double product_ = 1, log_ = 0;
};

// Upward pass; returns log P(evidence), or -inf when the grammar cannot produce it. up ends up holding
// the normalised messages of the nodes below the root and the root's unnormalised one.
double upward(const Grammar& gr, Work& w) {
  const PosteriorShape& g = gr.g;
  const int64_t s = g.s, m = g.m, v = g.v;
  LogProduct sums;
  int64_t count = g.d / s, first = g.n_internal - count;  // the nodes of level L-1
  for (int64_t level = g.L - 1; level >= 0; --level) {
    const int64_t W = gr.width(level);
    const int64_t child_first = first + count;
    for (int64_t j = 0; j < count; ++j) {
      double* out = w.up.data() + node_offset(g, first + j);
      std::fill(out, out + W, 0.0);
      if (level == g.L - 1) {
        const int64_t* leaf = w.leaf.data() + j * s;
        for (const int32_t a : gr.owners[level]) {
          const int32_t* r = gr.rows(level, a);
          const double* p = gr.weight_row(level, a);
          double matches = 0;
          for (int64_t c = 0; c < m; ++c, r += s)
            if (rule_matches(leaf, r, s)) matches += p == nullptr ? 1.0 : p[c];
          out[a] = matches;
        }
      } else {
        const double* child = w.up.data() + node_offset(g, child_first + j * s);  // s messages of v
        for (const int32_t a : gr.owners[level]) {
          const int32_t* r = gr.rows(level, a);
          const double* p = gr.weight_row(level, a);
          double sum = 0;
          for (int64_t c = 0; c < m; ++c, r += s) {
            double product = p == nullptr ? child[r[0]] : p[c] * child[r[0]];
            for (int64_t k = 1; k < s; ++k) product *= child[k * v + r[k]];
            sum += product;
          }
          out[a] = sum;
        }
      }
      double total = 0;
      for (int64_t a = 0; a < W; ++a) total += out[a];
      if (total == 0) return -std::numeric_limits<double>::infinity();  // nothing derives the evidence below
      sums.multiply(total);
      if (level > 0) {
        const double scale = 1.0 / total;
        for (int64_t a = 0; a < W; ++a) out[a] *= scale;
      }
    }
    count /= s;
    first -= count;
  }
  // Each internal node picked one of m rules (weighted grammars: already in the sums), the root one of
  // n_classes labels.
  const double rule_choices =
      gr.weights == nullptr ? static_cast<double>(g.n_internal) * std::log(static_cast<double>(m)) : 0.0;
  return sums.log() - rule_choices - std::log(static_cast<double>(g.n_classes));
}

// Downward pass into leaf_out [d][v] (the sample's leaf_posterior row), after an upward pass that found
// the evidence possible (so every message below has a positive sum).
void downward(const Grammar& gr, Work& w, double* leaf_out) {
  const PosteriorShape& g = gr.g;
  const int64_t s = g.s, m = g.m, v = g.v;
  std::fill(w.down.begin(), w.down.begin() + g.n_classes, 1.0);  // the uniform label prior, up to a constant
  int64_t count = 1, first = 0;
  double* prefix = w.prefix.data();
  for (int64_t level = 0; level < g.L; ++level) {
    const bool leaves = level == g.L - 1;
    const int64_t child_first = first + count;
    for (int64_t j = 0; j < count; ++j) {
      const double* weight = w.down.data() + node_offset(g, first + j);
      // The s children's messages are consecutive, v values each, whether internal nodes or leaves.
      double* target = leaves ? leaf_out + j * s * v : w.down.data() + node_offset(g, child_first + j * s);
      std::fill(target, target + s * v, 0.0);
      if (leaves) {
        // Leaf messages are 0/1: a rule that agrees with the visible leaves sends its whole weight to
        // each hidden leaf, one that does not sends nothing.
        const int64_t* leaf = w.leaf.data() + j * s;
        for (const int32_t a : gr.owners[level]) {
          if (weight[a] == 0) continue;
          const int32_t* r = gr.rows(level, a);
          const double* p = gr.weight_row(level, a);
          for (int64_t c = 0; c < m; ++c, r += s) {
            if (!rule_matches(leaf, r, s)) continue;
            const double sent = p == nullptr ? weight[a] : weight[a] * p[c];
            for (int64_t k = 0; k < s; ++k)
              if (leaf[k] < 0) target[k * v + r[k]] += sent;
          }
        }
        for (int64_t k = 0; k < s; ++k) {
          if (leaf[k] < 0) continue;
          target[k * v + leaf[k]] = 1.0;  // observed: the posterior is the token's one-hot
        }
      } else {
        const double* child = w.up.data() + node_offset(g, child_first + j * s);
        for (const int32_t a : gr.owners[level]) {
          if (weight[a] == 0) continue;
          const int32_t* r = gr.rows(level, a);
          const double* p = gr.weight_row(level, a);
          for (int64_t c = 0; c < m; ++c, r += s) {
            prefix[0] = p == nullptr ? weight[a] : weight[a] * p[c];
            for (int64_t k = 0; k < s; ++k) prefix[k + 1] = prefix[k] * child[k * v + r[k]];
            double suffix = 1;  // product of the messages of children k+1 .. s-1
            for (int64_t k = s - 1; k >= 0; --k) {
              target[k * v + r[k]] += prefix[k] * suffix;
              suffix *= child[k * v + r[k]];
            }
          }
        }
      }
      for (int64_t k = 0; k < s; ++k) {
        double* message = target + k * v;
        double total = 0;
        for (int64_t t = 0; t < v; ++t) total += message[t];
        const double scale = 1.0 / total;  // > 0: the evidence is possible
        for (int64_t t = 0; t < v; ++t) message[t] *= scale;
      }
    }
    first = child_first;
    count *= s;
  }
}

template <typename Token>
void posterior_rows(const Grammar& gr, const Token* tokens, const bool* mask, double* posterior, double* log_prob,
                    double* leaf_posterior, int64_t begin, int64_t end) {
  const PosteriorShape& g = gr.g;
  Work w;
  w.up.resize(g.messages());
  if (leaf_posterior != nullptr) w.down.resize(g.messages());
  w.leaf.resize(g.d);
  w.prefix.resize(g.s + 1);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t b = begin; b < end; ++b) {
    const Token* row = tokens + b * g.d;
    const bool* hidden = mask == nullptr ? nullptr : mask + b * g.d;
    for (int64_t i = 0; i < g.d; ++i) {
      if (hidden != nullptr && hidden[i]) {
        w.leaf[i] = -1;
        continue;
      }
      const int64_t t = static_cast<int64_t>(row[i]);
      if (t < 0 || t >= g.v) fail_visible_token(t, g.v);
      w.leaf[i] = t;
    }
    double* post = posterior + b * g.n_classes;
    double* leaf_out = leaf_posterior == nullptr ? nullptr : leaf_posterior + b * g.d * g.v;
    log_prob[b] = upward(gr, w);
    if (std::isinf(log_prob[b])) {  // impossible evidence: no posterior (NaN rows)
      std::fill(post, post + g.n_classes, nan);
      if (leaf_out != nullptr) std::fill(leaf_out, leaf_out + g.d * g.v, nan);
      continue;
    }
    double total = 0;
    for (int64_t a = 0; a < g.n_classes; ++a) total += w.up[a];
    for (int64_t a = 0; a < g.n_classes; ++a) post[a] = w.up[a] / total;
    if (leaf_out != nullptr) downward(gr, w, leaf_out);
  }
}

PosteriorResult rhm_posterior_cpu(const at::Tensor& rules_in, const at::Tensor& owned_in, const at::Tensor& tokens_in,
                                  const std::optional<at::Tensor>& mask_in, int64_t n_classes, int64_t v,
                                  bool leaves, const std::optional<at::Tensor>& weights_in) {
  TORCH_CHECK_VALUE(rules_in.is_cpu(), "rhmfast: rules must be a CPU tensor here, got ", rules_in.device());
  Grammar gr;
  gr.g = check_posterior_args(rules_in, owned_in, tokens_in, mask_in, n_classes, v, weights_in);
  const PosteriorShape& g = gr.g;
  const at::Tensor rules = rules_in.contiguous(), owned = owned_in.contiguous(), tokens = tokens_in.contiguous();
  const at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  const at::Tensor weights = weights_in.has_value() ? weights_in->contiguous() : at::Tensor();
  gr.rules = rules.data_ptr<int32_t>();
  gr.weights = weights.defined() ? weights.data_ptr<double>() : nullptr;
  const bool* own = owned.data_ptr<bool>();
  gr.owners.resize(g.L);
  for (int64_t level = 0; level < g.L; ++level)
    for (int64_t a = 0; a < gr.width(level); ++a)
      if (own[level * g.R + a]) gr.owners[level].push_back(static_cast<int32_t>(a));

  auto [posterior, log_prob, leaf_posterior] = allocate_posterior_outputs(g, leaves, rules.options());
  const bool* hidden = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  double* post = posterior.data_ptr<double>();
  double* logp = log_prob.data_ptr<double>();
  double* leaf = leaves ? leaf_posterior.data_ptr<double>() : nullptr;
  // About 2^16 multiply-adds per task: small trees get many samples per task, large ones one.
  const int64_t per_sample = std::max<int64_t>(1, g.messages() * g.m * g.s * (leaves ? 2 : 1));
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / per_sample);
  auto run = [&](const auto* token_rows) {
    at::parallel_for(0, g.batch, grain, [&](int64_t b0, int64_t b1) {
      posterior_rows(gr, token_rows, hidden, post, logp, leaf, b0, b1);
    });
  };
  switch (tokens.scalar_type()) {
    case at::kByte: run(tokens.data_ptr<uint8_t>()); break;
    case at::kShort: run(tokens.data_ptr<int16_t>()); break;
    case at::kInt: run(tokens.data_ptr<int32_t>()); break;
    default: run(tokens.data_ptr<int64_t>()); break;  // dtype checked in check_posterior_args
  }
  return {posterior, log_prob, leaf_posterior};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) { m.impl("rhm_posterior", &rhm_posterior_cpu); }

}  // namespace rhmfast
