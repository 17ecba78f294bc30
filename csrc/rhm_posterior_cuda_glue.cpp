// Torch glue of the CUDA kernel of rhm_posterior (rhm_posterior_cuda.cu): the same checks as the CPU kernel
// (rhm_posterior.h), the visible-token range check (one device-to-host sync), outputs and scratch allocated
// on the rules' device, launch on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/where.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "rhm_posterior.h"
#include "rhmfast/rhm_posterior_launch.h"

namespace rhmfast {
namespace {

// Hidden positions may hold anything: they are set to 0 before the range check.
void check_visible_tokens(const at::Tensor& tokens, const std::optional<at::Tensor>& mask, int64_t v) {
  if (tokens.numel() == 0) return;
  const at::Tensor visible = mask.has_value() ? at::where(*mask, 0, tokens) : tokens;
  const auto [lo, hi] = at::aminmax(visible);
  const int64_t min_id = lo.item<int64_t>(), max_id = hi.item<int64_t>();
  if (min_id < 0) fail_visible_token(min_id, v);
  if (max_id >= v) fail_visible_token(max_id, v);
}

PosteriorResult rhm_posterior_cuda(const at::Tensor& rules_in, const at::Tensor& owned_in, const at::Tensor& tokens_in,
                                   const std::optional<at::Tensor>& mask_in, int64_t n_classes, int64_t v,
                                   bool leaves, const std::optional<at::Tensor>& weights_in) {
  TORCH_CHECK_VALUE(rules_in.is_cuda(), "rhmfast: rules must be a CUDA tensor here, got ", rules_in.device());
  const PosteriorShape g = check_posterior_args(rules_in, owned_in, tokens_in, mask_in, n_classes, v, weights_in);
  const c10::cuda::CUDAGuard guard(rules_in.device());
  const at::Tensor rules = rules_in.contiguous(), owned = owned_in.contiguous(), tokens = tokens_in.contiguous();
  const std::optional<at::Tensor> mask =
      mask_in.has_value() ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const at::Tensor weights = weights_in.has_value() ? weights_in->contiguous() : at::Tensor();
  check_visible_tokens(tokens, mask, v);
  auto [posterior, log_prob, leaf_posterior] = allocate_posterior_outputs(g, leaves, rules.options());

  RhmPosteriorLaunch job{};
  job.rules = rules.data_ptr<int32_t>();
  job.owned = owned.data_ptr<bool>();
  job.weights = weights.defined() ? weights.data_ptr<double>() : nullptr;
  job.tokens = tokens.data_ptr();
  job.token_bytes = static_cast<int32_t>(tokens.element_size());
  job.mask = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  job.batch = g.batch;
  job.L = g.L;
  job.R = g.R;
  job.m = g.m;
  job.s = g.s;
  job.v = g.v;
  job.n_classes = g.n_classes;
  job.d = g.d;
  job.n_internal = g.n_internal;
  job.posterior = posterior.data_ptr<double>();
  job.log_prob = log_prob.data_ptr<double>();
  job.leaf_posterior = leaves ? leaf_posterior.data_ptr<double>() : nullptr;
  job.slots = rhm_posterior_cuda_slots(job);
  // The caching allocator keeps the scratch's memory for the kernel, which runs on the current stream like
  // every later use of that memory.
  const at::Tensor scratch = at::empty({job.slots * rhm_posterior_cuda_slot_doubles(job)}, posterior.options());
  job.scratch = scratch.data_ptr<double>();
  const cudaError_t err = rhm_posterior_cuda_launch(job, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rhmfast: rhm_posterior CUDA kernel launch failed: ", cudaGetErrorString(err));
  return {posterior, log_prob, leaf_posterior};
}

}  // namespace

TORCH_LIBRARY_IMPL(rhmfast, CUDA, m) { m.impl("rhm_posterior", &rhm_posterior_cuda); }

}  // namespace rhmfast
