// CUDA kernel of rhm_sample (modes "iid" and "index") and rhm_decode; bit for bit the CPU kernel
// (rhm_sample_cpu.cpp), both built on the device-agnostic core rhmfast/rhm_core.h.
//
// Data layout contract (stated in full in rhm_core.h)
//   rules   int32 [L][R][m][s]; rule c of level-l symbol a produces rules[l][a][c][0..s).
//   nodes   internal nodes numbered breadth-first; node j of level l has children j*s .. j*s+s-1.
//   words   sample i's word t is lane t % 4 of Philox4x32-10 at counter (t / 4, lo32(i), hi32(i),
//           purpose ^ attempt << 8), key = seed halves; word 0 picks the label, word 1 + node that
//           node's rule; a rejected word is redrawn with attempt + 1 (uniform_below).
//   index   datum number = Feistel permutation of the sample index, decoded into label and choices.
//   outputs tokens [n][s^L], labels int64 [n], tree level l in [0, L): [n][s^l], all row-major.
//
// Parallelisation
//   The unit of work is a subtree. The host picks a split level k (0, the whole tree, unless the tree
//   has more than kMaxUnitNodes internal nodes); unit u = row * s^k + p is the subtree under node p
//   of level k of output row `row`. With this numbering the leaves (and every latent level >= k) of
//   consecutive units are consecutive in memory. A block takes `units_per_block` consecutive units
//   at a time (grid-stride over such groups), one team of threads (a power of two) per unit:
//     1. choices   the team draws its unit's rule choices into a shared-memory buffer, each lane one
//                  Philox call for 4 consecutive words; for k > 0 the lanes draw the choices on the
//                  path from the root in parallel and lane 0 walks it to the unit's root symbol.
//     2. expand    level by level, child-parallel, each node's choice becomes its rule row
//                  (symbol * m + choice) in place: the buffer ends up holding the unit's whole tree.
//     3. leaves    the whole block writes its contiguous chunk of tokens, each thread a run of 16
//                  aligned bytes read from the last level's rule rows: coalesced 16-byte stores.
//   The rule table is staged in shared memory when it is small. Nothing depends on thread ids but
//   the division of work, so the bits match the CPU kernel for any launch shape.
#include <cuda_runtime.h>
#include <stdint.h>

#include "rhmfast/rhm_core.h"
#include "rhmfast/rhm_sample_launch.h"

namespace rhmfast {
namespace {

constexpr uint32_t kBlockThreads = 256;
// A unit has at most this many internal nodes, so its buffer is at most 4 KiB of shared memory.
constexpr uint64_t kMaxUnitNodes = 1023;
// Teams get about 8 buffer entries (2 Philox calls) per lane.
constexpr uint32_t kNodesPerLane = 8;
// Several units per block only while their leaves stay within this many tokens (keeps the grid
// wide for trees with very wide rules).
constexpr uint64_t kMaxBlockLeaves = uint64_t{1} << 16;
constexpr size_t kMaxSharedRulesBytes = size_t{32} << 10;
constexpr size_t kSharedBytesLimit = size_t{48} << 10;  // the default dynamic shared memory limit
constexpr uint32_t kStoreBytes = 16;

// x / divisor for 0 <= x < 2^31 by a multiply and a shift (Granlund & Montgomery, round-up
// variant: magic = floor(2^32 (2^shift - divisor) / divisor) + 1, shift = ceil(log2 divisor)).
struct FastDiv {
  uint32_t divisor, magic, shift;
};

FastDiv make_fast_div(uint32_t divisor) {  // 1 <= divisor < 2^31
  FastDiv f;
  f.divisor = divisor;
  f.shift = 0;
  while ((uint64_t{1} << f.shift) < divisor) ++f.shift;
  f.magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << f.shift) - divisor)) / divisor + 1);
  return f;
}

__device__ __forceinline__ uint32_t fast_div(uint32_t x, const FastDiv& f) {
  return (__umulhi(x, f.magic) + x) >> f.shift;  // no overflow: __umulhi(x, magic) <= x < 2^31
}

struct KernelArgs {
  const int32_t* rules;        // global memory
  RhmShape g;
  RhmSource source;
  bool digits;                 // index / decode with m > 1: choices are the datum number's digits
  bool with_tree;
  bool rules_in_shared;
  bool vector_stores;          // tokens is 16-byte aligned
  PhiloxKey key;
  uint64_t start;
  FeistelDomain domain;
  uint64_t per_class;
  const int64_t* datum;
  uint64_t n_units;            // n * s^split
  uint32_t split;              // k: units are the subtrees under level k
  uint32_t unit_levels;        // L - k internal levels per unit
  uint32_t unit_stride;        // buffer entries per unit: root symbol + internal nodes, odd
  uint32_t last_width;         // nodes of the unit's last internal level
  uint32_t unit_leaves;        // s^(L-k) < 2^31
  uint32_t units_per_block;    // a power of two
  uint32_t team_shift;         // team size = kBlockThreads / units_per_block = 1 << team_shift
  uint32_t rules_count;        // L * R * m * s < 2^32
  uint32_t level_rules;        // R * m * s, entries per level of the rule table
  uint32_t buffer_offset, path_nodes_offset, path_choices_offset;  // bytes into shared memory
  FastDiv by_s, by_unit_leaves;
  uint64_t width[kRhmMaxLevels + 1];        // s^l
  uint64_t level_start[kRhmMaxLevels + 1];  // (s^l - 1) / (s - 1)
  void* tokens;
  int64_t* labels;
  void* tree[kRhmMaxLevels];
};

// Word t of sample i as the CPU kernel reads it (counter t / 4 truncated to 32 bits, lane t % 4);
// the redraw of a rejected word goes through iid_choice like on the CPU.
__device__ __forceinline__ uint32_t choice_of_word(const KernelArgs& a, uint64_t i, uint64_t t, uint32_t word) {
  const uint32_t bound = t == 0 ? static_cast<uint32_t>(a.g.n_classes) : static_cast<uint32_t>(a.g.m);
  return iid_choice(a.key, i, static_cast<uint32_t>(t), word, bound);
}

__device__ __forceinline__ uint32_t draw_word_choice(const KernelArgs& a, uint64_t i, uint64_t t) {
  const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(t >> 2), static_cast<uint32_t>(i),
                                     static_cast<uint32_t>(i >> 32), kPurposeIid, a.key.k0, a.key.k1);
  const uint32_t lane = static_cast<uint32_t>(t) & 3u;  // selects, not a dynamically indexed local array
  const uint32_t word = lane == 0 ? r.v[0] : lane == 1 ? r.v[1] : lane == 2 ? r.v[2] : r.v[3];
  return choice_of_word(a, i, t, word);
}

// dst[t - first] = choice of word t for t in [first, first + count): lane-strided Philox blocks,
// each used for its (up to) 4 words in range.
__device__ void draw_words(const KernelArgs& a, uint64_t i, uint64_t first, uint32_t count, uint32_t* dst,
                           uint32_t lane, uint32_t team_size) {
  const uint64_t end = first + count;
  for (uint64_t b = (first >> 2) + lane; 4 * b < end; b += team_size) {
    const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(b), static_cast<uint32_t>(i),
                                       static_cast<uint32_t>(i >> 32), kPurposeIid, a.key.k0, a.key.k1);
#pragma unroll
    for (uint32_t q = 0; q < 4; ++q) {
      const uint64_t t = 4 * b + q;
      if (t >= first && t < end) dst[t - first] = choice_of_word(a, i, t, r.v[q]);
    }
  }
}

// Datum number of output row `row` (index and decode modes).
__device__ __forceinline__ uint64_t datum_number(const KernelArgs& a, uint64_t row) {
  if (a.source == RhmSource::kDecode) return static_cast<uint64_t>(a.datum[row]);
  return permute_index(a.start + row, a.domain, a.key);
}

template <typename Sym>
__device__ __forceinline__ void store_tree(const KernelArgs& a, uint32_t level, uint64_t index, int32_t symbol) {
  static_cast<Sym*>(a.tree[level])[index] = static_cast<Sym>(symbol);
}

// Leaf e of the block's chunk (e < 2^31), from the rule rows of the units' last internal level.
__device__ __forceinline__ int32_t leaf_at(const KernelArgs& a, const int32_t* last_rules, const uint32_t* last_rows,
                                           uint32_t e) {
  const uint32_t unit = fast_div(e, a.by_unit_leaves);
  const uint32_t within = e - unit * a.unit_leaves;
  const uint32_t parent = fast_div(within, a.by_s);
  const uint32_t slot = within - parent * a.by_s.divisor;
  return last_rules[last_rows[unit * a.unit_stride + parent] * a.by_s.divisor + slot];
}

template <typename Sym>
struct alignas(kStoreBytes) SymRun {
  Sym v[kStoreBytes / sizeof(Sym)];
};

template <typename Sym>
__global__ void __launch_bounds__(kBlockThreads) rhm_sample_kernel(const KernelArgs a) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int32_t* rules = a.rules;
  if (a.rules_in_shared) {
    int32_t* copy = reinterpret_cast<int32_t*>(shared_bytes);
    for (uint32_t x = threadIdx.x; x < a.rules_count; x += kBlockThreads) copy[x] = a.rules[x];
    rules = copy;
    __syncthreads();
  }
  const uint32_t s = a.by_s.divisor, m = static_cast<uint32_t>(a.g.m), k = a.split;
  const uint32_t team = threadIdx.x >> a.team_shift, team_size = 1u << a.team_shift;
  const uint32_t lane = threadIdx.x & (team_size - 1);
  uint32_t* const buffers = reinterpret_cast<uint32_t*>(shared_bytes + a.buffer_offset);
  // buf[0] = the unit's root symbol, buf[1 + node] = the choice, then the rule row, of unit node
  // `node` (breadth-first within the unit).
  uint32_t* const buf = buffers + team * a.unit_stride;
  uint64_t* const path_nodes = reinterpret_cast<uint64_t*>(shared_bytes + a.path_nodes_offset) + team * (k + 1);
  uint32_t* const path_choices = reinterpret_cast<uint32_t*>(shared_bytes + a.path_choices_offset) + team * (k + 1);
  const uint32_t last_level = a.unit_levels - 1;
  const int32_t* const last_rules = rules + static_cast<uint64_t>(a.g.L - 1) * a.level_rules;
  const uint32_t* const last_rows = buffers + 1 + a.level_start[last_level];
  const uint64_t units_per_sample = a.width[k];

  for (uint64_t group = blockIdx.x; group * a.units_per_block < a.n_units; group += gridDim.x) {
    const uint64_t first_unit = group * a.units_per_block;
    const uint64_t left = a.n_units - first_unit;
    const uint32_t n_active = left < a.units_per_block ? static_cast<uint32_t>(left) : a.units_per_block;
    const bool active = team < n_active;
    const uint64_t unit = first_unit + team;
    const uint64_t row = k == 0 ? unit : unit / units_per_sample;
    const uint64_t p = unit - row * units_per_sample;  // node of level k under which the unit lies
    const uint64_t i = a.start + row;                  // the sample's Philox counter (iid)

    // 1a. The path above the split: path_nodes[l] = its node at level l (l <= k), path_choices[0] =
    //     the label, path_choices[1 + l] = the choice of its node at level l < k.
    if (k > 0) {
      if (active) {
        for (uint32_t l = lane; l <= k; l += team_size) {
          path_nodes[l] = p / a.width[k - l];
          uint32_t c = 0;
          if (l == 0) {
            c = a.source == RhmSource::kIid ? draw_word_choice(a, i, 0)
                                            : static_cast<uint32_t>(datum_number(a, row) / a.per_class);
          } else if (a.source == RhmSource::kIid) {
            c = draw_word_choice(a, i, 1 + a.level_start[l - 1] + p / a.width[k - l + 1]);
          }
          path_choices[l] = c;  // index / decode with k > 0 only happen for m = 1: choices are 0
        }
      }
      __syncthreads();
    }

    // 1b. The unit's root symbol and its choices.
    if (active) {
      if (k > 0) {
        if (lane == 0) {
          int32_t symbol = static_cast<int32_t>(path_choices[0]);
          if (p == 0) a.labels[row] = symbol;
          for (uint32_t l = 0; l < k; ++l) {
            const uint64_t node = path_nodes[l];
            const uint32_t slot = static_cast<uint32_t>(path_nodes[l + 1] - node * s);
            if (a.with_tree && p == node * a.width[k - l]) store_tree<Sym>(a, l, row * a.width[l] + node, symbol);
            symbol = rules[static_cast<uint64_t>(l) * a.level_rules +
                           (static_cast<uint32_t>(symbol) * m + path_choices[l + 1]) * s + slot];
          }
          buf[0] = static_cast<uint32_t>(symbol);
        }
        if (a.source == RhmSource::kIid) {
          for (uint32_t r = 0; r < a.unit_levels; ++r) {
            const uint64_t width = a.width[r];
            draw_words(a, i, 1 + a.level_start[k + r] + p * width, static_cast<uint32_t>(width),
                       buf + 1 + a.level_start[r], lane, team_size);
          }
        }
      } else if (a.source == RhmSource::kIid) {
        draw_words(a, i, 0, static_cast<uint32_t>(1 + a.level_start[a.unit_levels]), buf, lane, team_size);
      } else if (lane == 0) {
        const uint64_t u = datum_number(a, row);
        buf[0] = a.digits ? static_cast<uint32_t>(decode_datum(u, a.per_class, a.g, buf + 1))
                          : static_cast<uint32_t>(u / a.per_class);
      }
      if (!a.digits && a.source != RhmSource::kIid) {
        for (uint64_t t = lane; t < a.level_start[a.unit_levels]; t += team_size) buf[1 + t] = 0;
      }
    }
    __syncthreads();

    // 2. Expand: choices become rule rows, level by level.
    for (uint32_t r = 0; r < a.unit_levels; ++r) {
      if (active) {
        uint32_t* const level = buf + 1 + a.level_start[r];
        if (r == 0) {
          if (lane == 0) {
            const uint32_t root = buf[0];
            if (k == 0) a.labels[row] = static_cast<int64_t>(root);
            if (a.with_tree) store_tree<Sym>(a, k, unit, static_cast<int32_t>(root));
            level[0] += root * m;
          }
        } else {
          const uint32_t width = static_cast<uint32_t>(a.width[r]);
          const uint32_t* const parents = buf + 1 + a.level_start[r - 1];
          const int32_t* const level_rules = rules + static_cast<uint64_t>(k + r - 1) * a.level_rules;
          for (uint32_t c = lane; c < width; c += team_size) {
            const uint32_t parent = fast_div(c, a.by_s);
            const int32_t symbol = level_rules[parents[parent] * s + (c - parent * s)];
            level[c] += static_cast<uint32_t>(symbol) * m;
            if (a.with_tree) store_tree<Sym>(a, k + r, unit * width + c, symbol);
          }
        }
      }
      __syncthreads();
    }

    // 3. Leaves: the chunk of the group's units, in runs of kStoreBytes aligned in memory.
    constexpr uint32_t kRun = kStoreBytes / sizeof(Sym);
    const uint64_t chunk_first = first_unit * a.unit_leaves;
    const int64_t chunk_len = static_cast<int64_t>(n_active) * a.unit_leaves;  // < 2^31
    const int64_t head = static_cast<int64_t>(chunk_first % kRun);
    Sym* const out = static_cast<Sym*>(a.tokens) + chunk_first;
    for (uint32_t x = threadIdx.x;; x += kBlockThreads) {
      const int64_t begin = static_cast<int64_t>(x) * kRun - head;
      if (begin >= chunk_len) break;
      if (a.vector_stores && begin >= 0 && begin + kRun <= chunk_len) {
        uint32_t e = static_cast<uint32_t>(begin);
        const uint32_t unit_in_group = fast_div(e, a.by_unit_leaves);
        e -= unit_in_group * a.unit_leaves;
        uint32_t parent = fast_div(e, a.by_s);
        uint32_t slot = e - parent * s;
        const uint32_t* rows = last_rows + unit_in_group * a.unit_stride;
        const int32_t* children = last_rules + rows[parent] * s;
        SymRun<Sym> run;
#pragma unroll
        for (uint32_t q = 0; q < kRun; ++q) {
          run.v[q] = static_cast<Sym>(children[slot]);
          if (q + 1 < kRun && ++slot == s) {  // the next token is in range: its row exists
            slot = 0;
            if (++parent == a.last_width) {
              parent = 0;
              rows += a.unit_stride;
            }
            children = last_rules + rows[parent] * s;
          }
        }
        *reinterpret_cast<SymRun<Sym>*>(out + begin) = run;
      } else {
        const int64_t end = begin + kRun < chunk_len ? begin + kRun : chunk_len;
        for (int64_t e = begin < 0 ? 0 : begin; e < end; ++e)
          out[e] = static_cast<Sym>(leaf_at(a, last_rules, last_rows, static_cast<uint32_t>(e)));
      }
    }
    __syncthreads();  // the buffers are refilled by the next group
  }
}

size_t align_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

template <typename Sym>
cudaError_t launch_typed(const KernelArgs& a, uint64_t n_groups, size_t shared_bytes, cudaStream_t stream) {
  int device = 0, sms = 0, blocks_per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, rhm_sample_kernel<Sym>,
                                                        static_cast<int>(kBlockThreads), shared_bytes);
  if (err != cudaSuccess) return err;
  // One resident wave: every group is the same work, and each block stages the rules once.
  const uint64_t resident = static_cast<uint64_t>(sms > 0 ? sms : 1) * (blocks_per_sm > 0 ? blocks_per_sm : 1);
  const unsigned int grid = static_cast<unsigned int>(n_groups < resident ? n_groups : resident);
  rhm_sample_kernel<Sym><<<grid, kBlockThreads, shared_bytes, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

bool rhm_sample_cuda_supported(const RhmShape& g) {
  const uint64_t count = static_cast<uint64_t>(g.L) * static_cast<uint64_t>(g.R) * static_cast<uint64_t>(g.m) *
                         static_cast<uint64_t>(g.s);
  return count < (uint64_t{1} << 32);
}

cudaError_t rhm_sample_cuda_launch(const RhmSampleLaunch& in, cudaStream_t stream) {
  const RhmShape& g = in.shape;
  if (g.L < 1 || g.L > kRhmMaxLevels || g.s < 2 || g.m < 1 || g.R < 1 || g.n_classes < 1 || g.n_classes > g.R ||
      in.n < 0 || !rhm_sample_cuda_supported(g))
    return cudaErrorInvalidValue;
  if (in.n == 0) return cudaSuccess;

  KernelArgs a{};
  a.rules = in.rules;
  a.g = g;
  a.source = in.source;
  a.digits = in.source != RhmSource::kIid && g.m > 1;
  a.key = in.key;
  a.start = in.start;
  a.domain = in.domain;
  a.per_class = in.per_class;
  a.datum = in.datum;
  a.tokens = in.tokens;
  a.labels = in.labels;
  a.with_tree = in.tree[0] != nullptr;
  for (int32_t l = 0; l < g.L; ++l) a.tree[l] = in.tree[l];
  a.width[0] = 1;
  a.level_start[0] = 0;
  for (int32_t l = 0; l < g.L; ++l) {
    if (a.width[l] > (uint64_t{1} << 62) / static_cast<uint64_t>(g.s)) return cudaErrorInvalidValue;
    a.width[l + 1] = a.width[l] * static_cast<uint64_t>(g.s);
    a.level_start[l + 1] = a.level_start[l] + a.width[l];
  }
  if (a.source != RhmSource::kIid && (a.per_class == 0 || (a.digits && g.n_internal > 62)))
    return cudaErrorInvalidValue;  // the datum numbers must be < 2^63

  // Split level: the shallowest whose subtrees have at most kMaxUnitNodes internal nodes and fewer than
  // 2^31 leaves (k = L - 1, one node and s leaves, always qualifies). The digits of a datum number are
  // decoded for the whole tree at once, so those trees (at most 62 internal nodes) are never split.
  uint32_t k = 0;
  if (!a.digits)
    while (k + 1 < static_cast<uint32_t>(g.L) &&
           (a.level_start[g.L - k] > kMaxUnitNodes || a.width[g.L - k] >= (uint64_t{1} << 31)))
      ++k;
  if (a.level_start[g.L - k] > kMaxUnitNodes || a.width[g.L - k] >= (uint64_t{1} << 31)) return cudaErrorInvalidValue;
  a.split = k;
  a.unit_levels = static_cast<uint32_t>(g.L) - k;
  const uint32_t unit_nodes = static_cast<uint32_t>(a.level_start[a.unit_levels]);
  a.unit_stride = (unit_nodes + 1) | 1u;  // odd: one-thread teams hit distinct shared-memory banks
  a.last_width = static_cast<uint32_t>(a.width[a.unit_levels - 1]);
  a.unit_leaves = static_cast<uint32_t>(a.width[a.unit_levels]);
  if (static_cast<uint64_t>(in.n) > UINT64_MAX / a.width[k]) return cudaErrorInvalidValue;
  a.n_units = static_cast<uint64_t>(in.n) * a.width[k];

  uint32_t team_size = 1;
  while (team_size < kBlockThreads && team_size * kNodesPerLane < unit_nodes + 1) team_size *= 2;
  uint32_t units_per_block = kBlockThreads / team_size;
  while (units_per_block > 1 && static_cast<uint64_t>(units_per_block) * a.unit_leaves > kMaxBlockLeaves)
    units_per_block /= 2;
  a.units_per_block = units_per_block;
  a.team_shift = 0;
  while ((1u << a.team_shift) * units_per_block < kBlockThreads) ++a.team_shift;

  a.level_rules = static_cast<uint32_t>(g.R) * static_cast<uint32_t>(g.m) * static_cast<uint32_t>(g.s);
  a.rules_count = static_cast<uint32_t>(g.L) * a.level_rules;
  a.by_s = make_fast_div(static_cast<uint32_t>(g.s));
  a.by_unit_leaves = make_fast_div(a.unit_leaves);
  a.vector_stores = reinterpret_cast<uintptr_t>(in.tokens) % kStoreBytes == 0;

  // Shared memory: [rules] [unit buffers] [path nodes] [path choices].
  const size_t rules_bytes = align_up(static_cast<size_t>(a.rules_count) * sizeof(int32_t), 16);
  const size_t path_entries = k > 0 ? static_cast<size_t>(units_per_block) * (k + 1) : 0;
  const size_t work_bytes = align_up(static_cast<size_t>(units_per_block) * a.unit_stride * sizeof(uint32_t), 16) +
                            path_entries * (sizeof(uint64_t) + sizeof(uint32_t));
  a.rules_in_shared = rules_bytes <= kMaxSharedRulesBytes && rules_bytes + work_bytes <= kSharedBytesLimit;
  if (work_bytes > kSharedBytesLimit) return cudaErrorInvalidValue;  // cannot happen with the caps above
  a.buffer_offset = a.rules_in_shared ? static_cast<uint32_t>(rules_bytes) : 0;
  a.path_nodes_offset = a.buffer_offset +
                        static_cast<uint32_t>(align_up(static_cast<size_t>(units_per_block) * a.unit_stride * 4, 16));
  a.path_choices_offset = a.path_nodes_offset + static_cast<uint32_t>(path_entries * sizeof(uint64_t));
  const size_t shared_bytes = a.path_choices_offset + path_entries * sizeof(uint32_t);

  const uint64_t n_groups = (a.n_units + units_per_block - 1) / units_per_block;
  switch (in.symbol_bytes) {
    case 1: return launch_typed<uint8_t>(a, n_groups, shared_bytes, stream);
    case 2: return launch_typed<int16_t>(a, n_groups, shared_bytes, stream);
    case 4: return launch_typed<int32_t>(a, n_groups, shared_bytes, stream);
    case 8: return launch_typed<int64_t>(a, n_groups, shared_bytes, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace rhmfast
