// Autocast of the patchwise layers' forward ops (patch_conv, token_patch_embed, patch_conv_stack).
//
// Inside torch.autocast a layer receives inputs in whatever precision the layers before it produced
// (say float16 activations and float32 weights), which the kernels refuse as a dtype mismatch. As
// autocast does for nn.Conv1d and nn.Linear, the floating inputs are cast to one type first, and the op
// then runs with autocast excluded:
//   - CUDA: the autocast dtype (float16 or bfloat16), which the CUDA kernels compute in;
//   - CPU: float32, the narrowest type the CPU kernels take (they have no bfloat16 path).
// float64 tensors and token ids are left as they are (autocast's own rule). The backward ops need no
// rule: they run on the dtypes the forward saved.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

namespace rhmfast {
namespace {

using OptTensor = std::optional<at::Tensor>;
using Tensors = std::vector<at::Tensor>;

template <c10::DeviceType D>
at::ScalarType autocast_type() {
  return D == c10::DeviceType::CPU ? at::kFloat : at::autocast::get_autocast_dtype(D);
}

template <c10::DeviceType D>
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{at::autocast::get_autocast_dispatch_key_from_device_type(D)};
};

// patch_conv and token_patch_embed share their signature: (x or tokens, weight or table, bias, pos_bias,
// patch_size, scale, activation). Token ids pass through cached_cast unchanged (it casts floats only).
template <c10::DeviceType D, const char* Name>
at::Tensor layer_autocast(const at::Tensor& input, const at::Tensor& weight, const OptTensor& bias,
                          const OptTensor& pos_bias, int64_t patch_size, double scale, c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow(Name, "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                               const OptTensor&, int64_t, double, c10::string_view)>();
  const NoAutocast<D> no_autocast;
  const at::ScalarType t = autocast_type<D>();
  using at::autocast::cached_cast;
  return op.call(cached_cast(t, input, D), cached_cast(t, weight, D), cached_cast(t, bias, D),
                 cached_cast(t, pos_bias, D), patch_size, scale, activation);
}

constexpr char kPatchConv[] = "rhmfast::patch_conv";
constexpr char kTokenPatchEmbed[] = "rhmfast::token_patch_embed";

// Lists as std::vector, the C++ signature of patch_conv_stack's other kernels.
template <c10::DeviceType D>
Tensors patch_conv_stack_autocast(const at::Tensor& tokens, const at::Tensor& table, const Tensors& weights,
                                  const Tensors& biases, int64_t patch_size, const std::vector<double>& scales,
                                  c10::string_view activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rhmfast::patch_conv_stack", "")
                             .typed<Tensors(const at::Tensor&, const at::Tensor&, const Tensors&, const Tensors&,
                                            int64_t, const std::vector<double>&, c10::string_view)>();
  const NoAutocast<D> no_autocast;
  const at::ScalarType t = autocast_type<D>();
  using at::autocast::cached_cast;
  return op.call(tokens, cached_cast(t, table, D), cached_cast(t, at::TensorList(weights), D),
                 cached_cast(t, at::TensorList(biases), D), patch_size, scales, activation);
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, AutocastCPU, m) {
  m.impl("patch_conv", &layer_autocast<c10::DeviceType::CPU, kPatchConv>);
  m.impl("token_patch_embed", &layer_autocast<c10::DeviceType::CPU, kTokenPatchEmbed>);
  m.impl("patch_conv_stack", &patch_conv_stack_autocast<c10::DeviceType::CPU>);
}

// The dispatch key of CUDA's autocast is plain "Autocast"; registering it needs no CUDA in the build.
TORCH_LIBRARY_IMPL(rhmfast, Autocast, m) {
  m.impl("patch_conv", &layer_autocast<c10::DeviceType::CUDA, kPatchConv>);
  m.impl("token_patch_embed", &layer_autocast<c10::DeviceType::CUDA, kTokenPatchEmbed>);
  m.impl("patch_conv_stack", &patch_conv_stack_autocast<c10::DeviceType::CUDA>);
}

}  // namespace rhmfast
