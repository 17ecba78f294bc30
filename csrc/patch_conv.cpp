// Device-independent checks and GEMM views of the patchwise layers (see patch_conv.h).
#include "patch_conv.h"

#include "large_output_cpu.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace rhmfast {

Activation parse_activation(c10::string_view activation) {
  if (activation == "none") return Activation::kNone;
  if (activation == "relu") return Activation::kRelu;
  if (activation == "square") return Activation::kSquare;
  TORCH_CHECK_VALUE(false, "rhmfast: activation must be 'none', 'relu' or 'square', got '",
                    std::string(activation), "'");
}

void check_float_dtype(const at::Tensor& t, const char* name) {
  const at::ScalarType d = t.scalar_type();
  if (t.is_cuda()) {
    TORCH_CHECK_TYPE(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, "rhmfast: ",
                     name, " must be float32, float64, float16 or bfloat16 on CUDA, got ", d);
  } else {
    TORCH_CHECK_TYPE(d == at::kFloat || d == at::kDouble, "rhmfast: ", name,
                     " must be float32 or float64 on CPU, got ", d);
  }
}

void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "rhmfast: ", name, " is on ", t.device(), ", ", ref_name, " on ",
                    ref.device(), ": they must be on one device");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "rhmfast: ", name, " has dtype ", t.scalar_type(), ", ",
                   ref_name, " ", ref.scalar_type(), ": they must have one dtype");
}

void check_patch_size(int64_t patch_size, int64_t T) {
  TORCH_CHECK_VALUE(patch_size >= 1, "rhmfast: patch_size must be >= 1, got ", patch_size);
  TORCH_CHECK_VALUE(T % patch_size == 0, "rhmfast: input length ", T, " is not a multiple of patch_size ",
                    patch_size);
}

void check_weight_columns(int64_t cols, int64_t patch_size, int64_t C_in) {
  // Compared by division: patch_size * C_in may overflow.
  TORCH_CHECK_VALUE(cols % patch_size == 0 && cols / patch_size == C_in, "rhmfast: weight has ", cols,
                    " columns but patch_size*C_in = ", patch_size, "*", C_in, " = ",
                    static_cast<double>(patch_size) * static_cast<double>(C_in));
}

namespace {

void check_biases(const PatchShape& g, const at::Tensor& weight, const char* weight_name,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias) {
  if (bias.has_value()) {
    check_same(*bias, weight, "bias", weight_name);
    if (g.replica) {
      TORCH_CHECK_VALUE(bias->dim() == 2 && bias->size(0) == g.K && bias->size(1) == g.C_out,
                        "rhmfast: bias must have shape [K=", g.K, ", C_out=", g.C_out, "] (replica form), got ",
                        bias->sizes());
    } else {
      TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == g.C_out, "rhmfast: bias must have shape [C_out=",
                        g.C_out, "], got ", bias->sizes());
    }
  }
  if (pos_bias.has_value()) {
    check_same(*pos_bias, weight, "pos_bias", weight_name);
    if (g.replica) {
      TORCH_CHECK_VALUE(pos_bias->dim() == 3 && pos_bias->size(0) == g.K && pos_bias->size(1) == g.T_out &&
                            pos_bias->size(2) == g.C_out,
                        "rhmfast: pos_bias must have shape [K=", g.K, ", T/s=", g.T_out, ", C_out=", g.C_out,
                        "] (replica form), got ", pos_bias->sizes());
    } else {
      TORCH_CHECK_VALUE(pos_bias->dim() == 2 && pos_bias->size(0) == g.T_out && pos_bias->size(1) == g.C_out,
                        "rhmfast: pos_bias must have shape [T/s=", g.T_out, ", C_out=", g.C_out, "], got ",
                        pos_bias->sizes());
    }
  }
}

// The replica form's shape checks of the two main tensors a (chosen as the data) and b (the
// parameters): dims (a mixed form names the argument that does not fit) and one K. Returns K.
int64_t check_replica_pair(const at::Tensor& a, const char* a_name, const char* a_shape, const at::Tensor& b,
                           const char* b_name, const char* b_shape) {
  TORCH_CHECK_VALUE(a.dim() == static_cast<int64_t>(std::count(a_shape, a_shape + std::strlen(a_shape), ',')) + 1,
                    "rhmfast: ", a_name, " must have shape ", a_shape, " (replica form, as ", b_name, " is ",
                    b_shape, "), got ", a.sizes());
  TORCH_CHECK_VALUE(b.dim() == static_cast<int64_t>(std::count(b_shape, b_shape + std::strlen(b_shape), ',')) + 1,
                    "rhmfast: ", b_name, " must have shape ", b_shape, " (replica form, as ", a_name, " is ",
                    a_shape, "), got ", b.sizes());
  TORCH_CHECK_VALUE(a.size(0) == b.size(0), "rhmfast: ", a_name, " has K=", a.size(0), " replicas but ", b_name,
                    " has K=", b.size(0), ": the replica dim (dim 0) must agree");
  return a.size(0);
}

}  // namespace

PatchShape check_patch_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos_bias, int64_t patch_size) {
  check_float_dtype(x, "x");
  check_same(weight, x, "weight", "x");
  const bool replica = x.dim() == 4 || weight.dim() == 3;
  int64_t K = 1;
  if (replica) {
    K = check_replica_pair(x, "x", "[K, B, T, C_in]", weight, "weight", "[K, C_out, patch_size*C_in]");
  } else {
    TORCH_CHECK_VALUE(x.dim() == 3, "rhmfast: x must have shape [B, T, C_in] (channels-last), got ", x.sizes());
    TORCH_CHECK_VALUE(weight.dim() == 2, "rhmfast: weight must have shape [C_out, patch_size*C_in], got ",
                      weight.sizes());
  }
  const int64_t o = replica ? 1 : 0;  // dims of x and weight past the replica dim
  PatchShape g{x.size(o), x.size(o + 1), x.size(o + 2), patch_size, 0, weight.size(o)};
  g.K = K;
  g.replica = replica;
  check_patch_size(patch_size, g.T);
  g.T_out = g.T / patch_size;
  check_weight_columns(weight.size(o + 1), patch_size, g.C_in);
  check_biases(g, weight, "weight", bias, pos_bias);
  return g;
}

PatchShape check_token_patch_embed(const at::Tensor& tokens, const at::Tensor& table,
                                   const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias,
                                   int64_t patch_size) {
  const at::ScalarType d = tokens.scalar_type();
  TORCH_CHECK_TYPE(d == at::kByte || d == at::kShort || d == at::kInt || d == at::kLong,
                   "rhmfast: tokens must be uint8, int16, int32 or int64, got ", d);
  check_float_dtype(table, "table");
  TORCH_CHECK_VALUE(tokens.device() == table.device(), "rhmfast: tokens are on ", tokens.device(), " but table is on ",
              table.device());
  const bool replica = tokens.dim() == 3 || table.dim() == 4;
  int64_t K = 1;
  if (replica) {
    K = check_replica_pair(tokens, "tokens", "[K, B, T]", table, "table", "[K, patch_size, vocab_size, C_out]");
  } else {
    TORCH_CHECK_VALUE(tokens.dim() == 2, "rhmfast: tokens must have shape [B, T], got ", tokens.sizes());
    TORCH_CHECK_VALUE(table.dim() == 3, "rhmfast: table must have shape [patch_size, vocab_size, C_out], got ",
                      table.sizes());
  }
  const int64_t o = replica ? 1 : 0;
  TORCH_CHECK_VALUE(table.size(o) == patch_size, "rhmfast: table has ", table.size(o),
                    " patch positions but patch_size is ", patch_size);
  TORCH_CHECK_VALUE(table.size(o + 1) >= 1, "rhmfast: table must have vocab_size >= 1");
  PatchShape g{tokens.size(o), tokens.size(o + 1), table.size(o + 1), patch_size, 0, table.size(o + 2)};
  g.K = K;
  g.replica = replica;
  check_patch_size(patch_size, g.T);
  g.T_out = g.T / patch_size;
  check_biases(g, table, "table", bias, pos_bias);
  return g;
}

void check_layer_backward(const at::Tensor& grad_out, const at::Tensor& params, const PatchShape& g, Activation act,
                          const std::optional<at::Tensor>& out, bool relu_recomputes, bool has_bias, bool has_pos_bias,
                          bool want_bias, bool want_pos_bias) {
  const std::vector<int64_t> shape = g.out_sizes();
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(shape), "rhmfast: grad_out must have the output's shape ",
                    at::IntArrayRef(shape), ", got ", grad_out.sizes());
  check_same(grad_out, params, "grad_out", "the weights");
  TORCH_CHECK_VALUE(act != Activation::kRelu || relu_recomputes || out.has_value(),
                    "rhmfast: relu backward needs the forward output `out` of shape ", grad_out.sizes());
  if (out.has_value() && act == Activation::kRelu) {
    TORCH_CHECK_VALUE(out->sizes() == grad_out.sizes(), "rhmfast: out must have the output's shape ",
                      grad_out.sizes(), ", got ", out->sizes());
    check_same(*out, params, "out", "the weights");
  }
  TORCH_CHECK_VALUE(!want_bias || has_bias, "rhmfast: grad of bias asked for but bias is None");
  TORCH_CHECK_VALUE(!want_pos_bias || has_pos_bias, "rhmfast: grad of pos_bias asked for but pos_bias is None");
}

at::Tensor patch_rows(const at::Tensor& x, const PatchShape& g) {
  // reshape is a view whenever x's [T, C] part is dense row-major (channels-last contiguous, or a
  // batch slice of it); otherwise it copies, which is exactly the im2col a channels-first input needs.
  if (g.replica) return x.reshape({g.K, g.rows(), g.s * g.C_in});
  return x.reshape({g.rows(), g.s * g.C_in});
}

int64_t replica_stride(int64_t K, int64_t per_replica, int64_t element_size) {
  constexpr int64_t kAlign = 64;  // bytes: the CPU allocator's alignment of a fresh tensor
  const int64_t bytes = per_replica * element_size;
  if (K <= 1 || bytes % kAlign == 0) return per_replica;
  return (bytes + kAlign - 1) / kAlign * kAlign / element_size;
}

namespace {

// Contiguous strides of sizes[1:] (a size-1 or size-0 dim counts as 1, as torch's own), with `first` in front.
std::vector<int64_t> replica_strides(at::IntArrayRef sizes, int64_t first) {
  std::vector<int64_t> strides(sizes.size());
  int64_t st = 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 1; --d) {
    strides[d] = st;
    st *= std::max<int64_t>(sizes[d], 1);
  }
  strides[0] = first;
  return strides;
}

}  // namespace

at::Tensor empty_replicas(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t per = 1;
  for (size_t d = 1; d < sizes.size(); ++d) per *= sizes[d];
  const int64_t K = sizes[0];
  const int64_t stride0 = replica_stride(K, per, static_cast<int64_t>(options.dtype().itemsize()));
  if (stride0 == per) return empty_output(sizes, options);
  return empty_output({K * stride0}, options).as_strided(sizes, replica_strides(sizes, stride0));
}

at::Tensor replica_slices_dense(const at::Tensor& t) {
  int64_t st = 1;
  bool dense = true;
  for (int64_t d = t.dim() - 1; d >= 1 && dense; --d) {
    if (t.size(d) != 1 && t.stride(d) != st) dense = false;
    st *= t.size(d);
  }
  if (dense) return t;
  at::Tensor out = empty_replicas(t.sizes(), t.options());
  out.copy_(t);
  return out;
}

std::optional<at::Tensor> contiguous_or_none(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

at::Tensor no_grad_placeholder(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace rhmfast
