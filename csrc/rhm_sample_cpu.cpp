// CPU kernels of rhm_sample (iid / index modes) and rhm_decode; data layout in rhmfast/rhm_core.h.
//
// Samples are independent, so at::parallel_for splits the batch; each sample is expanded top-down
// through two small level buffers, and the leaves go straight into its output row. In iid mode,
// without the latent tree, several samples are expanded side by side, one per SIMD lane (16 with
// AVX-512, 8 with AVX2: Philox, rule choices and rule look-ups all vectorised) or, for grammars the
// lanes cannot take and on the scalar path, 8 per group in plain code; otherwise the sample's Philox
// words are made first in one tight vectorised loop, then mapped to rule choices.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "rhm_sample.h"

namespace rhmfast {
namespace {

// Philox words of a chunk of (sample, block) pairs: pair f has counter (c0[f], c1[f], c2[f], kPurposeIid)
// and its four words land at words[4 f .. 4 f + 3]. Small trees have only a couple of blocks per
// sample, so the pairs of several samples are processed together.
void fill_words_scalar(PhiloxKey key, const uint32_t* c0, const uint32_t* c1, const uint32_t* c2, int64_t count,
                       uint32_t* words) {
  for (int64_t f = 0; f < count; ++f) {
    const Philox4x32 r = philox4x32_10(c0[f], c1[f], c2[f], kPurposeIid, key.k0, key.k1);
    for (int k = 0; k < 4; ++k) words[4 * f + k] = r.v[k];
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The ten rounds' key words, each repeated across eight lanes: read as memory operands of the rounds'
// xors, they cost nothing, where broadcasting them in every call took a quarter of its instructions.
// (Filled with intrinsics: GCC 12.2 compiled the plain nested loop into code that stored k0 in both.)
struct RoundKeys {
  alignas(32) uint32_t k[10][2][8];
};

__attribute__((target("avx2"))) inline RoundKeys round_keys(PhiloxKey key) {
  RoundKeys rk;
  for (uint32_t r = 0; r < 10; ++r) {
    const int k0 = static_cast<int>(key.k0 + r * 0x9E3779B9u), k1 = static_cast<int>(key.k1 + r * 0xBB67AE85u);
    _mm256_store_si256(reinterpret_cast<__m256i*>(rk.k[r][0]), _mm256_set1_epi32(k0));
    _mm256_store_si256(reinterpret_cast<__m256i*>(rk.k[r][1]), _mm256_set1_epi32(k1));
  }
  return rk;
}

// Ten Philox4x32 rounds on eight counters at once (lane = counter), in place; the compiler's own
// vectorisation of the scalar loop is several times slower (it widens every 32x32->64-bit product to
// 64-bit lanes). The rounds run on the even and the odd lanes separately, each lane in the low half of a
// 64-bit slot: _mm256_mul_epu32 then yields the whole product (lo in the low half, hi one shift away)
// and the high halves are don't-care (the multiplier reads only low halves), so no blends are needed
// until the lanes are merged at the end.
__attribute__((target("avx2"))) inline void philox10_avx2(__m256i& x0, __m256i& x1, __m256i& x2, __m256i& x3,
                                                          const RoundKeys& rk) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  __m256i e[4] = {x0, x1, x2, x3};
  __m256i o[4] = {_mm256_srli_epi64(x0, 32), _mm256_srli_epi64(x1, 32), _mm256_srli_epi64(x2, 32),
                  _mm256_srli_epi64(x3, 32)};
  for (int r = 0; r < 10; ++r) {
    const __m256i key0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(rk.k[r][0]));
    const __m256i key1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(rk.k[r][1]));
    for (__m256i* x : {e, o}) {
      const __m256i p0 = _mm256_mul_epu32(m0, x[0]), p1 = _mm256_mul_epu32(m1, x[2]);
      x[0] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), x[1]), key0);
      x[1] = p1;
      x[2] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), x[3]), key1);
      x[3] = p0;
    }
  }
  x0 = _mm256_blend_epi32(e[0], _mm256_slli_epi64(o[0], 32), 0xAA);
  x1 = _mm256_blend_epi32(e[1], _mm256_slli_epi64(o[1], 32), 0xAA);
  x2 = _mm256_blend_epi32(e[2], _mm256_slli_epi64(o[2], 32), 0xAA);
  x3 = _mm256_blend_epi32(e[3], _mm256_slli_epi64(o[3], 32), 0xAA);
}

// Four rows of eight words -> q[j] holding column j of the rows in its low 128 bits and column j + 4 in
// its high ones (the first two stages of a 4x8 transpose).
__attribute__((target("avx2"))) inline void columns_4x8(__m256i r0, __m256i r1, __m256i r2, __m256i r3, __m256i q[4]) {
  const __m256i a0 = _mm256_unpacklo_epi32(r0, r1), a1 = _mm256_unpackhi_epi32(r0, r1);
  const __m256i a2 = _mm256_unpacklo_epi32(r2, r3), a3 = _mm256_unpackhi_epi32(r2, r3);
  q[0] = _mm256_unpacklo_epi64(a0, a2);
  q[1] = _mm256_unpackhi_epi64(a0, a2);
  q[2] = _mm256_unpacklo_epi64(a1, a3);
  q[3] = _mm256_unpackhi_epi64(a1, a3);
}

__attribute__((target("avx2"))) void fill_words_avx2(PhiloxKey key, const uint32_t* c0, const uint32_t* c1,
                                                      const uint32_t* c2, int64_t count, uint32_t* words) {
  const RoundKeys rk = round_keys(key);
  int64_t f = 0;
  for (; f + 8 <= count; f += 8) {
    __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0 + f));
    __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c1 + f));
    __m256i x2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c2 + f));
    __m256i x3 = _mm256_set1_epi32(static_cast<int>(kPurposeIid));
    philox10_avx2(x0, x1, x2, x3, rk);
    // Transpose lanes (x0..x3 of 8 blocks) into block-major order.
    __m256i u[4];
    columns_4x8(x0, x1, x2, x3, u);
    __m256i* out = reinterpret_cast<__m256i*>(words + 4 * f);
    _mm256_storeu_si256(out + 0, _mm256_permute2x128_si256(u[0], u[1], 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(u[2], u[3], 0x20));
    _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(u[0], u[1], 0x31));
    _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(u[2], u[3], 0x31));
  }
  fill_words_scalar(key, c0 + f, c1 + f, c2 + f, count - f, words + 4 * f);
}

// Sixteen blocks at once with AVX-512 (about 1.4x the AVX2 rate on the machines measured).
__attribute__((target("avx512f"))) inline void mulhilo_avx512(__m512i a, __m512i b, __m512i* hi, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(a, b);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32));
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

__attribute__((target("avx512f"))) void fill_words_avx512(PhiloxKey key, const uint32_t* c0, const uint32_t* c1,
                                                          const uint32_t* c2, int64_t count, uint32_t* words) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  __m512i k0[10], k1[10];
  for (uint32_t r = 0; r < 10; ++r) {
    k0[r] = _mm512_set1_epi32(static_cast<int>(key.k0 + r * 0x9E3779B9u));
    k1[r] = _mm512_set1_epi32(static_cast<int>(key.k1 + r * 0xBB67AE85u));
  }
  int64_t f = 0;
  for (; f + 16 <= count; f += 16) {
    __m512i x0 = _mm512_loadu_si512(c0 + f), x1 = _mm512_loadu_si512(c1 + f), x2 = _mm512_loadu_si512(c2 + f);
    __m512i x3 = _mm512_set1_epi32(static_cast<int>(kPurposeIid));
    for (int r = 0; r < 10; ++r) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo_avx512(m0, x0, &hi0, &lo0);
      mulhilo_avx512(m1, x2, &hi1, &lo1);
      x0 = _mm512_ternarylogic_epi32(hi1, x1, k0[r], 0x96);  // three-way xor
      x1 = lo1;
      x2 = _mm512_ternarylogic_epi32(hi0, x3, k1[r], 0x96);
      x3 = lo0;
    }
    // Transpose: after the unpacks u_q holds blocks q, q+4, q+8, q+12 (one per 128-bit lane).
    const __m512i t0 = _mm512_unpacklo_epi32(x0, x1), t1 = _mm512_unpackhi_epi32(x0, x1);
    const __m512i t2 = _mm512_unpacklo_epi32(x2, x3), t3 = _mm512_unpackhi_epi32(x2, x3);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    const __m512i v0 = _mm512_shuffle_i32x4(u0, u1, 0x44), v1 = _mm512_shuffle_i32x4(u2, u3, 0x44);
    const __m512i v2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
    uint32_t* out = words + 4 * f;
    _mm512_storeu_si512(out, _mm512_shuffle_i32x4(v0, v1, 0x88));
    _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(v0, v1, 0xDD));
    _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(v2, v3, 0x88));
    _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(v2, v3, 0xDD));
  }
  fill_words_scalar(key, c0 + f, c1 + f, c2 + f, count - f, words + 4 * f);
}

#endif

// The widest Philox path this CPU runs; RHMFAST_CPU_SIMD=avx2|scalar caps it, so the tests can hold
// every path to the same bits on one machine.
enum class Simd { kScalar, kAvx2, kAvx512 };

Simd detect_simd() {
  Simd best = Simd::kScalar;
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx2")) best = Simd::kAvx2;
  if (__builtin_cpu_supports("avx512f")) best = Simd::kAvx512;
#endif
  const char* cap = std::getenv("RHMFAST_CPU_SIMD");
  if (cap != nullptr && std::strcmp(cap, "scalar") == 0) return Simd::kScalar;
  if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && best == Simd::kAvx512) return Simd::kAvx2;
  return best;
}

const Simd kSimd = detect_simd();

void fill_words(PhiloxKey key, const uint32_t* c0, const uint32_t* c1, const uint32_t* c2, int64_t count,
                uint32_t* words) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (kSimd == Simd::kAvx512) return fill_words_avx512(key, c0, c1, c2, count, words);
  if (kSimd == Simd::kAvx2) return fill_words_avx2(key, c0, c1, c2, count, words);
#endif
  fill_words_scalar(key, c0, c1, c2, count, words);
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
  const uint32_t* packed_rules;  // [L][R][m], child c of a rule in byte c; null unless R <= 256, s <= 4
  const uint32_t* paired_rules;  // [R][m][m][m], see pair_last_levels; null when not made
#if defined(__x86_64__) && defined(__GNUC__)
  RoundKeys round_keys;    // key's round keys for the AVX2 lanes
#endif
};

// With the patch size known at compile time a rule's children move as one small memcpy (a single
// load and store for s * sizeof(T) <= 8).
template <int S, typename T>
inline void copy_children(T* dst, const T* src, int32_t s) {
  if constexpr (S > 0) {
    std::memcpy(dst, src, S * sizeof(T));
  } else {
    for (int32_t c = 0; c < s; ++c) dst[c] = src[c];
  }
}

// Expands one sample top-down. choice(node) gives each internal node's rule; the leaves go to `row`
// (read from leaf_rules, the last level's table already in the output type),
// the internal levels to tree[l] + j * s^l when requested. S > 0 fixes the patch size at compile time.
// Everything the loops read is copied into locals first: stores through a uint8 `row` may alias any
// memory, which would otherwise force a reload of the grammar's fields after every token.
template <int S, typename Sym, typename Choice>
inline void expand_sample(const Job& job, const Sym* leaf_rules, int32_t label, Choice choice, int32_t* cur,
                          int32_t* next, Sym* row, Sym* const* tree, int64_t j) {
  const int32_t s = S > 0 ? S : job.g.s, L = job.g.L;
  const int64_t m = job.g.m, level_size = static_cast<int64_t>(job.g.R) * m * s;
  const int32_t* level_rules = job.rules;
  cur[0] = label;
  int64_t width = 1, node = 0;
  for (int32_t l = 0; l < L; ++l, width *= s, level_rules += level_size) {
    if (tree != nullptr) {
      Sym* level_row = tree[l] + j * width;
      for (int64_t k = 0; k < width; ++k) level_row[k] = static_cast<Sym>(cur[k]);
    }
    Sym* const leaves = row;
    int32_t* const inner = next;
    const int32_t* const cur_level = cur;
    if (l + 1 == L) {
      for (int64_t k = 0; k < width; ++k) {
        copy_children<S>(leaves + k * s, leaf_rules + (cur_level[k] * m + choice(node + k)) * s, s);
      }
    } else {
      for (int64_t k = 0; k < width; ++k) {
        copy_children<S>(inner + k * s, level_rules + (cur_level[k] * m + choice(node + k)) * s, s);
      }
      std::swap(cur, next);
    }
    node += width;
  }
}

// Sample `row` in iid mode through uniform_below itself, rejection and redraws included: the exact
// path the fast paths fall back to when a word might be rejected (probability < m / 2^32 per word).
template <int S, typename Sym>
void expand_iid_exact(const Job& job, const Sym* leaf_rules, int64_t row, int32_t* cur, int32_t* next, Sym* tokens,
                      int64_t* labels, Sym* const* tree) {
  const RhmShape& g = job.g;
  const uint64_t i = job.start + static_cast<uint64_t>(row);
  const uint32_t m = static_cast<uint32_t>(g.m);
  const int32_t label = static_cast<int32_t>(
      iid_choice(job.key, i, 0, iid_word(job.key, i, 0, 0), static_cast<uint32_t>(g.n_classes)));
  labels[row] = label;
  const int64_t d = level_start(g.s, g.L + 1) - g.n_internal;
  expand_sample<S>(job, leaf_rules, label, [&](int64_t t) {
    const uint32_t word = static_cast<uint32_t>(t + 1);
    return iid_choice(job.key, i, word, iid_word(job.key, i, word, 0), m);
  }, cur, next, tokens + row * d, tree, row);
}

#if defined(__x86_64__) && defined(__GNUC__)
// Sixteen samples side by side, one per AVX-512 lane (iid mode, symbols < 256, s <= 4, no latent
// tree): a Philox block's four words are then word t of sixteen samples at once, and every node's
// rule is a multiply-shift and one gather of its packed children for all sixteen. Measured faster
// than the per-sample path for every tree up to 1023 internal nodes (1.3x to 1.7x); the scratch of
// larger trees would leave the L2 cache.
constexpr int64_t kLaneMaxInternal = 1023;
constexpr int kLanes = 16;

// Philox counter words 1 and 2 (the sample index's halves) of samples first .. first + lanes - 1.
inline void lane_counters(const Job& job, int64_t first, int lanes, uint32_t* lo, uint32_t* hi) {
  for (int lane = 0; lane < lanes; ++lane) {
    const uint64_t i = job.start + static_cast<uint64_t>(first + lane);
    lo[lane] = static_cast<uint32_t>(i);
    hi[lane] = static_cast<uint32_t>(i >> 32);
  }
}

// uint8 leaves of nodes k0 .. k0 + 3 for lanes 8 p .. 8 p + 7 (S = 2, 3, 4): a 4x8 transpose of the
// packed words, then each lane's 4 s bytes squeezed together and stored at once. A scalar copy per node
// and lane took a third of the (8, 4, 3, 4) kernel's time.
template <int S>
__attribute__((target("avx2"))) inline void write_leaf_quad(const uint32_t* leaves, int lanes, int p, int64_t k0,
                                                             uint8_t* rows, int64_t d) {
  const __m256i* row = reinterpret_cast<const __m256i*>(leaves + lanes * k0 + 8 * p);
  const int64_t step = lanes / 8;  // one node further, in vectors
  // q[j]: lane j's four words in the low 128 bits, lane j + 4's in the high ones.
  __m256i q[4];
  columns_4x8(_mm256_loadu_si256(row), _mm256_loadu_si256(row + step), _mm256_loadu_si256(row + 2 * step),
              _mm256_loadu_si256(row + 3 * step), q);
  // Keeps the low S bytes of each word, packed to the front of each 128-bit half.
  const __m256i squeeze = S == 2 ? _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4,
                                                    5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1)
                                 : _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4,
                                                    5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
  for (int j = 0; j < 4; ++j) {
    const __m256i x = S == 4 ? q[j] : _mm256_shuffle_epi8(q[j], squeeze);
    for (int half = 0; half < 2; ++half) {
      const __m128i h = half == 0 ? _mm256_castsi256_si128(x) : _mm256_extracti128_si256(x, 1);
      uint8_t* out = rows + (8 * p + j + 4 * half) * d + k0 * S;
      if constexpr (S == 4) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out), h);
      } else {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out), h);
        if constexpr (S == 3) {
          const int32_t tail = _mm_cvtsi128_si32(_mm_srli_si128(h, 8));
          std::memcpy(out + 8, &tail, 4);
        }
      }
    }
  }
}

// The lane kernels' leaves into the samples' token rows: node k's s children are the low s bytes of
// its packed word leaves[lanes * k + lane] (little-endian x86). lanes is a multiple of 8.
template <int S, typename Sym>
inline void write_leaves(const uint32_t* leaves, int lanes, int64_t first, int64_t last_width, int32_t s, int64_t d,
                         Sym* tokens) {
  int64_t done = 0;  // nodes written for every lane by the vector path
  if constexpr (std::is_same_v<Sym, uint8_t> && S >= 2) {
    for (; done + 4 <= last_width; done += 4)
      for (int p = 0; p < lanes / 8; ++p) write_leaf_quad<S>(leaves, lanes, p, done, tokens + first * d, d);
  }
  for (int lane = 0; lane < lanes; ++lane) {
    Sym* row = tokens + (first + lane) * d;
    for (int64_t k = done; k < last_width; ++k) {
      const uint32_t packed = leaves[lanes * k + lane];
      if constexpr (std::is_same_v<Sym, uint8_t> && S > 0) {
        std::memcpy(row + k * S, &packed, S);
      } else {
        for (int32_t c = 0; c < s; ++c) row[k * s + c] = static_cast<Sym>((packed >> (8 * c)) & 0xFFu);
      }
    }
  }
}

// High words of w * n per lane; lanes whose low word falls below n (where uniform_below might
// reject) are added to *suspect.
__attribute__((target("avx512f"))) inline __m512i mulhi_bounded(__m512i w, __m512i n, __mmask16* suspect) {
  const __m512i even = _mm512_mul_epu32(w, n);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(w, 32), n);
  const __m512i lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *suspect |= _mm512_cmplt_epu32_mask(lo, n);
  return _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// Expands samples first .. first + 15; returns the lanes to redo through the exact path. Reads the
// packed rule table: one gather fetches all s children of a rule (symbols < 256, s <= 4).
// Scratch, 16 entries (one vector) per item: words [4 * n_blocks], level_a / level_b [s^(L-1)],
// leaves [s^(L-1)] (packed children of the last level). Plain arrays with unaligned vector access:
// std::vector<__m512i> drops the alignment.
template <int S, typename Sym>
__attribute__((target("avx512f"))) __mmask16 expand16_avx512(const Job& job, int64_t first, Sym* tokens,
                                                             int64_t* labels, int32_t* words, int32_t* level_a,
                                                             int32_t* level_b, uint32_t* leaves) {
  const RhmShape& g = job.g;
  const int32_t s = S > 0 ? S : g.s, L = g.L;
  const int64_t d = level_start(s, L + 1) - g.n_internal, n_blocks = (g.n_internal + 1 + 3) / 4;
  const int64_t level_size = static_cast<int64_t>(g.R) * g.m;
  alignas(64) uint32_t lo[kLanes], hi[kLanes];
  lane_counters(job, first, kLanes, lo, hi);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int64_t b = 0; b < n_blocks; ++b) {
    __m512i x0 = _mm512_set1_epi32(static_cast<int>(b)), x1 = _mm512_load_si512(lo), x2 = _mm512_load_si512(hi);
    __m512i x3 = _mm512_set1_epi32(static_cast<int>(kPurposeIid));
    uint32_t k0 = job.key.k0, k1 = job.key.k1;
    for (int r = 0; r < 10; ++r, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo_avx512(m0, x0, &hi0, &lo0);
      mulhilo_avx512(m1, x2, &hi1, &lo1);
      x0 = _mm512_ternarylogic_epi32(hi1, x1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);
      x1 = lo1;
      x2 = _mm512_ternarylogic_epi32(hi0, x3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
      x3 = lo0;
    }
    _mm512_storeu_si512(words + kLanes * (4 * b), x0);
    _mm512_storeu_si512(words + kLanes * (4 * b + 1), x1);
    _mm512_storeu_si512(words + kLanes * (4 * b + 2), x2);
    _mm512_storeu_si512(words + kLanes * (4 * b + 3), x3);
  }
  __mmask16 suspect = 0;
  const __m512i label = mulhi_bounded(_mm512_loadu_si512(words), _mm512_set1_epi32(g.n_classes), &suspect);
  _mm512_storeu_si512(labels + first, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(label)));
  _mm512_storeu_si512(labels + first + 8, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(label, 1)));
  const __m512i vm = _mm512_set1_epi32(g.m), byte = _mm512_set1_epi32(0xFF);
  int32_t* cur = level_a;
  int32_t* next = level_b;
  _mm512_storeu_si512(cur, label);
  const uint32_t* level_rules = job.packed_rules;
  int64_t width = 1, node = 1;
  for (int32_t l = 0; l < L; ++l, node += width, width *= s, level_rules += level_size) {
    const bool last = l + 1 == L;
    for (int64_t k = 0; k < width; ++k) {
      const __m512i choice = mulhi_bounded(_mm512_loadu_si512(words + kLanes * (node + k)), vm, &suspect);
      const __m512i row = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_loadu_si512(cur + kLanes * k), vm), choice);
      const __m512i children = _mm512_i32gather_epi32(row, level_rules, 4);
      if (last) {
        _mm512_storeu_si512(leaves + kLanes * k, children);
      } else {
        for (int32_t c = 0; c < s; ++c) {
          _mm512_storeu_si512(next + kLanes * (k * s + c), _mm512_and_si512(_mm512_srli_epi32(children, 8 * c), byte));
        }
      }
    }
    std::swap(cur, next);
  }
  write_leaves<S, Sym>(leaves, kLanes, first, d / s, s, d, tokens);
  return suspect;
}

__attribute__((target("avx2"))) inline __m256i load8(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}
__attribute__((target("avx2"))) inline void store8(void* p, __m256i x) {
  _mm256_storeu_si256(static_cast<__m256i*>(p), x);
}

// mulhi_bounded with eight lanes: AVX2 has no unsigned compare and no mask registers, so lo < n is a
// signed compare after flipping both sign bits, and the suspect lanes come back as a byte.
__attribute__((target("avx2"))) inline __m256i mulhi_bounded_avx2(__m256i w, __m256i n, uint32_t* suspect) {
  const __m256i even = _mm256_mul_epu32(w, n);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(w, 32), n);
  const __m256i lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i below = _mm256_cmpgt_epi32(_mm256_xor_si256(n, sign), _mm256_xor_si256(lo, sign));
  *suspect |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(below)));
  return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// The same lane-per-sample expansion for CPUs without AVX-512 (same conditions), in P groups of eight
// AVX2 lanes: with P = 2 it takes sixteen samples and the AVX-512 path's scratch layout, and the second
// group's gathers overlap the first's.
// Pow2 (m a power of two): a word's choice is its top log2(m) bits, which uniform_below never rejects
// (its threshold 2^32 mod m is 0), and a rule's row is (symbol << log2 m) | choice. With paired rules as
// well (s = 2, see pair_last_levels) the row of a node of level L - 2 takes its two children's choices
// too, and one gather yields its four leaves.
template <int P, int S, bool Pow2, typename Sym>
__attribute__((target("avx2"))) uint32_t expand_avx2(const Job& job, int64_t first, Sym* tokens, int64_t* labels,
                                                     int32_t* words, int32_t* level_a, int32_t* level_b,
                                                     uint32_t* leaves) {
  constexpr int kWidth = 8 * P;  // lanes per item in the scratch
  static_assert(kWidth <= kLanes, "the scratch holds kLanes lanes per item");
  const RhmShape& g = job.g;
  const int32_t s = S > 0 ? S : g.s, L = g.L;
  const int64_t d = level_start(s, L + 1) - g.n_internal, n_blocks = (g.n_internal + 1 + 3) / 4;
  const int64_t level_size = static_cast<int64_t>(g.R) * g.m;
  alignas(32) uint32_t lo[kWidth], hi[kWidth];
  lane_counters(job, first, kWidth, lo, hi);
  for (int64_t b = 0; b < n_blocks; ++b) {
    for (int p = 0; p < P; ++p) {
      __m256i x0 = _mm256_set1_epi32(static_cast<int>(b));
      __m256i x1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo + 8 * p));
      __m256i x2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi + 8 * p));
      __m256i x3 = _mm256_set1_epi32(static_cast<int>(kPurposeIid));
      philox10_avx2(x0, x1, x2, x3, job.round_keys);
      int32_t* out = words + kWidth * 4 * b + 8 * p;
      store8(out, x0);
      store8(out + kWidth, x1);
      store8(out + 2 * kWidth, x2);
      store8(out + 3 * kWidth, x3);
    }
  }
  uint32_t suspect = 0;
  const __m256i n_classes = _mm256_set1_epi32(g.n_classes);
  for (int p = 0; p < P; ++p) {
    uint32_t lanes = 0;
    const __m256i label = mulhi_bounded_avx2(load8(words + 8 * p), n_classes, &lanes);
    suspect |= lanes << (8 * p);
    store8(labels + first + 8 * p, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(label)));
    store8(labels + first + 8 * p + 4, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(label, 1)));
    store8(level_a + 8 * p, label);
  }
  const __m256i vm = _mm256_set1_epi32(g.m), byte = _mm256_set1_epi32(0xFF);
  int bits = 0;
  while ((int64_t{1} << bits) < g.m) ++bits;
  const __m128i row_shift = _mm_cvtsi32_si128(bits), choice_shift = _mm_cvtsi32_si128(32 - bits);
  int32_t* cur = level_a;
  int32_t* next = level_b;
  const int* level_rules = reinterpret_cast<const int*>(job.packed_rules);
  // With paired rules (S = 2, Pow2) the last two levels take one look-up per node of level L - 2.
  const bool paired = Pow2 && S == 2 && job.paired_rules != nullptr;
  const int32_t levels = paired ? L - 1 : L;
  int64_t width = 1, node = 1;
  for (int32_t l = 0; l < levels; ++l, node += width, width *= s, level_rules += level_size) {
    const bool last = l + 1 == levels;
    const int* table = paired && last ? reinterpret_cast<const int*>(job.paired_rules) : level_rules;
    for (int64_t k = 0; k < width; ++k) {
      __m256i children[P];
      for (int p = 0; p < P; ++p) {  // P independent gathers in flight
        const __m256i word = load8(words + kWidth * (node + k) + 8 * p), symbol = load8(cur + kWidth * k + 8 * p);
        __m256i row;
        if constexpr (Pow2) {
          row = _mm256_or_si256(_mm256_sll_epi32(symbol, row_shift), _mm256_srl_epi32(word, choice_shift));
          if (paired && last) {  // append the choices of the node's two children (level L - 1)
            for (int64_t c = 0; c < 2; ++c) {
              const __m256i child_word = load8(words + kWidth * (node + width + 2 * k + c) + 8 * p);
              row = _mm256_or_si256(_mm256_sll_epi32(row, row_shift), _mm256_srl_epi32(child_word, choice_shift));
            }
          }
        } else {
          uint32_t lanes = 0;
          const __m256i choice = mulhi_bounded_avx2(word, vm, &lanes);
          suspect |= lanes << (8 * p);
          row = _mm256_add_epi32(_mm256_mullo_epi32(symbol, vm), choice);
        }
        children[p] = _mm256_i32gather_epi32(table, row, 4);
      }
      for (int p = 0; p < P; ++p) {
        if (last) {
          store8(leaves + kWidth * k + 8 * p, children[p]);
        } else {
          for (int32_t c = 0; c < s; ++c)
            store8(next + kWidth * (k * s + c) + 8 * p, _mm256_and_si256(_mm256_srli_epi32(children[p], 8 * c), byte));
        }
      }
    }
    std::swap(cur, next);
  }
  if (paired)
    write_leaves<4, Sym>(leaves, kWidth, first, d / 4, 4, d, tokens);
  else
    write_leaves<S, Sym>(leaves, kWidth, first, d / s, s, d, tokens);
  return suspect;
}
#endif

// Samples row0 .. row0 + kGroup - 1 in iid mode, expanded level by level side by side (scratch level
// buffers hold kGroup values per node, lane fastest): one sample's rule look-ups form a dependent chain
// through its level buffer, while the kGroup samples' look-ups are independent and overlap in the core.
// words: the samples' Philox words, 4 * n_blocks per sample. Returns the lanes whose label or rule
// words may be rejected by uniform_below (to be redone through the exact path).
constexpr int kGroup = 8;

template <int S, typename Sym>
uint32_t expand_group(const Job& job, const Sym* leaf_rules, int64_t row0, const uint32_t* words,
                      int64_t words_per_sample, int32_t* cur, int32_t* next, Sym* tokens, int64_t* labels) {
  const RhmShape& g = job.g;
  const int32_t s = S > 0 ? S : g.s, L = g.L;
  const int64_t m = g.m, level_size = static_cast<int64_t>(g.R) * m * s;
  const int64_t d = level_start(s, L + 1) - g.n_internal;
  const uint32_t n_classes = static_cast<uint32_t>(g.n_classes), mu = static_cast<uint32_t>(m);
  uint32_t suspicious = 0;
  for (int j = 0; j < kGroup; ++j) {
    const uint64_t x = static_cast<uint64_t>(words[j * words_per_sample]) * n_classes;
    suspicious |= static_cast<uint32_t>(static_cast<uint32_t>(x) < n_classes) << j;
    cur[j] = static_cast<int32_t>(x >> 32);
    labels[row0 + j] = cur[j];
  }
  const int32_t* level_rules = job.rules;
  int64_t width = 1, node = 1;  // word index of the level's first node (word 0 is the label's)
  for (int32_t l = 0; l < L; ++l, node += width, width *= s, level_rules += level_size) {
    const bool last = l + 1 == L;
    for (int64_t k = 0; k < width; ++k) {
      for (int j = 0; j < kGroup; ++j) {
        const uint64_t x = static_cast<uint64_t>(words[j * words_per_sample + node + k]) * mu;
        suspicious |= static_cast<uint32_t>(static_cast<uint32_t>(x) < mu) << j;
        const int64_t r = (cur[k * kGroup + j] * m + static_cast<int64_t>(x >> 32)) * s;
        if (last) {
          copy_children<S>(tokens + (row0 + j) * d + k * s, leaf_rules + r, s);
        } else {
          for (int32_t c = 0; c < s; ++c) next[(k * s + c) * kGroup + j] = level_rules[r + c];
        }
      }
    }
    std::swap(cur, next);
  }
  return suspicious;
}

template <int S, typename Sym>
void expand_range(const Job& job, const Sym* leaf_rules, int64_t begin, int64_t end, Sym* tokens, int64_t* labels,
                  Sym* const* tree) {
  const RhmShape& g = job.g;
  const int64_t d = level_start(g.s, g.L + 1) - g.n_internal;
  std::vector<int32_t> cur(d / g.s), next(d / g.s);
  if (job.decode || job.mode == SampleMode::kIndex) {
    std::vector<uint32_t> digits(g.n_internal);
    for (int64_t j = begin; j < end; ++j) {
      const uint64_t u = job.decode ? static_cast<uint64_t>(job.datum[j])
                                    : permute_index(job.start + static_cast<uint64_t>(j), job.domain, job.key);
      const int32_t label = decode_datum(u, job.per_class, g, digits.data());
      labels[j] = label;
      expand_sample<S>(job, leaf_rules, label, [&](int64_t t) { return digits[t]; }, cur.data(), next.data(), tokens + j * d,
                       tree, j);
    }
    return;
  }
  // iid: words for a chunk of samples at a time, then expansion with the exact choice inlined as a
  // multiply-shift; the rare words that uniform_below would reject are flagged and the sample redone
  // through the exact (slower) path.
  const int64_t n_blocks = (g.n_internal + 1 + 3) / 4;
  const int64_t chunk = std::max<int64_t>(1, 1024 / n_blocks);
  std::vector<uint32_t> c0(chunk * n_blocks), c1(chunk * n_blocks), c2(chunk * n_blocks), words(4 * chunk * n_blocks);
  const uint32_t m = static_cast<uint32_t>(g.m);
  std::vector<int32_t> group_a(kGroup * (d / g.s)), group_b(kGroup * (d / g.s));
#if defined(__x86_64__) && defined(__GNUC__)
  const bool lanes = tree == nullptr && g.n_internal <= kLaneMaxInternal && job.packed_rules != nullptr &&
                     static_cast<int64_t>(g.R) * g.m < (int64_t{1} << 31);
  if (lanes && kSimd != Simd::kScalar) {
    std::vector<int32_t> lane_words(kLanes * 4 * n_blocks), level_a(kLanes * (d / g.s)), level_b(kLanes * (d / g.s));
    std::vector<uint32_t> lane_leaves(kLanes * (d / g.s));
    const bool pow2 = (g.m & (g.m - 1)) == 0;
    for (; begin + kLanes <= end; begin += kLanes) {
      const uint32_t redo = kSimd == Simd::kAvx512
          ? expand16_avx512<S, Sym>(job, begin, tokens, labels, lane_words.data(), level_a.data(), level_b.data(),
                                    lane_leaves.data())
          : pow2 ? expand_avx2<2, S, true, Sym>(job, begin, tokens, labels, lane_words.data(), level_a.data(),
                                                level_b.data(), lane_leaves.data())
                 : expand_avx2<2, S, false, Sym>(job, begin, tokens, labels, lane_words.data(), level_a.data(),
                                                 level_b.data(), lane_leaves.data());
      for (int lane = 0; lane < kLanes; ++lane) {
        if (((redo >> lane) & 1u) != 0)
          expand_iid_exact<S>(job, leaf_rules, begin + lane, cur.data(), next.data(), tokens, labels, tree);
      }
    }
  }
#endif
  for (int64_t first = begin; first < end; first += chunk) {
    const int64_t count = std::min(chunk, end - first);
    for (int64_t j = 0, f = 0; j < count; ++j) {
      const uint64_t i = job.start + static_cast<uint64_t>(first + j);
      for (int64_t b = 0; b < n_blocks; ++b, ++f) {
        c0[f] = static_cast<uint32_t>(b);
        c1[f] = static_cast<uint32_t>(i);
        c2[f] = static_cast<uint32_t>(i >> 32);
      }
    }
    fill_words(job.key, c0.data(), c1.data(), c2.data(), count * n_blocks, words.data());
    int64_t j = 0;
    if (tree == nullptr) {
      for (; j + kGroup <= count; j += kGroup) {
        const uint32_t redo = expand_group<S, Sym>(job, leaf_rules, first + j, words.data() + 4 * n_blocks * j,
                                                   4 * n_blocks, group_a.data(), group_b.data(), tokens, labels);
        for (int lane = 0; lane < kGroup; ++lane) {
          if (((redo >> lane) & 1u) != 0)
            expand_iid_exact<S>(job, leaf_rules, first + j + lane, cur.data(), next.data(), tokens, labels, tree);
        }
      }
    }
    for (; j < count; ++j) {
      const int64_t row = first + j;
      const uint64_t i = job.start + static_cast<uint64_t>(row);
      const uint32_t* w = words.data() + 4 * n_blocks * j;
      const int32_t label = static_cast<int32_t>(iid_choice(job.key, i, 0, w[0], static_cast<uint32_t>(g.n_classes)));
      labels[row] = label;
      uint32_t suspicious = 0;
      const uint32_t* const node_words = w + 1;
      expand_sample<S>(job, leaf_rules, label, [&suspicious, node_words, m](int64_t t) {
        const uint64_t x = static_cast<uint64_t>(node_words[t]) * m;
        suspicious |= static_cast<uint32_t>(static_cast<uint32_t>(x) < m);
        return static_cast<uint32_t>(x >> 32);
      }, cur.data(), next.data(), tokens + row * d, tree, row);
      if (suspicious != 0) expand_iid_exact<S>(job, leaf_rules, row, cur.data(), next.data(), tokens, labels, tree);
    }
  }
}

template <typename Sym>
void expand_range_any(const Job& job, const Sym* leaf_rules, int64_t begin, int64_t end, Sym* tokens, int64_t* labels,
                      Sym* const* tree) {
  switch (job.g.s) {
    case 2: return expand_range<2>(job, leaf_rules, begin, end, tokens, labels, tree);
    case 3: return expand_range<3>(job, leaf_rules, begin, end, tokens, labels, tree);
    case 4: return expand_range<4>(job, leaf_rules, begin, end, tokens, labels, tree);
    default: return expand_range<0>(job, leaf_rules, begin, end, tokens, labels, tree);
  }
}

template <typename Sym>
void run_typed(const Job& job, int64_t n, at::Tensor& tokens, at::Tensor& labels, std::vector<at::Tensor>& tree) {
  std::vector<Sym*> tree_ptrs;
  for (auto& level : tree) tree_ptrs.push_back(level.data_ptr<Sym>());
  Sym* const* tree_arg = tree.empty() ? nullptr : tree_ptrs.data();
  Sym* out = tokens.data_ptr<Sym>();
  const RhmShape& g = job.g;
  const int64_t level_size = static_cast<int64_t>(g.R) * g.m * g.s;
  const int32_t* last = job.rules + (g.L - 1) * level_size;
  const std::vector<Sym> leaf_rules(last, last + level_size);  // symbols fit Sym: checked in check_rules
  int64_t* out_labels = labels.data_ptr<int64_t>();
  // ~64k tokens per task keeps scheduling overhead negligible while balancing the threads.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(tokens.size(1), 1));
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { expand_range_any<Sym>(job, leaf_rules.data(), b, e, out, out_labels, tree_arg); });
}

// Rows [0, count) of a rule table with a rule's S children packed into the bytes of one word. S fixed at
// compile time turns this into a vector loop; it runs on every sampling call.
template <int S>
void pack_rows(const int32_t* rules, int64_t count, uint32_t* packed) {
  for (int64_t r = 0; r < count; ++r) {
    uint32_t word = 0;
    for (int c = 0; c < S; ++c) word |= static_cast<uint32_t>(rules[r * S + c]) << (8 * c);
    packed[r] = word;
  }
}

// The rule table with a rule's children packed into the bytes of one word, for the lane kernels
// (empty when the call cannot use them: see lanes_possible).
std::vector<uint32_t> pack_rules(const int32_t* rules, const RhmShape& g) {
  std::vector<uint32_t> packed;
  if (g.R > 256 || g.s > 4) return packed;
  packed.resize(static_cast<size_t>(g.L) * g.R * g.m);
  const int64_t count = static_cast<int64_t>(packed.size());
  switch (g.s) {
    case 2: pack_rows<2>(rules, count, packed.data()); break;
    case 3: pack_rows<3>(rules, count, packed.data()); break;
    default: pack_rows<4>(rules, count, packed.data()); break;
  }
  return packed;
}

// For s = 2 and m a power of two: entry ((a m + c) m + c0) m + c1 holds, in its four bytes, the
// grandchildren that symbol a of level L - 2 gets from rule c and its children's rules c0 and c1, so the
// lane kernel expands the last two levels with one gather. Made only when the call's samples use each
// entry several times over and the table stays within 1 MiB.
std::vector<uint32_t> pair_last_levels(const uint32_t* packed, const RhmShape& g, int64_t n) {
  std::vector<uint32_t> paired;
  const int64_t m = g.m, entries = static_cast<int64_t>(g.R) * m * m * m;
  if (packed == nullptr || g.s != 2 || g.L < 2 || (m & (m - 1)) != 0 || entries > (int64_t{1} << 18) ||
      n * (int64_t{1} << (g.L - 2)) < 4 * entries)
    return paired;
  paired.resize(entries);
  const uint32_t* upper = packed + static_cast<int64_t>(g.L - 2) * g.R * m;
  const uint32_t* lower = packed + static_cast<int64_t>(g.L - 1) * g.R * m;
  at::parallel_for(0, g.R, 1, [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a)
      for (int64_t c = 0; c < m; ++c) {
        const uint32_t left = upper[a * m + c] & 0xFFu, right = (upper[a * m + c] >> 8) & 0xFFu;
        uint32_t* out = paired.data() + (a * m + c) * m * m;
        // Rows of symbols that cannot occur may hold anything: their entries are never read.
        const bool valid = left < static_cast<uint32_t>(g.R) && right < static_cast<uint32_t>(g.R);
        for (int64_t c0 = 0; c0 < m; ++c0)
          for (int64_t c1 = 0; c1 < m; ++c1)
            out[c0 * m + c1] = valid ? (lower[left * m + c0] & 0xFFFFu) | (lower[right * m + c1] << 16) : 0u;
      }
  });
  return paired;
}

// Whether the lane kernels, the only readers of the packed rules, can take some of this call's samples
// (iid mode, no latent tree, a SIMD path, at least one full set of lanes).
bool lanes_possible(const Job& job, int64_t n, bool return_tree) {
#if defined(__x86_64__) && defined(__GNUC__)
  return kSimd != Simd::kScalar && !return_tree && !job.decode && job.mode == SampleMode::kIid &&
         job.g.n_internal <= kLaneMaxInternal && n >= kLanes;
#else
  return false;
#endif
}

SampleResult run(const at::Tensor& rules, Job job, int64_t n, at::ScalarType dtype, bool return_tree) {
  job.rules = rules.data_ptr<int32_t>();
#if defined(__x86_64__) && defined(__GNUC__)
  if (kSimd != Simd::kScalar) job.round_keys = round_keys(job.key);
#endif
  const bool lanes = lanes_possible(job, n, return_tree);
  const std::vector<uint32_t> packed = lanes ? pack_rules(job.rules, job.g) : std::vector<uint32_t>();
  job.packed_rules = packed.empty() ? nullptr : packed.data();
  std::vector<uint32_t> paired;
#if defined(__x86_64__) && defined(__GNUC__)
  // Only the AVX2 lane kernel reads paired rules (and only for uint8 tokens).
  if (lanes && kSimd == Simd::kAvx2 && dtype == at::kByte) paired = pair_last_levels(job.packed_rules, job.g, n);
#endif
  job.paired_rules = paired.empty() ? nullptr : paired.data();
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
  const StreamPlan plan = plan_stream(job.g, n, start, mode);
  job.mode = plan.mode;
  job.start = plan.start;
  job.per_class = plan.per_class;
  job.domain = plan.domain;
  job.key = key_from_seed(static_cast<uint64_t>(seed));
  return run(rules, job, n, dtype, return_tree);
}

SampleResult rhm_decode_cpu(const at::Tensor& rules, const at::Tensor& datum, int64_t n_classes,
                            at::ScalarType dtype, bool return_tree) {
  Job job{};
  job.g = check_rules(rules, n_classes, dtype, return_tree);
  job.decode = true;
  const at::Tensor numbers = check_datum(job.g, datum, &job.per_class);
  job.datum = numbers.data_ptr<int64_t>();
  return run(rules, job, numbers.size(0), dtype, return_tree);
}

}  // namespace

const char* rhm_sample_cpu_simd() {
  switch (kSimd) {
    case Simd::kAvx512: return "avx512";
    case Simd::kAvx2: return "avx2";
    default: return "scalar";
  }
}

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) {
  m.impl("rhm_sample", &rhm_sample_cpu);
  m.impl("rhm_decode", &rhm_decode_cpu);
}

}  // namespace rhmfast
