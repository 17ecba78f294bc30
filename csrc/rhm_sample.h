// Torch-side contract of the rhm_sample / rhm_decode ops, shared by the CPU kernel and the CUDA glue:
// argument checks and output allocation, so both devices reject the same inputs with the same words.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <tuple>
#include <vector>

#include "rhmfast/rhm_core.h"

namespace rhmfast {

using SampleResult = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>>;

enum class SampleMode { kIid, kIndex };

// Checks the rule table and returns the grammar's shape; rules must be int32 [L, R, m, s] with
// entries in [0, R) and the output dtype must hold every symbol.
RhmShape check_rules(const at::Tensor& rules, int64_t n_classes, at::ScalarType dtype, bool return_tree);

SampleMode parse_mode(c10::string_view mode);

// n_classes * m^n_internal when it is below 2^63, else 0 (index mode and decoding are impossible).
uint64_t per_class_count(const RhmShape& g);

// Where a sampling call reads its stream: samples start .. start + n - 1 of the given mode; for index
// mode also the permutation domain [0, pmax) and pmax / n_classes. Checks start, n and pmax.
struct StreamPlan {
  SampleMode mode;
  uint64_t start;
  uint64_t per_class;     // index mode
  FeistelDomain domain;   // index mode
};
StreamPlan plan_stream(const RhmShape& g, int64_t n, int64_t start, c10::string_view mode);

// Checks datum numbers (int64, 1-D, in [0, pmax)); returns them contiguous and sets *per_class.
at::Tensor check_datum(const RhmShape& g, const at::Tensor& datum, uint64_t* per_class);

// tokens [n, s^L], labels [n] int64 and, if asked, the internal levels 0..L-1 ([n, s^l]); large CPU ones
// from empty_output (large_output_cpu.h).
SampleResult allocate_outputs(const RhmShape& g, int64_t n, at::ScalarType dtype, bool return_tree,
                              const at::TensorOptions& device);

// The Philox path the CPU sampler runs: "avx512", "avx2" or "scalar" (RHMFAST_CPU_SIMD caps it).
const char* rhm_sample_cpu_simd();

}  // namespace rhmfast
