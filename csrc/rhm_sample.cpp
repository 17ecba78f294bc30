// Device-independent checks and allocation of the rhm_sample / rhm_decode ops (see rhm_sample.h).
#include "rhm_sample.h"

#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <utility>

#include "cpu_clones.h"
#include "large_output_cpu.h"

namespace rhmfast {

namespace {
int64_t dtype_max(at::ScalarType dtype) {
  switch (dtype) {
    case at::kByte: return 255;
    case at::kShort: return 32767;
    case at::kInt: return 2147483647;
    case at::kLong: return INT64_MAX;
    default:
      TORCH_CHECK_TYPE(false, "rhmfast: dtype must be uint8, int16, int32 or int64, got ", dtype);
  }
}
// min and max of p[0 .. n), n >= 1 (a vector loop in the AVX2 clone; SSE2 has no 32-bit min/max).
RHMFAST_CPU_CLONES std::pair<int32_t, int32_t> int32_range(const int32_t* p, int64_t n) {
  int32_t lo = p[0], hi = p[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = std::min(lo, p[i]);
    hi = std::max(hi, p[i]);
  }
  return {lo, hi};
}

// The smallest and largest entry of the int32 rules. On the CPU a plain loop: the tables are small, and
// at::aminmax's threaded reduction cost more than the whole table build of a small sampling call.
std::pair<int64_t, int64_t> rules_range(const at::Tensor& rules) {
  if (!rules.is_cpu()) {
    const auto [lo, hi] = at::aminmax(rules);
    return {lo.item<int64_t>(), hi.item<int64_t>()};
  }
  return int32_range(rules.data_ptr<int32_t>(), rules.numel());
}
}  // namespace

RhmShape check_rules(const at::Tensor& rules, int64_t n_classes, at::ScalarType dtype, bool return_tree) {
  TORCH_CHECK_TYPE(rules.scalar_type() == at::kInt, "rhmfast: rules must be int32, got ", rules.scalar_type());
  TORCH_CHECK(rules.dim() == 4, "rhmfast: rules must have shape [L, R, m, s], got ", rules.sizes());
  TORCH_CHECK(rules.is_contiguous(), "rhmfast: rules must be contiguous");
  const int64_t L = rules.size(0), R = rules.size(1), m = rules.size(2), s = rules.size(3);
  TORCH_CHECK(L >= 1 && L <= 64, "rhmfast: L must be in [1, 64], got ", L);
  TORCH_CHECK(s >= 2, "rhmfast: s must be >= 2, got ", s);
  TORCH_CHECK(m >= 1 && R >= 1, "rhmfast: rules must have m >= 1 and R >= 1 rows, got ", rules.sizes());
  TORCH_CHECK(n_classes >= 1 && n_classes <= R, "rhmfast: n_classes must be in [1, R=", R, "], got ", n_classes);
  // s^L <= 2^31 keeps every word index of a sample below 2^32, as the counter layout assumes.
  double d = 1;
  for (int64_t l = 0; l < L; ++l) d *= static_cast<double>(s);
  TORCH_CHECK_VALUE(d <= static_cast<double>(1ll << 31), "rhmfast: input length s^L must be <= 2^31, got ", d);
  const auto [min_symbol, max_symbol] = rules_range(rules);
  TORCH_CHECK(min_symbol >= 0 && max_symbol < R, "rhmfast: rules entries must be in [0, R=", R,
              "), found values in [", min_symbol, ", ", max_symbol, "]");
  const int64_t top = dtype_max(dtype);
  TORCH_CHECK(max_symbol <= top, "rhmfast: symbols up to ", max_symbol, " do not fit dtype ", dtype,
              " (max ", top, ")");
  TORCH_CHECK(!return_tree || n_classes - 1 <= top, "rhmfast: labels up to ", n_classes - 1,
              " do not fit dtype ", dtype, " of the latent tree");
  RhmShape g;
  g.L = static_cast<int32_t>(L);
  g.R = static_cast<int32_t>(R);
  g.m = static_cast<int32_t>(m);
  g.s = static_cast<int32_t>(s);
  g.n_classes = static_cast<int32_t>(n_classes);
  g.n_internal = level_start(g.s, g.L);
  return g;
}

SampleMode parse_mode(c10::string_view mode) {
  if (mode == "iid") return SampleMode::kIid;
  if (mode == "index") return SampleMode::kIndex;
  TORCH_CHECK_VALUE(false, "rhmfast: mode must be 'iid' or 'index', got '", std::string(mode), "'");
}

uint64_t per_class_count(const RhmShape& g) {
  // n_classes * count <= 2^63 - 1  <=>  count <= limit.
  const uint64_t limit = static_cast<uint64_t>(INT64_MAX) / static_cast<uint64_t>(g.n_classes);
  uint64_t count = 1;
  for (int64_t t = 0; t < g.n_internal; ++t) {
    if (count > limit / static_cast<uint64_t>(g.m)) return 0;
    count *= static_cast<uint64_t>(g.m);
  }
  return count;
}

StreamPlan plan_stream(const RhmShape& g, int64_t n, int64_t start, c10::string_view mode) {
  StreamPlan plan{};
  plan.mode = parse_mode(mode);
  TORCH_CHECK_VALUE(n >= 0, "rhmfast: n must be >= 0, got ", n);
  TORCH_CHECK_VALUE(start >= 0, "rhmfast: start must be >= 0, got ", start);
  TORCH_CHECK_VALUE(n <= INT64_MAX - start, "rhmfast: start + n must be < 2^63");
  plan.start = static_cast<uint64_t>(start);
  if (plan.mode == SampleMode::kIndex) {
    plan.per_class = per_class_count(g);
    TORCH_CHECK_VALUE(plan.per_class != 0, "rhmfast: mode='index' needs pmax < 2^63");
    const uint64_t pmax = plan.per_class * static_cast<uint64_t>(g.n_classes);
    TORCH_CHECK_VALUE(static_cast<uint64_t>(start + n) <= pmax, "rhmfast: mode='index' draws without "
                      "replacement, so start + n must be <= pmax = ", pmax, ", got ", start + n);
    plan.domain = feistel_domain(pmax);
  }
  return plan;
}

at::Tensor check_datum(const RhmShape& g, const at::Tensor& datum, uint64_t* per_class) {
  TORCH_CHECK_TYPE(datum.scalar_type() == at::kLong, "rhmfast: datum numbers must be int64, got ",
                   datum.scalar_type());
  TORCH_CHECK(datum.dim() == 1, "rhmfast: datum numbers must be 1-D, got shape ", datum.sizes());
  *per_class = per_class_count(g);
  TORCH_CHECK_VALUE(*per_class != 0, "rhmfast: decoding needs pmax < 2^63");
  const uint64_t pmax = *per_class * static_cast<uint64_t>(g.n_classes);
  at::Tensor numbers = datum.contiguous();
  if (numbers.numel() > 0) {
    const auto [lo, hi] = at::aminmax(numbers);
    const int64_t lowest = lo.item<int64_t>(), highest = hi.item<int64_t>();
    TORCH_CHECK_VALUE(lowest >= 0 && static_cast<uint64_t>(highest) < pmax, "rhmfast: datum numbers must be in "
                      "[0, pmax = ", pmax, "), got values in [", lowest, ", ", highest, "]");
  }
  return numbers;
}

SampleResult allocate_outputs(const RhmShape& g, int64_t n, at::ScalarType dtype, bool return_tree,
                              const at::TensorOptions& device) {
  const int64_t d = level_start(g.s, g.L + 1) - g.n_internal;  // s^L
  at::Tensor tokens = empty_output({n, d}, device.dtype(dtype));
  at::Tensor labels = empty_output({n}, device.dtype(at::kLong));
  std::vector<at::Tensor> tree;
  if (return_tree) {
    int64_t width = 1;
    for (int32_t l = 0; l < g.L; ++l, width *= g.s) tree.push_back(empty_output({n, width}, device.dtype(dtype)));
  }
  return {tokens, labels, tree};
}

}  // namespace rhmfast
