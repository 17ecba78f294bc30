// Autocast of the patchwise layers' forward ops (patch_conv, token_patch_embed, patch_conv_stack,
// locally_connected).
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

#include <type_traits>
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

// An argument as the kernels get it under autocast: floating tensors, alone, optional or in a list, cast to
// the autocast type (cached_cast casts floats only, so token ids pass unchanged), anything else as it is.
template <c10::DeviceType D, typename Arg>
decltype(auto) autocast_arg(at::ScalarType t, const Arg& arg) {
  if constexpr (std::is_same_v<Arg, at::Tensor> || std::is_same_v<Arg, OptTensor>) {
    return at::autocast::cached_cast(t, arg, D);
  } else if constexpr (std::is_same_v<Arg, Tensors>) {
    return at::autocast::cached_cast(t, at::TensorList(arg), D);
  } else {
    return arg;
  }
}

// The autocast kernel of op Name with C++ signature Fn: its arguments cast, then the op with autocast excluded.
template <c10::DeviceType D, const char* Name, typename Fn>
struct Autocast;

template <c10::DeviceType D, const char* Name, typename Ret, typename... Args>
struct Autocast<D, Name, Ret(Args...)> {
  static Ret call(Args... args) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").typed<Ret(Args...)>();
    const NoAutocast<D> no_autocast;
    const at::ScalarType t = autocast_type<D>();
    return op.call(autocast_arg<D>(t, args)...);
  }
};

constexpr char kPatchConv[] = "rhmfast::patch_conv";
constexpr char kTokenPatchEmbed[] = "rhmfast::token_patch_embed";
constexpr char kPatchConvStack[] = "rhmfast::patch_conv_stack";
constexpr char kLocallyConnected[] = "rhmfast::locally_connected";

// The forward ops' C++ signatures (lists as std::vector, as their other kernels take them). patch_conv and
// token_patch_embed share theirs: (x or tokens, weight or table, bias, pos_bias, patch_size, scale, activation).
using LayerFn = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, int64_t, double,
                           c10::string_view);
using StackFn = Tensors(const at::Tensor&, const at::Tensor&, const Tensors&, const Tensors&, int64_t,
                        const std::vector<double>&, c10::string_view);
using LocallyConnectedFn = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t, double,
                                      c10::string_view);

template <c10::DeviceType D>
void register_autocast(torch::Library& m) {
  m.impl("patch_conv", &Autocast<D, kPatchConv, LayerFn>::call);
  m.impl("token_patch_embed", &Autocast<D, kTokenPatchEmbed, LayerFn>::call);
  m.impl("patch_conv_stack", &Autocast<D, kPatchConvStack, StackFn>::call);
  m.impl("locally_connected", &Autocast<D, kLocallyConnected, LocallyConnectedFn>::call);
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }

// The dispatch key of CUDA's autocast is plain "Autocast"; registering it needs no CUDA in the build.
TORCH_LIBRARY_IMPL(rhmfast, Autocast, m) { register_autocast<c10::DeviceType::CUDA>(m); }

}  // namespace rhmfast
