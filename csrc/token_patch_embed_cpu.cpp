// CPU kernels of token_patch_embed / token_patch_embed_backward (layout contract in patch_conv.h).
//
// Forward: output row (b, j) = act(scale * sum_k table[k, tokens[b, j*s + k]] + bias + pos_bias[j]),
// s row reads instead of a dense product over s*v inputs, computed and written in one pass per row
// (the table stays in cache; the output is written once and never re-read).
//
// Backward: the table gradient is a scatter-add of d = grad * act' into s table rows per output row.
// To make its bits independent of scheduling, the output rows are cut into a number of blocks that
// depends on the shapes only; block p adds its rows, in order, into its own partial sums (block 0
// straight into the result), and the partials are then added in block order. grad is read once, d is
// never written out (for s = 2, 3), and the position sums ride along; the bias gradient is taken from
// the table (or position) gradient when that is computed. Without the forward output, relu's mask comes
// from the pre-activation recomputed from the (cached) table rather than from a second pass over memory.
//
// Replica form (tokens [K, B, T], table [K, s, v, C], bias [K, C], pos_bias [K, T/s, C], y [K, B, T/s, C]):
// one parallel pass over all K*B*T/s rows, each replica reading its own table and offset rows; the
// backward's blocks and partial sums are the solo plan's, per replica, so replica k equals the solo op on
// its slices bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "channels_last_cpu.h"
#include "cpu_clones.h"
#include "large_output_cpu.h"
#include "patch_conv_cpu.h"

namespace rhmfast {
namespace {

// Remembers one out-of-range token id seen by any thread (the kernels skip such ids, never read with them).
struct BadToken {
  std::atomic<bool> seen{false};
  std::atomic<int64_t> value{0};
  void record(int64_t t) {
    if (!seen.exchange(true)) value.store(t);
  }
  void raise_if_seen(int64_t v) const {
    TORCH_CHECK_VALUE(!seen.load(), "rhmfast: token ids must be in [0, vocab_size=", v, "), got ", value.load());
  }
};

template <typename Fn>
void dispatch_tokens(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kByte: fn(uint8_t{}); break;
    case at::kShort: fn(int16_t{}); break;
    case at::kInt: fn(int32_t{}); break;
    default: fn(int64_t{}); break;  // dtype checked in check_token_patch_embed
  }
}

template <typename Fn>
void dispatch_activation(Activation act, Fn&& fn) {
  switch (act) {
    case Activation::kRelu: fn(std::integral_constant<Activation, Activation::kRelu>{}); break;
    case Activation::kSquare: fn(std::integral_constant<Activation, Activation::kSquare>{}); break;
    default: fn(std::integral_constant<Activation, Activation::kNone>{}); break;
  }
}

// Patch sizes 2 and 3 (the RHM's usual ones) get kernels with unrolled column loops; 0 stands for any other.
template <typename Fn>
void dispatch_patch_size(int64_t s, Fn&& fn) {
  switch (s) {
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    default: fn(std::integral_constant<int, 0>{}); break;
  }
}

// fn(Tok{}, activation tag, patch-size tag): one kernel instance per token dtype, activation and s.
template <typename Fn>
void dispatch_kernel(at::ScalarType token_dtype, Activation act, int64_t s, Fn&& fn) {
  dispatch_tokens(token_dtype, [&](auto tok_tag) {
    dispatch_activation(act, [&](auto act_tag) {
      dispatch_patch_size(s, [&](auto s_tag) { fn(tok_tag, act_tag, s_tag); });
    });
  });
}

// What the forward reads besides the tokens: the table, the offset rows (bias + pos_bias, see
// offset_of) and zeros [C], which stand in for the rows of bad ids and for a missing bias.
template <typename T>
struct Embedding {
  const T* table;
  const T* offset;
  int64_t offset_stride;  // C: one offset row per position; 0: one row for all
  const T* zeros;
  T scale;
};

// bias + pos_bias as one [(K,) T_out, C] tensor when pos_bias is given (added once per call rather than per
// row), else the bias itself; undefined when neither is given.
at::Tensor offset_of(const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias) {
  if (pos_bias) {
    if (!bias) return pos_bias->contiguous();
    // Replica form: bias [K, C] added to each replica's [T_out, C] rows (the same element-wise sums).
    return (pos_bias->dim() == 3 ? at::add(*pos_bias, bias->unsqueeze(1)) : at::add(*pos_bias, *bias)).contiguous();
  }
  return bias ? bias->contiguous() : at::Tensor();
}

// Replica k's embedding (k = 0 in the solo form).
template <typename T>
Embedding<T> embedding_of(const at::Tensor& table, const at::Tensor& offset, const std::vector<T>& zeros,
                          double scale, const PatchShape& g, int64_t k) {
  const bool per_position = offset.defined() && offset.dim() == (g.replica ? 3 : 2);
  const int64_t offset_k = per_position ? g.T_out * g.C_out : g.C_out;
  return {table.data_ptr<T>() + k * g.s * g.C_in * g.C_out,
          offset.defined() ? offset.data_ptr<T>() + k * offset_k : zeros.data(), per_position ? g.C_out : 0,
          zeros.data(), static_cast<T>(scale)};
}

template <typename T>
std::vector<Embedding<T>> embeddings_of(const at::Tensor& table, const at::Tensor& offset,
                                        const std::vector<T>& zeros, double scale, const PatchShape& g) {
  std::vector<Embedding<T>> e;
  e.reserve(g.K);
  for (int64_t k = 0; k < g.K; ++k) e.push_back(embedding_of<T>(table, offset, zeros, scale, g, k));
  return e;
}

// Points src[k] at the table row of output row r's k-th token; a bad id is recorded and reads zeros.
template <typename Tok, typename T>
RHMFAST_CPU_INLINE void row_sources(const Tok* tokens, const Embedding<T>& e, const PatchShape& g, int64_t r,
                                    const T** src, BadToken& bad) {
  const Tok* tk = tokens + r * g.s;  // tokens [B, T] contiguous: row r = (b, j) starts at b*T + j*s
  for (int64_t k = 0; k < g.s; ++k) {
    const int64_t t = static_cast<int64_t>(tk[k]);
    if (t < 0 || t >= g.C_in) {
      bad.record(t);
      src[k] = e.zeros;
    } else {
      src[k] = e.table + (k * g.C_in + t) * g.C_out;
    }
  }
}

// What one output row reads: its s table rows (s = 2, 3; a2 unused for 2) and its offset row.
template <typename T>
struct RowInputs {
  const T *a0, *a1, *a2, *offset;
  T scale;
};

// Pre-activation of columns [c, c + lanes of V): scale * (a0 + a1 (+ a2)) + offset. The forward and
// relu's recomputed mask both come from here, so they agree bit for bit. (patch_conv's epilogue adds
// bias and pos_bias one after the other, so the two layers may differ in the last bit.)
template <int S, typename V, typename T>
RHMFAST_CPU_INLINE V pre_at(const RowInputs<T>& in, int64_t c) {
  V z = cpu::load<V>(in.a0 + c) + cpu::load<V>(in.a1 + c);
  if constexpr (S == 3) z += cpu::load<V>(in.a2 + c);
  return z * in.scale + cpu::load<V>(in.offset + c);
}

template <Activation A, typename V>
RHMFAST_CPU_INLINE V activate(V z) {
  if constexpr (A == Activation::kRelu) return z > V{} ? z : V{};
  if constexpr (A == Activation::kSquare) return z * z;
  return z;
}

// Row r's offset row.
template <typename T>
RHMFAST_CPU_INLINE const T* offset_row(const Embedding<T>& e, const PatchShape& g, int64_t r) {
  return e.offset_stride == 0 ? e.offset : e.offset + (r % g.T_out) * e.offset_stride;
}

// pre[c - c0] for columns [c0, c1) of output row r, any patch size (the loop for s > 3).
template <typename T>
RHMFAST_CPU_INLINE void preactivation(const T* const* src, const Embedding<T>& e, const PatchShape& g, int64_t r,
                                      int64_t c0, int64_t c1, T* __restrict pre) {
  const int64_t n = c1 - c0;
  const T* __restrict off = offset_row(e, g, r) + c0;
  const T* __restrict a0 = src[0] + c0;
  for (int64_t c = 0; c < n; ++c) pre[c] = a0[c];
  for (int64_t k = 1; k < g.s; ++k) {
    const T* __restrict ak = src[k] + c0;
    for (int64_t c = 0; c < n; ++c) pre[c] += ak[c];
  }
  for (int64_t c = 0; c < n; ++c) pre[c] = pre[c] * e.scale + off[c];
}

// Output row r = act(pre-activation): vectors of columns, then the scalar tail (s = 2, 3).
template <Activation A, int S, typename T>
RHMFAST_CPU_INLINE void embed_row(const T* const* src, const Embedding<T>& e, const PatchShape& g, int64_t r,
                                  T* out) {
  const int64_t C = g.C_out;
  if constexpr (S == 2 || S == 3) {
    const RowInputs<T> in{src[0], src[1], S == 3 ? src[2] : nullptr, offset_row(e, g, r), e.scale};
    int64_t c = 0;
    for (; c + cpu::kLanes<T> <= C; c += cpu::kLanes<T>)
      cpu::store(out + c, activate<A>(pre_at<S, cpu::Vec<T>>(in, c)));
    for (; c < C; ++c) out[c] = activate<A>(pre_at<S, T>(in, c));
  } else {
    preactivation<T>(src, e, g, r, 0, C, out);
    for (int64_t c = 0; c < C; ++c) out[c] = activate<A>(out[c]);
  }
}

// Output rows [r0, r1) of the forward, into y [rows, C].
template <Activation A, int S, typename Tok, typename T>
RHMFAST_CPU_CLONES void embed_rows(const Tok* tokens, const Embedding<T>& e, const PatchShape& g, int64_t r0,
                                   int64_t r1, T* y, BadToken& bad) {
  std::vector<const T*> src(g.s);
  for (int64_t r = r0; r < r1; ++r) {
    row_sources<Tok, T>(tokens, e, g, r, src.data(), bad);
    embed_row<A, S, T>(src.data(), e, g, r, y + r * g.C_out);
  }
}

// How the backward pass splits its work. Blocks (of consecutive output rows) fix the summation order
// and depend on the shapes alone; column slices only split independent columns among threads.
struct BackwardPlan {
  int64_t blocks, rows_per_block, slices, slice_width;
};

// Per replica: the blocks are the solo form's (they fix the bits); only the column slices (which do not)
// depend on K.
BackwardPlan plan_backward(const PatchShape& g, int64_t partial_size) {
  constexpr int64_t kMinRowsPerBlock = 512, kMaxBlocks = 64;
  BackwardPlan p{};
  p.blocks = std::clamp<int64_t>(g.rows() / kMinRowsPerBlock, 1, kMaxBlocks);
  // The partials (blocks - 1 of them) take no more memory than the gradient itself (or 4 MiB of float).
  const int64_t budget = std::max<int64_t>(g.rows() * g.C_out, int64_t{1} << 20);
  while (p.blocks > 1 && (p.blocks - 1) * partial_size > budget) p.blocks /= 2;
  p.rows_per_block = (g.rows() + p.blocks - 1) / p.blocks;
  // Enough tasks to balance the threads: split columns (in multiples of 16) when blocks are few. (Slices
  // narrow enough to keep a partial table in L1 measured slower: they turn the gradient reads strided.)
  const int64_t want = std::max<int64_t>(1, 4 * at::get_num_threads() / (p.blocks * std::max<int64_t>(g.K, 1)));
  p.slices = std::clamp<int64_t>(want, 1, std::max<int64_t>(1, g.C_out / 16));
  p.slice_width = ((g.C_out + p.slices - 1) / p.slices + 15) / 16 * 16;
  p.slices = (g.C_out + p.slice_width - 1) / p.slice_width;
  return p;
}

// Where block p accumulates: the table gradient [s, v, C], the bias sum [C] and the position sums
// [T_out, C], each null when not wanted. Block 0 writes the results themselves.
template <typename T>
struct Sums {
  T* table;
  T* bias;
  T* pos;
};

// Where one row's d = grad * act' goes: its s table rows (o2 unused for s = 2) and the first NSums of
// sum0, sum1 (the bias sum and/or the row's position sums, those wanted), all distinct rows. saved: the
// forward output for relu (null: the mask is recomputed), the pre-activation for square.
template <typename T>
struct RowTargets {
  const T *grad, *saved;
  T *o0, *o1, *o2, *sum0, *sum1;
};

// d for columns [c, c + lanes of V) added into the row's targets (s = 2, 3).
template <Activation A, bool Recompute, int S, int NSums, typename V, typename T>
RHMFAST_CPU_INLINE void scatter_at(const RowInputs<T>& in, const RowTargets<T>& to, int64_t c) {
  const V gc = cpu::load<V>(to.grad + c);  // loaded unconditionally: relu's select is a blend, not a branch
  V d;
  if constexpr (A == Activation::kRelu) {
    V z;
    if constexpr (Recompute) z = pre_at<S, V>(in, c);
    else z = cpu::load<V>(to.saved + c);
    d = z > V{} ? gc : V{};
  } else if constexpr (A == Activation::kSquare) {
    d = T(2) * cpu::load<V>(to.saved + c) * gc;
  } else {
    d = gc;
  }
  cpu::store(to.o0 + c, cpu::load<V>(to.o0 + c) + d);
  cpu::store(to.o1 + c, cpu::load<V>(to.o1 + c) + d);
  if constexpr (S == 3) cpu::store(to.o2 + c, cpu::load<V>(to.o2 + c) + d);
  if constexpr (NSums >= 1) cpu::store(to.sum0 + c, cpu::load<V>(to.sum0 + c) + d);
  if constexpr (NSums == 2) cpu::store(to.sum1 + c, cpu::load<V>(to.sum1 + c) + d);
}

template <Activation A, bool Recompute, int S, int NSums, typename T>
RHMFAST_CPU_INLINE void scatter_row(const RowInputs<T>& in, const RowTargets<T>& to, int64_t n) {
  int64_t c = 0;
  for (; c + cpu::kLanes<T> <= n; c += cpu::kLanes<T>) scatter_at<A, Recompute, S, NSums, cpu::Vec<T>>(in, to, c);
  for (; c < n; ++c) scatter_at<A, Recompute, S, NSums, T>(in, to, c);
}

template <Activation A, int S, int NSums, typename T>
RHMFAST_CPU_INLINE void scatter_row(const RowInputs<T>& in, const RowTargets<T>& to, int64_t n) {
  if (A == Activation::kRelu && to.saved == nullptr)
    scatter_row<A, true, S, NSums>(in, to, n);
  else
    scatter_row<A, false, S, NSums>(in, to, n);
}

// Adds rows [r0, r1), columns [c0, c1) of d = grad * act' into `sums` (zero-initialised), in row order.
// saved: the forward output for relu (null: the mask is recomputed from e), the pre-activation for
// square, unused for none.
template <Activation A, int S, typename Tok, typename T>
RHMFAST_CPU_CLONES void accumulate_block(const Tok* tokens, const T* grad, const T* saved, const Embedding<T>& e,
                                         const PatchShape& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                         Sums<T> sums, BadToken& bad) {
  const int64_t s = g.s, v = g.C_in, C = g.C_out, width = c1 - c0;
  // The table rows of bad ids (or all, when the table gradient is not wanted) go to rows of `trash`
  // (never read), so that every row runs the same loop; its last row holds d for s > 3.
  std::vector<T> trash((s + 1) * width);
  std::vector<const T*> src(s);
  std::vector<T*> dst(s);
  for (int64_t r = r0; r < r1; ++r) {
    const Tok* tk = tokens + r * s;
    for (int64_t k = 0; k < s; ++k) {
      const int64_t t = static_cast<int64_t>(tk[k]);
      const bool ok = t >= 0 && t < v;
      if (!ok) bad.record(t);
      src[k] = (ok ? e.table + (k * v + t) * C : e.zeros) + c0;
      dst[k] = ok && sums.table != nullptr ? sums.table + (k * v + t) * C + c0 : trash.data() + k * width;
    }
    T* bias_sum = sums.bias != nullptr ? sums.bias + c0 : nullptr;
    T* pos_sum = sums.pos != nullptr ? sums.pos + (r % g.T_out) * C + c0 : nullptr;
    const T* gr = grad + r * C + c0;
    const T* sv = saved != nullptr ? saved + r * C + c0 : nullptr;
    if constexpr (S == 2 || S == 3) {
      const RowInputs<T> in{src[0], src[1], S == 3 ? src[2] : nullptr, offset_row(e, g, r) + c0, e.scale};
      RowTargets<T> to{gr, sv, dst[0], dst[1], S == 3 ? dst[2] : nullptr, bias_sum, pos_sum};
      if (bias_sum == nullptr) std::swap(to.sum0, to.sum1);
      switch ((bias_sum != nullptr) + (pos_sum != nullptr)) {
        case 0: scatter_row<A, S, 0>(in, to, width); break;
        case 1: scatter_row<A, S, 1>(in, to, width); break;
        default: scatter_row<A, S, 2>(in, to, width); break;
      }
    } else {
      T* __restrict d = trash.data() + s * width;
      if constexpr (A == Activation::kRelu) {
        if (sv == nullptr) {
          for (int64_t k = 0; k < s; ++k) src[k] -= c0;  // preactivation takes row starts
          preactivation<T>(src.data(), e, g, r, c0, c1, d);
          for (int64_t c = 0; c < width; ++c) {
            const T gc = gr[c];  // loaded unconditionally: a blend, not a branch
            d[c] = d[c] > T(0) ? gc : T(0);
          }
        } else {
          for (int64_t c = 0; c < width; ++c) {
            const T gc = gr[c];
            d[c] = sv[c] > T(0) ? gc : T(0);
          }
        }
      } else if constexpr (A == Activation::kSquare) {
        for (int64_t c = 0; c < width; ++c) d[c] = T(2) * sv[c] * gr[c];
      } else {
        for (int64_t c = 0; c < width; ++c) d[c] = gr[c];
      }
      for (int64_t k = 0; k < s; ++k) {
        T* __restrict row = dst[k];
        for (int64_t c = 0; c < width; ++c) row[c] += d[c];
      }
      if (bias_sum != nullptr)
        for (int64_t c = 0; c < width; ++c) bias_sum[c] += d[c];
      if (pos_sum != nullptr)
        for (int64_t c = 0; c < width; ++c) pos_sum[c] += d[c];
    }
  }
}

// result[i] = ((result[i] + partial_1[i]) + partial_2[i]) + ... over a flat [rows, C] array: the blocks'
// sums added in block order, whichever thread adds them; for each of K replicas (result_k and partials_k
// elements apart).
template <typename T>
void reduce_partials(T* result, int64_t result_k, const T* partials, int64_t partials_k, int64_t n_partials,
                     int64_t partial_stride, int64_t K, int64_t rows, int64_t C) {
  if (n_partials == 0 || rows == 0) return;
  at::parallel_for(0, K * rows, cpu::row_grain(C), [&](int64_t i0, int64_t i1) {
    cpu::for_replica_rows(i0, i1, rows, [&](int64_t k, int64_t r0, int64_t r1) {
      for (int64_t p = 0; p < n_partials; ++p) {
        const T* __restrict src = partials + k * partials_k + p * partial_stride + r0 * C;
        T* __restrict dst = result + k * result_k + r0 * C;
        for (int64_t i = 0; i < (r1 - r0) * C; ++i) dst[i] += src[i];
      }
    });
  });
}

// acc[c] += rows[r][c] for r = 0, 1, ..., n - 1 in order (rows [n, C]).
template <typename T>
void add_rows(T* __restrict acc, const T* __restrict rows, int64_t n, int64_t C) {
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < C; ++c) acc[c] += rows[r * C + c];
}

}  // namespace

at::Tensor token_patch_embed_cpu(const at::Tensor& tokens_in, const at::Tensor& table_in,
                                 const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& pos_bias_in,
                                 int64_t patch_size, double scale, c10::string_view activation) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_token_patch_embed(tokens_in, table_in, bias_in, pos_bias_in, patch_size);
  const at::Tensor tokens = tokens_in.contiguous(), table = table_in.contiguous();
  const at::Tensor offset = offset_of(bias_in, pos_bias_in);
  at::Tensor y =
      g.replica ? empty_replicas(g.out_sizes(), table.options()) : empty_output(g.out_sizes(), table.options());
  BadToken bad;
  if (g.all_rows() > 0) {
    AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "token_patch_embed_cpu", [&] {
      const std::vector<scalar_t> zeros(g.C_out, scalar_t(0));
      const std::vector<Embedding<scalar_t>> es = embeddings_of<scalar_t>(table, offset, zeros, scale, g);
      dispatch_kernel(tokens.scalar_type(), act, g.s, [&](auto tok_tag, auto act_tag, auto s_tag) {
        using Tok = decltype(tok_tag);
        constexpr Activation A = decltype(act_tag)::value;
        constexpr int S = decltype(s_tag)::value;
        const Tok* tk = tokens.data_ptr<Tok>();
        scalar_t* out = y.data_ptr<scalar_t>();
        const int64_t rows = g.rows(), y_k = g.replica ? y.stride(0) : 0;
        at::parallel_for(0, g.all_rows(), cpu::row_grain(g.C_out * g.s), [&](int64_t i0, int64_t i1) {
          cpu::for_replica_rows(i0, i1, rows, [&](int64_t k, int64_t r0, int64_t r1) {
            embed_rows<A, S, Tok, scalar_t>(tk + k * rows * g.s, es[k], g, r0, r1, out + k * y_k, bad);
          });
        });
      });
    });
  }
  bad.raise_if_seen(g.C_in);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_patch_embed_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& tokens_in, const at::Tensor& table_in,
    const std::optional<at::Tensor>& bias_in, const std::optional<at::Tensor>& pos_bias_in,
    const std::optional<at::Tensor>& out, int64_t patch_size, double scale, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const PatchShape g = check_token_patch_embed(tokens_in, table_in, bias_in, pos_bias_in, patch_size);
  check_layer_backward(grad_out, table_in, g, act, out, /*relu_recomputes=*/true, bias_in.has_value(),
                       pos_bias_in.has_value(), output_mask[1], output_mask[2]);
  const at::Tensor tokens = tokens_in.contiguous(), table = table_in.contiguous();
  // Only relu without the forward output recomputes pre-activations, and only they read the offset.
  const bool recompute = act == Activation::kRelu && !out.has_value();
  const at::Tensor offset = recompute ? offset_of(bias_in, pos_bias_in) : at::Tensor();
  at::Tensor saved;
  if (act == Activation::kRelu && out.has_value()) saved = g.replica ? replica_slices_dense(*out) : out->contiguous();
  if (act == Activation::kSquare)
    saved = token_patch_embed_cpu(tokens, table, bias_in, pos_bias_in, patch_size, scale, "none");
  // An ncl layer gets its output gradient channels-first (see channels_last_cpu.h).
  const at::Tensor grad = g.replica ? replica_slices_dense(grad_out) : channels_last_rows_cpu(grad_out).contiguous();
  const auto opts = table.options();
  // Replica-form results: each replica slice aligned like a solo result (patch_conv.h).
  auto zero_result = [&](const std::vector<int64_t>& dims) {
    return g.replica ? empty_replicas(dims, opts).zero_() : at::zeros(dims, opts);
  };
  at::Tensor grad_table = output_mask[0] ? zero_result(table.sizes().vec()) : no_grad_placeholder(table);
  at::Tensor grad_bias = output_mask[1] ? zero_result(g.with_k({g.C_out})) : no_grad_placeholder(table);
  at::Tensor grad_pos = output_mask[2] ? zero_result(g.with_k({g.T_out, g.C_out})) : no_grad_placeholder(table);
  // Elements between replicas of each (0 in the solo form: only replica 0).
  const int64_t gt_k = g.replica ? grad_table.stride(0) : 0, gb_k = g.replica ? grad_bias.stride(0) : 0;
  const int64_t gp_k = g.replica ? grad_pos.stride(0) : 0, grad_k = g.replica ? grad.stride(0) : 0;
  const int64_t saved_k = g.replica && saved.defined() ? saved.stride(0) : 0;
  // Every row's d lands in exactly one k = 0 table row and one position row, so when the table (or
  // position) gradient is computed anyway, the bias gradient is the sum of those rows, and no row adds
  // into it; only a bias gradient wanted alone is summed row by row.
  const bool bias_from_table = output_mask[1] && output_mask[0];
  const bool bias_from_pos = output_mask[1] && !output_mask[0] && output_mask[2];
  const bool bias_by_row = output_mask[1] && !bias_from_table && !bias_from_pos;
  // One block's partial sums: [table | bias | pos] of the wanted parts (of one replica), end to end.
  const int64_t table_k = g.s * g.C_in * g.C_out;  // one replica's table
  const int64_t table_size = output_mask[0] ? table_k : 0, bias_size = bias_by_row ? g.C_out : 0;
  const int64_t pos_size = output_mask[2] ? g.T_out * g.C_out : 0;
  const int64_t partial_size = table_size + bias_size + pos_size;
  if (partial_size == 0 || g.all_rows() == 0) return {grad_table, grad_bias, grad_pos};
  const BackwardPlan plan = plan_backward(g, partial_size);
  const int64_t n = plan.blocks - 1;  // partials per replica
  at::Tensor partials = at::empty({g.K * n, partial_size}, opts);  // each task clears its part
  BadToken bad;
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "token_patch_embed_backward_cpu", [&] {
    const std::vector<scalar_t> zeros(g.C_out, scalar_t(0));
    const std::vector<Embedding<scalar_t>> es = embeddings_of<scalar_t>(table, offset, zeros, scale, g);
    scalar_t* part = partials.data_ptr<scalar_t>();
    auto sums_of = [&](int64_t k, int64_t p) {
      if (p == 0) {
        return Sums<scalar_t>{output_mask[0] ? grad_table.data_ptr<scalar_t>() + k * gt_k : nullptr,
                              bias_by_row ? grad_bias.data_ptr<scalar_t>() + k * gb_k : nullptr,
                              output_mask[2] ? grad_pos.data_ptr<scalar_t>() + k * gp_k : nullptr};
      }
      scalar_t* base = part + (k * n + p - 1) * partial_size;
      return Sums<scalar_t>{output_mask[0] ? base : nullptr, bias_by_row ? base + table_size : nullptr,
                            output_mask[2] ? base + table_size + bias_size : nullptr};
    };
    dispatch_kernel(tokens.scalar_type(), act, g.s, [&](auto tok_tag, auto act_tag, auto s_tag) {
      using Tok = decltype(tok_tag);
      constexpr Activation A = decltype(act_tag)::value;
      constexpr int S = decltype(s_tag)::value;
      const Tok* tk = tokens.data_ptr<Tok>();
      const scalar_t* gr = grad.data_ptr<scalar_t>();
      const scalar_t* sv = saved.defined() ? saved.data_ptr<scalar_t>() : nullptr;
      const int64_t rows = g.rows(), tasks_k = plan.blocks * plan.slices;
      at::parallel_for(0, g.K * tasks_k, 1, [&](int64_t task0, int64_t task1) {
        for (int64_t task = task0; task < task1; ++task) {
          const int64_t k = task / tasks_k, p = task % tasks_k / plan.slices;
          const int64_t c0 = (task % plan.slices) * plan.slice_width;
          const int64_t r0 = p * plan.rows_per_block, r1 = std::min(rows, r0 + plan.rows_per_block);
          const int64_t c1 = std::min(g.C_out, c0 + plan.slice_width);
          if (p > 0) {
            // Cleared by the task that adds into it, a partial starts out in that core's cache (zeroing
            // all partials up front on the calling thread made the op 10-13% slower on warm caches).
            scalar_t* base = part + (k * n + p - 1) * partial_size;
            for (int64_t row = 0; row < partial_size / g.C_out; ++row)
              std::fill(base + row * g.C_out + c0, base + row * g.C_out + c1, scalar_t(0));
          }
          accumulate_block<A, S, Tok, scalar_t>(tk + k * rows * g.s, gr + k * grad_k,
                                                sv != nullptr ? sv + k * saved_k : nullptr, es[k], g, r0, r1, c0, c1,
                                                sums_of(k, p), bad);
        }
      });
    });
    const int64_t pk = n * partial_size;  // one replica's partials
    if (output_mask[0])
      reduce_partials(grad_table.data_ptr<scalar_t>(), gt_k, part, pk, n, partial_size, g.K, g.s * g.C_in, g.C_out);
    if (bias_by_row)
      reduce_partials(grad_bias.data_ptr<scalar_t>(), gb_k, part + table_size, pk, n, partial_size, g.K, 1, g.C_out);
    if (output_mask[2])
      reduce_partials(grad_pos.data_ptr<scalar_t>(), gp_k, part + table_size + bias_size, pk, n, partial_size, g.K,
                      g.T_out, g.C_out);
    for (int64_t k = 0; k < g.K; ++k) {
      scalar_t* gb = output_mask[1] ? grad_bias.data_ptr<scalar_t>() + k * gb_k : nullptr;
      if (bias_from_table) add_rows(gb, grad_table.data_ptr<scalar_t>() + k * gt_k, g.C_in, g.C_out);
      if (bias_from_pos) add_rows(gb, grad_pos.data_ptr<scalar_t>() + k * gp_k, g.T_out, g.C_out);
    }
  });
  bad.raise_if_seen(g.C_in);
  if (output_mask[0] && scale != 1.0) grad_table.mul_(scale);
  return {grad_table, grad_bias, grad_pos};
}

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) {
  m.impl("token_patch_embed", &token_patch_embed_cpu);
  m.impl("token_patch_embed_backward", &token_patch_embed_backward_cpu);
}

}  // namespace rhmfast
