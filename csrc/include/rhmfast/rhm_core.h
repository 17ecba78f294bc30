// Device-agnostic core of RHM generation, shared by the CPU kernel (rhm_sample_cpu.cpp) and the
// CUDA kernel (rhm_sample_cuda.cu) so the two cannot drift. The PyTorch reference
// (rhmfast/reference/rhm_sample.py) implements the same contract and is tested bit for bit against both.
//
// Data layout contract
//   rules   int32 [L][R][m][s], contiguous. rules[l][a][c] is the s-tuple that rule c of level-l
//           symbol a produces. R = rows per level (max of n_classes and v); rows of symbols that
//           cannot occur are never read.
//   nodes   the internal nodes of the tree are numbered breadth-first: level l (0 = root) starts at
//           node (s^l - 1)/(s - 1), and node j of level l has children j*s .. j*s+s-1 of level l+1.
//   words   sample i draws 32-bit word t from Philox4x32-10 with counter
//           (t / 4, lo32(i), hi32(i), purpose ^ attempt << 8) and key (lo32(seed), hi32(seed)),
//           lane t % 4. Word 0 picks the label, word 1 + node picks that node's rule.
//   choices uniform_below() maps a word to [0, n) exactly (multiply-shift with rejection; a
//           rejected word is redrawn from the same counter with attempt + 1, probability < n/2^32).
//   index   mode "index" maps sample i to datum number pi(i), pi a keyed Feistel permutation of
//           [0, pmax) with cycle-walking; a datum number decodes as label = u / (pmax / n_classes),
//           then the remainder's base-m digits, most significant first, are the nodes' rule choices
//           in breadth-first order (the reference codes' convention).
#pragma once

#include <stdint.h>

#include "rhmfast/hd.h"
#include "rhmfast/philox.h"

namespace rhmfast {

constexpr uint32_t kPurposeIid = 0;
constexpr uint32_t kPurposeFeistel = 1;
constexpr int kFeistelRounds = 6;

struct PhiloxKey {
  uint32_t k0, k1;
};

RHMFAST_HD PhiloxKey key_from_seed(uint64_t seed) {
  PhiloxKey k;
  k.k0 = static_cast<uint32_t>(seed);
  k.k1 = static_cast<uint32_t>(seed >> 32);
  return k;
}

// Word t of sample i's stream; attempt > 0 are the redraws of a rejected word.
RHMFAST_HD uint32_t iid_word(PhiloxKey key, uint64_t i, uint32_t t, uint32_t attempt) {
  const Philox4x32 r = philox4x32_10(t >> 2, static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                                     kPurposeIid ^ (attempt << 8), key.k0, key.k1);
  return r.v[t & 3u];
}

// Exactly uniform integer in [0, n), 1 <= n < 2^32, from a uniform 32-bit word (Lemire's
// multiply-shift with rejection). redraw(attempt) returns a fresh word; it is called with
// probability below n / 2^32.
template <typename Redraw>
RHMFAST_HD uint32_t uniform_below(uint32_t word, uint32_t n, Redraw redraw) {
  uint64_t x = static_cast<uint64_t>(word) * n;
  uint32_t low = static_cast<uint32_t>(x);
  if (low < n) {
    const uint32_t threshold = (0u - n) % n;
    uint32_t attempt = 1;
    while (low < threshold) {
      x = static_cast<uint64_t>(redraw(attempt++)) * n;
      low = static_cast<uint32_t>(x);
    }
  }
  return static_cast<uint32_t>(x >> 32);
}

// Exactly uniform choice in [0, n) for word t of sample i.
RHMFAST_HD uint32_t iid_choice(PhiloxKey key, uint64_t i, uint32_t t, uint32_t word, uint32_t n) {
  return uniform_below(word, n, [&](uint32_t attempt) { return iid_word(key, i, t, attempt); });
}

// ---- index mode: a keyed pseudo-random permutation of [0, size) -------------------------------

struct FeistelDomain {
  uint64_t size;        // permute [0, size), 1 <= size <= 2^63
  uint32_t half_bits;   // the permutation acts on 2 * half_bits bits, 2^(2 half_bits) < 4 size
  uint64_t half_mask;
};

RHMFAST_HD FeistelDomain feistel_domain(uint64_t size) {
  uint32_t bits = 0;
  for (uint64_t x = size - 1; x != 0; x >>= 1) ++bits;
  if (bits < 2) bits = 2;
  bits += bits & 1u;
  FeistelDomain d;
  d.size = size;
  d.half_bits = bits / 2;
  d.half_mask = (uint64_t{1} << d.half_bits) - 1;
  return d;
}

RHMFAST_HD uint64_t feistel_rounds(uint64_t x, const FeistelDomain& d, PhiloxKey key) {
  uint64_t left = x >> d.half_bits, right = x & d.half_mask;
  for (uint32_t r = 0; r < static_cast<uint32_t>(kFeistelRounds); ++r) {
    const uint32_t f = philox4x32_10(static_cast<uint32_t>(right), r, 0u, kPurposeFeistel, key.k0,
                                     key.k1).v[0];
    const uint64_t next = left ^ (static_cast<uint64_t>(f) & d.half_mask);
    left = right;
    right = next;
  }
  return (left << d.half_bits) | right;
}

// Cycle-walking keeps the bijection inside [0, size); fewer than 4 walks on average.
RHMFAST_HD uint64_t permute_index(uint64_t i, const FeistelDomain& d, PhiloxKey key) {
  uint64_t x = feistel_rounds(i, d, key);
  while (x >= d.size) x = feistel_rounds(x, d, key);
  return x;
}

// ---- the tree -----------------------------------------------------------------------------------

struct RhmShape {
  int32_t L, R, m, s;
  int32_t n_classes;
  int64_t n_internal;  // (s^L - 1) / (s - 1)
};

RHMFAST_HD int64_t level_start(int32_t s, int32_t level) {
  int64_t width = 1, start = 0;
  for (int32_t l = 0; l < level; ++l) {
    start += width;
    width *= s;
  }
  return start;
}

RHMFAST_HD const int32_t* rule_children(const int32_t* rules, const RhmShape& g, int32_t level,
                                        int32_t symbol, uint32_t choice) {
  return rules + ((static_cast<int64_t>(level) * g.R + symbol) * g.m + choice) * g.s;
}

// Datum number u -> label and the base-m digits of the remainder, most significant (root) first.
RHMFAST_HD int32_t decode_datum(uint64_t u, uint64_t per_class, const RhmShape& g, uint32_t* digits) {
  uint64_t rest = u % per_class;
  for (int64_t t = g.n_internal - 1; t >= 0; --t) {
    digits[t] = static_cast<uint32_t>(rest % static_cast<uint64_t>(g.m));
    rest /= static_cast<uint64_t>(g.m);
  }
  return static_cast<int32_t>(u / per_class);
}

}  // namespace rhmfast
