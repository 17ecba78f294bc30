// CPU kernels of rhm_sample (iid / index modes) and rhm_decode; data layout in rhmfast/rhm_core.h.
//
// Samples are independent, so at::parallel_for splits the batch; each sample is expanded top-down
// through two small level buffers, and the leaves go straight into its output row. In iid mode the
// sample's Philox words are made first in one tight loop the compiler vectorises (the hot part), then
// mapped to rule choices.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "rhm_sample.h"

namespace rhmfast {
namespace {

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define RHMFAST_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RHMFAST_TARGET_CLONES
#endif

// Philox words [0, 4 * n_blocks) of sample i. Contiguous counters: vectorises over blocks.
RHMFAST_TARGET_CLONES void fill_words(PhiloxKey key, uint64_t i, int64_t n_blocks, uint32_t* words) {
  const uint32_t lo = static_cast<uint32_t>(i), hi = static_cast<uint32_t>(i >> 32);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(b), lo, hi, kPurposeIid, key.k0, key.k1);
    words[4 * b + 0] = r.v[0];
    words[4 * b + 1] = r.v[1];
    words[4 * b + 2] = r.v[2];
    words[4 * b + 3] = r.v[3];
  }
}

// Rule choices of the n_internal nodes from words 1.. (in place into choices), exact via
// uniform_below: the rare rejected words are found in a second pass.
void words_to_choices(PhiloxKey key, uint64_t i, const uint32_t* words, int64_t n_internal, uint32_t m,
                      uint32_t* choices) {
  uint32_t suspicious = 0;
  for (int64_t t = 0; t < n_internal; ++t) {
    const uint64_t x = static_cast<uint64_t>(words[t + 1]) * m;
    choices[t] = static_cast<uint32_t>(x >> 32);
    suspicious |= static_cast<uint32_t>(static_cast<uint32_t>(x) < m);
  }
  if (suspicious == 0) return;
  for (int64_t t = 0; t < n_internal; ++t)
    choices[t] = iid_choice(key, i, static_cast<uint32_t>(t + 1), words[t + 1], m);
}

struct Job {
  const int32_t* rules;
  RhmShape g;
  SampleMode mode;
  bool decode;             // datum numbers given explicitly
  const int64_t* datum;    // decode: [n]
  PhiloxKey key;
  uint64_t start;
  FeistelDomain domain;    // index mode
  uint64_t per_class;      // index mode / decode
};

template <typename Sym>
void expand_range(const Job& job, int64_t begin, int64_t end, Sym* tokens, int64_t* labels,
                  Sym* const* tree) {
  const RhmShape& g = job.g;
  const int64_t d = level_start(g.s, g.L + 1) - g.n_internal;
  const int64_t n_blocks = (g.n_internal + 1 + 3) / 4;
  std::vector<uint32_t> words(job.decode || job.mode == SampleMode::kIndex ? 0 : 4 * n_blocks);
  std::vector<uint32_t> choices(g.n_internal);
  std::vector<int32_t> cur(d / g.s), next(d / g.s);
  for (int64_t j = begin; j < end; ++j) {
    const uint64_t i = job.start + static_cast<uint64_t>(j);
    int32_t label;
    if (job.decode) {
      label = decode_datum(static_cast<uint64_t>(job.datum[j]), job.per_class, g, choices.data());
    } else if (job.mode == SampleMode::kIndex) {
      label = decode_datum(permute_index(i, job.domain, job.key), job.per_class, g, choices.data());
    } else {
      fill_words(job.key, i, n_blocks, words.data());
      label = static_cast<int32_t>(iid_choice(job.key, i, 0, words[0], static_cast<uint32_t>(g.n_classes)));
      words_to_choices(job.key, i, words.data(), g.n_internal, static_cast<uint32_t>(g.m), choices.data());
    }
    labels[j] = label;
    cur[0] = label;
    Sym* row = tokens + j * d;
    int64_t width = 1, node = 0;
    for (int32_t l = 0; l < g.L; ++l, width *= g.s) {
      if (tree != nullptr) {
        Sym* level_row = tree[l] + j * width;
        for (int64_t k = 0; k < width; ++k) level_row[k] = static_cast<Sym>(cur[k]);
      }
      const int32_t* level_rules = job.rules + static_cast<int64_t>(l) * g.R * g.m * g.s;
      if (l + 1 == g.L) {
        for (int64_t k = 0; k < width; ++k, ++node) {
          const int32_t* child = level_rules + (static_cast<int64_t>(cur[k]) * g.m + choices[node]) * g.s;
          for (int32_t c = 0; c < g.s; ++c) row[k * g.s + c] = static_cast<Sym>(child[c]);
        }
      } else {
        for (int64_t k = 0; k < width; ++k, ++node) {
          const int32_t* child = level_rules + (static_cast<int64_t>(cur[k]) * g.m + choices[node]) * g.s;
          for (int32_t c = 0; c < g.s; ++c) next[k * g.s + c] = child[c];
        }
        cur.swap(next);
      }
    }
  }
}

template <typename Sym>
void run_typed(const Job& job, int64_t n, at::Tensor& tokens, at::Tensor& labels, std::vector<at::Tensor>& tree) {
  std::vector<Sym*> tree_ptrs;
  for (auto& level : tree) tree_ptrs.push_back(level.data_ptr<Sym>());
  Sym* const* tree_arg = tree.empty() ? nullptr : tree_ptrs.data();
  Sym* out = tokens.data_ptr<Sym>();
  int64_t* out_labels = labels.data_ptr<int64_t>();
  // ~64k tokens per task keeps scheduling overhead negligible while balancing the threads.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(tokens.size(1), 1));
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { expand_range<Sym>(job, b, e, out, out_labels, tree_arg); });
}

SampleResult run(const at::Tensor& rules, Job job, int64_t n, at::ScalarType dtype, bool return_tree) {
  job.rules = rules.data_ptr<int32_t>();
  auto [tokens, labels, tree] = allocate_outputs(job.g, n, dtype, return_tree, rules.options());
  switch (dtype) {
    case at::kByte: run_typed<uint8_t>(job, n, tokens, labels, tree); break;
    case at::kShort: run_typed<int16_t>(job, n, tokens, labels, tree); break;
    case at::kInt: run_typed<int32_t>(job, n, tokens, labels, tree); break;
    default: run_typed<int64_t>(job, n, tokens, labels, tree); break;  // dtype checked in check_rules
  }
  return {tokens, labels, tree};
}

SampleResult rhm_sample_cpu(const at::Tensor& rules, int64_t n_classes, int64_t n, int64_t seed,
                            int64_t start, c10::string_view mode, at::ScalarType dtype, bool return_tree) {
  Job job{};
  job.g = check_rules(rules, n_classes, dtype, return_tree);
  job.mode = parse_mode(mode);
  job.key = key_from_seed(static_cast<uint64_t>(seed));
  TORCH_CHECK_VALUE(start >= 0, "rhmfast: start must be >= 0, got ", start);
  TORCH_CHECK_VALUE(n >= 0 && n <= INT64_MAX - start, "rhmfast: start + n must be < 2^63");
  job.start = static_cast<uint64_t>(start);
  if (job.mode == SampleMode::kIndex) {
    job.per_class = per_class_count(job.g);
    TORCH_CHECK_VALUE(job.per_class != 0, "rhmfast: mode='index' needs pmax < 2^63");
    const uint64_t pmax = job.per_class * static_cast<uint64_t>(job.g.n_classes);
    TORCH_CHECK_VALUE(static_cast<uint64_t>(start + n) <= pmax, "rhmfast: mode='index' draws without "
                      "replacement, so start + n must be <= pmax = ", pmax, ", got ", start + n);
    job.domain = feistel_domain(pmax);
  }
  return run(rules, job, n, dtype, return_tree);
}

SampleResult rhm_decode_cpu(const at::Tensor& rules, const at::Tensor& datum, int64_t n_classes,
                            at::ScalarType dtype, bool return_tree) {
  Job job{};
  job.g = check_rules(rules, n_classes, dtype, return_tree);
  job.decode = true;
  TORCH_CHECK_TYPE(datum.scalar_type() == at::kLong, "rhmfast: datum numbers must be int64, got ",
                   datum.scalar_type());
  TORCH_CHECK(datum.dim() == 1, "rhmfast: datum numbers must be 1-D, got shape ", datum.sizes());
  job.per_class = per_class_count(job.g);
  TORCH_CHECK_VALUE(job.per_class != 0, "rhmfast: decoding needs pmax < 2^63");
  const uint64_t pmax = job.per_class * static_cast<uint64_t>(job.g.n_classes);
  at::Tensor numbers = datum.contiguous();
  if (numbers.numel() > 0) {
    const auto [lo, hi] = at::aminmax(numbers);
    TORCH_CHECK_VALUE(lo.item<int64_t>() >= 0 && static_cast<uint64_t>(hi.item<int64_t>()) < pmax,
                      "rhmfast: datum numbers must be in [0, pmax = ", pmax, "), got values in [",
                      lo.item<int64_t>(), ", ", hi.item<int64_t>(), "]");
  }
  job.datum = numbers.data_ptr<int64_t>();
  return run(rules, job, numbers.size(0), dtype, return_tree);
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) {
  m.impl("rhm_sample", &rhm_sample_cpu);
  m.impl("rhm_decode", &rhm_decode_cpu);
}

}  // namespace rhmfast
