// Torch glue of the CUDA kernels of rhm_sample / rhm_decode (rhm_sample_cuda.cu): the same checks as
// the CPU kernel (rhm_sample.h), outputs allocated on the rules' device, launch on the current stream.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <vector>

#include "rhm_sample.h"
#include "rhmfast/rhm_sample_launch.h"

namespace rhmfast {
namespace {

int32_t symbol_bytes(at::ScalarType dtype) {
  switch (dtype) {
    case at::kByte: return 1;
    case at::kShort: return 2;
    case at::kInt: return 4;
    default: return 8;  // dtype checked in check_rules
  }
}

RhmShape check_cuda_rules(const at::Tensor& rules, int64_t n_classes, at::ScalarType dtype, bool return_tree) {
  TORCH_CHECK(rules.is_cuda(), "rhmfast: rules must be a CUDA tensor here, got ", rules.device());
  const RhmShape g = check_rules(rules, n_classes, dtype, return_tree);
  TORCH_CHECK(rhm_sample_cuda_supported(g), "rhmfast: the CUDA kernel needs a rule table with fewer than 2^32 "
              "entries, got shape ", rules.sizes());
  return g;
}

SampleResult run(const at::Tensor& rules, RhmSampleLaunch job, int64_t n, at::ScalarType dtype, bool return_tree) {
  auto [tokens, labels, tree] = allocate_outputs(job.shape, n, dtype, return_tree, rules.options());
  job.rules = rules.data_ptr<int32_t>();
  job.n = n;
  job.symbol_bytes = symbol_bytes(dtype);
  job.tokens = tokens.data_ptr();
  job.labels = labels.data_ptr<int64_t>();
  for (size_t l = 0; l < tree.size(); ++l) job.tree[l] = tree[l].data_ptr();
  const cudaError_t err = rhm_sample_cuda_launch(job, c10::cuda::getCurrentCUDAStream(rules.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "rhmfast: rhm_sample CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {tokens, labels, tree};
}

SampleResult rhm_sample_cuda(const at::Tensor& rules, int64_t n_classes, int64_t n, int64_t seed, int64_t start,
                             c10::string_view mode, at::ScalarType dtype, bool return_tree) {
  RhmSampleLaunch job{};
  job.shape = check_cuda_rules(rules, n_classes, dtype, return_tree);  // before the guard: rules may be on the CPU
  const c10::cuda::CUDAGuard guard(rules.device());
  const StreamPlan plan = plan_stream(job.shape, n, start, mode);
  job.source = plan.mode == SampleMode::kIndex ? RhmSource::kIndex : RhmSource::kIid;
  job.start = plan.start;
  job.per_class = plan.per_class;
  job.domain = plan.domain;
  job.key = key_from_seed(static_cast<uint64_t>(seed));
  return run(rules, job, n, dtype, return_tree);
}

SampleResult rhm_decode_cuda(const at::Tensor& rules, const at::Tensor& datum, int64_t n_classes,
                             at::ScalarType dtype, bool return_tree) {
  RhmSampleLaunch job{};
  job.shape = check_cuda_rules(rules, n_classes, dtype, return_tree);  // before the guard: rules may be on the CPU
  const c10::cuda::CUDAGuard guard(rules.device());
  job.source = RhmSource::kDecode;
  TORCH_CHECK_VALUE(datum.device() == rules.device(), "rhmfast: datum numbers must be on the rules' device ",
              rules.device(), ", got ", datum.device());
  const at::Tensor numbers = check_datum(job.shape, datum, &job.per_class);
  job.datum = numbers.data_ptr<int64_t>();
  // `numbers` may be a temporary copy: the caching allocator keeps its memory for the kernel, which
  // runs on the current stream like every later use of that memory.
  return run(rules, job, numbers.size(0), dtype, return_tree);
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CUDA, m) {
  m.impl("rhm_sample", &rhm_sample_cuda);
  m.impl("rhm_decode", &rhm_decode_cuda);
}

}  // namespace rhmfast
