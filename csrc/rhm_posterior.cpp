// Device-independent checks and allocation of the rhm_posterior op (layout contract in rhm_posterior.h).
#include "rhm_posterior.h"

#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

#include "large_output_cpu.h"

namespace rhmfast {

namespace {
bool is_token_dtype(at::ScalarType t) {
  return t == at::kByte || t == at::kShort || t == at::kInt || t == at::kLong;
}

// On the CPU a plain loop: the tables are small and at::aminmax's threaded reduction costs more.
std::pair<int64_t, int64_t> rules_range(const at::Tensor& rules) {
  if (!rules.is_cpu()) {
    const auto [lo, hi] = at::aminmax(rules);
    return {lo.item<int64_t>(), hi.item<int64_t>()};
  }
  const at::Tensor dense = rules.contiguous();
  const int32_t* p = dense.data_ptr<int32_t>();
  const auto [lo, hi] = std::minmax_element(p, p + dense.numel());
  return {*lo, *hi};
}
}  // namespace

PosteriorShape check_posterior_args(const at::Tensor& rules, const at::Tensor& owned, const at::Tensor& tokens,
                                    const std::optional<at::Tensor>& mask, int64_t n_classes, int64_t v,
                                    const std::optional<at::Tensor>& weights) {
  TORCH_CHECK_TYPE(rules.scalar_type() == at::kInt, "rhmfast: rules must be int32, got ", rules.scalar_type());
  TORCH_CHECK_VALUE(rules.dim() == 4, "rhmfast: rules must have shape [L, R, m, s], got ", rules.sizes());
  PosteriorShape g{};
  g.L = rules.size(0);
  g.R = rules.size(1);
  g.m = rules.size(2);
  g.s = rules.size(3);
  TORCH_CHECK_VALUE(g.L >= 1 && g.L <= 64, "rhmfast: L must be in [1, 64], got ", g.L);
  TORCH_CHECK_VALUE(g.s >= 2, "rhmfast: s must be >= 2, got ", g.s);
  TORCH_CHECK_VALUE(g.m >= 1, "rhmfast: rules must have m >= 1 rules per symbol, got shape ", rules.sizes());
  TORCH_CHECK_VALUE(n_classes >= 1, "rhmfast: n_classes must be >= 1, got ", n_classes);
  TORCH_CHECK_VALUE(v >= 1, "rhmfast: v must be >= 1, got ", v);
  TORCH_CHECK_VALUE(g.R >= std::max(n_classes, v), "rhmfast: rules must have R >= max(n_classes, v) = ",
                    std::max(n_classes, v), " rows per level, got shape ", rules.sizes());
  g.n_classes = n_classes;
  g.v = v;
  // s^L <= 2^31 as for sampling; in doubles, so that no power overflows on the way.
  double d = 1;
  for (int64_t l = 0; l < g.L; ++l) d *= static_cast<double>(g.s);
  TORCH_CHECK_VALUE(d <= static_cast<double>(int64_t{1} << 31), "rhmfast: input length s^L must be <= 2^31, got ", d);
  g.d = static_cast<int64_t>(d);
  g.n_internal = (g.d - 1) / (g.s - 1);

  const at::Device device = rules.device();
  TORCH_CHECK_TYPE(owned.scalar_type() == at::kBool, "rhmfast: owned must be bool, got ", owned.scalar_type());
  TORCH_CHECK_VALUE(owned.dim() == 2 && owned.size(0) == g.L && owned.size(1) == g.R,
                    "rhmfast: owned must have shape [L, R] = [", g.L, ", ", g.R, "], got ", owned.sizes());
  TORCH_CHECK_VALUE(owned.device() == device, "rhmfast: owned must be on the rules' device ", device, ", got ",
                    owned.device());
  TORCH_CHECK_TYPE(is_token_dtype(tokens.scalar_type()), "rhmfast: tokens must be uint8, int16, int32 or int64, got ",
                   tokens.scalar_type());
  TORCH_CHECK_VALUE(tokens.dim() == 2 && tokens.size(1) == g.d, "rhmfast: tokens must have shape [B, s^L = ", g.d,
                    "], got ", tokens.sizes());
  TORCH_CHECK_VALUE(tokens.device() == device, "rhmfast: tokens must be on the rules' device ", device, ", got ",
                    tokens.device());
  g.batch = tokens.size(0);
  if (mask.has_value()) {
    TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, "rhmfast: mask must be bool, got ", mask->scalar_type());
    TORCH_CHECK_VALUE(mask->sizes() == tokens.sizes(), "rhmfast: mask must have the shape of tokens ", tokens.sizes(),
                      ", got ", mask->sizes());
    TORCH_CHECK_VALUE(mask->device() == device, "rhmfast: mask must be on the rules' device ", device, ", got ",
                      mask->device());
  }
  if (weights.has_value()) {
    TORCH_CHECK_TYPE(weights->scalar_type() == at::kDouble, "rhmfast: weights must be float64, got ",
                     weights->scalar_type());
    TORCH_CHECK_VALUE(weights->dim() == 3 && weights->size(0) == g.L && weights->size(1) == g.R &&
                          weights->size(2) == g.m,
                      "rhmfast: weights must have shape [L, R, m] = [", g.L, ", ", g.R, ", ", g.m, "], got ",
                      weights->sizes());
    TORCH_CHECK_VALUE(weights->device() == device, "rhmfast: weights must be on the rules' device ", device,
                      ", got ", weights->device());
    if (weights->numel() > 0) {
      const auto [lo, hi] = at::aminmax(*weights);
      const double min_w = lo.item<double>(), max_w = hi.item<double>();
      TORCH_CHECK_VALUE(min_w >= 0 && std::isfinite(max_w), "rhmfast: weights must be finite and >= 0, found values in [",
                        min_w, ", ", max_w, "]");
    }
  }
  const auto [lo, hi] = rules_range(rules);
  TORCH_CHECK_VALUE(lo >= 0 && hi < v, "rhmfast: rules entries must be in [0, v=", v, "), found values in [", lo,
                    ", ", hi, "]");
  return g;
}

void fail_visible_token(int64_t value, int64_t v) {
  TORCH_CHECK_VALUE(false, "rhmfast: tokens must be in [0, v=", v, ") at visible positions, got ", value);
}

PosteriorResult allocate_posterior_outputs(const PosteriorShape& g, bool leaves, const at::TensorOptions& device) {
  const at::TensorOptions options = device.dtype(at::kDouble);
  return {at::empty({g.batch, g.n_classes}, options), at::empty({g.batch}, options),
          leaves ? empty_output({g.batch, g.d, g.v}, options) : at::empty({0}, options)};
}

}  // namespace rhmfast
