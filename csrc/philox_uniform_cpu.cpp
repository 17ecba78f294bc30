// CPU kernel of philox_uniform: Philox4x32-10 blocks for given counters, optionally mapped exactly to
// [0, bound). The same primitives (rhmfast/rhm_core.h) drive RHM sampling; this op exposes them for the
// known-answer tests and for users who want addressable random numbers.
//   counter int64 [N, 4], entries in [0, 2^32)  ->  int64 [N, 4]
//   bound 0: raw 32-bit words; 1 <= bound < 2^32: word k of block n mapped by uniform_below, a rejected
//   word redrawn from the counter with c3 ^ attempt << 8
//   (the RHM samplers' redraw rule: their purpose word is below 2^8).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "rhmfast/rhm_core.h"

namespace rhmfast {
namespace {

at::Tensor philox_uniform_cpu(const at::Tensor& counter_in, int64_t seed, int64_t bound) {
  TORCH_CHECK_TYPE(counter_in.scalar_type() == at::kLong, "rhmfast: counter must be int64, got ",
                   counter_in.scalar_type());
  TORCH_CHECK(counter_in.dim() == 2 && counter_in.size(1) == 4, "rhmfast: counter must have shape [N, 4], got ",
              counter_in.sizes());
  TORCH_CHECK_VALUE(bound >= 0 && bound <= 0xFFFFFFFFll, "rhmfast: bound must be in [0, 2^32), got ", bound);
  at::Tensor counter = counter_in.contiguous();
  if (counter.numel() > 0) {
    const auto [lo, hi] = at::aminmax(counter);
    TORCH_CHECK_VALUE(lo.item<int64_t>() >= 0 && hi.item<int64_t>() <= 0xFFFFFFFFll,
                      "rhmfast: counter entries must be in [0, 2^32)");
  }
  at::Tensor out = at::empty_like(counter);
  const int64_t* c = counter.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const PhiloxKey key = key_from_seed(static_cast<uint64_t>(seed));
  const uint32_t n = static_cast<uint32_t>(bound);
  at::parallel_for(0, counter.size(0), 4096, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const uint32_t c0 = static_cast<uint32_t>(c[4 * r]), c1 = static_cast<uint32_t>(c[4 * r + 1]);
      const uint32_t c2 = static_cast<uint32_t>(c[4 * r + 2]), c3 = static_cast<uint32_t>(c[4 * r + 3]);
      const Philox4x32 w = philox4x32_10(c0, c1, c2, c3, key.k0, key.k1);
      for (int k = 0; k < 4; ++k) {
        if (n == 0) {
          o[4 * r + k] = w.v[k];
          continue;
        }
        o[4 * r + k] = uniform_below(w.v[k], n, [&](uint32_t attempt) {
          return philox4x32_10(c0, c1, c2, c3 ^ (attempt << 8), key.k0, key.k1).v[k];
        });
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CPU, m) { m.impl("philox_uniform", &philox_uniform_cpu); }

}  // namespace rhmfast
