// Device-independent checks and GEMM views of the patchwise layers (see patch_conv.h).
#include "patch_conv.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <string>

namespace rhmfast {

Activation parse_activation(c10::string_view activation) {
  if (activation == "none") return Activation::kNone;
  if (activation == "relu") return Activation::kRelu;
  if (activation == "square") return Activation::kSquare;
  TORCH_CHECK_VALUE(false, "rhmfast: activation must be 'none', 'relu' or 'square', got '",
                    std::string(activation), "'");
}

namespace {

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

void check_biases(const PatchShape& g, const at::Tensor& weight, const char* weight_name,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& pos_bias) {
  if (bias.has_value()) {
    check_same(*bias, weight, "bias", weight_name);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == g.C_out, "rhmfast: bias must have shape [C_out=", g.C_out,
                      "], got ", bias->sizes());
  }
  if (pos_bias.has_value()) {
    check_same(*pos_bias, weight, "pos_bias", weight_name);
    TORCH_CHECK_VALUE(pos_bias->dim() == 2 && pos_bias->size(0) == g.T_out && pos_bias->size(1) == g.C_out,
                      "rhmfast: pos_bias must have shape [T/s=", g.T_out, ", C_out=", g.C_out, "], got ",
                      pos_bias->sizes());
  }
}

void check_patch_size(int64_t patch_size, int64_t T) {
  TORCH_CHECK_VALUE(patch_size >= 1, "rhmfast: patch_size must be >= 1, got ", patch_size);
  TORCH_CHECK_VALUE(T % patch_size == 0, "rhmfast: input length ", T, " is not a multiple of patch_size ",
                    patch_size);
}

}  // namespace

PatchShape check_patch_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& pos_bias, int64_t patch_size) {
  check_float_dtype(x, "x");
  check_same(weight, x, "weight", "x");
  TORCH_CHECK_VALUE(x.dim() == 3, "rhmfast: x must have shape [B, T, C_in] (channels-last), got ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2, "rhmfast: weight must have shape [C_out, patch_size*C_in], got ",
                    weight.sizes());
  PatchShape g{x.size(0), x.size(1), x.size(2), patch_size, 0, weight.size(0)};
  check_patch_size(patch_size, g.T);
  g.T_out = g.T / patch_size;
  // Compared by division: patch_size * C_in may overflow.
  TORCH_CHECK_VALUE(weight.size(1) % patch_size == 0 && weight.size(1) / patch_size == g.C_in, "rhmfast: weight has ",
                    weight.size(1), " columns but patch_size*C_in = ", patch_size, "*", g.C_in, " = ",
                    static_cast<double>(patch_size) * static_cast<double>(g.C_in));
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
  TORCH_CHECK_VALUE(tokens.dim() == 2, "rhmfast: tokens must have shape [B, T], got ", tokens.sizes());
  TORCH_CHECK_VALUE(table.dim() == 3, "rhmfast: table must have shape [patch_size, vocab_size, C_out], got ",
                    table.sizes());
  TORCH_CHECK_VALUE(table.size(0) == patch_size, "rhmfast: table has ", table.size(0),
                    " patch positions but patch_size is ", patch_size);
  TORCH_CHECK_VALUE(table.size(1) >= 1, "rhmfast: table must have vocab_size >= 1");
  PatchShape g{tokens.size(0), tokens.size(1), table.size(1), patch_size, 0, table.size(2)};
  check_patch_size(patch_size, g.T);
  g.T_out = g.T / patch_size;
  check_biases(g, table, "table", bias, pos_bias);
  return g;
}

void check_layer_backward(const at::Tensor& grad_out, const at::Tensor& params, const PatchShape& g, Activation act,
                          const std::optional<at::Tensor>& out, bool relu_recomputes, bool has_bias, bool has_pos_bias,
                          bool want_bias, bool want_pos_bias) {
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({g.B, g.T_out, g.C_out}),
                    "rhmfast: grad_out must have the output's shape [", g.B, ", ", g.T_out, ", ", g.C_out, "], got ",
                    grad_out.sizes());
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
  return x.reshape({g.rows(), g.s * g.C_in});
}

std::optional<at::Tensor> contiguous_or_none(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->contiguous();
}

at::Tensor no_grad_placeholder(const at::Tensor& like) { return at::empty({0}, like.options()); }

}  // namespace rhmfast
