// Helpers of the CUDA torch glue of the patchwise layers (patch_conv_cuda_glue.cpp,
// token_patch_embed_cuda_glue.cpp): torch types to the launchers' plain types, launch checks, and the
// activation-gradient step both share.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "patch_conv.h"
#include "rhmfast/patch_conv_launch.h"

namespace rhmfast {

inline cuda::FloatType cuda_float_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::FloatType::kFloat32;
    case at::kDouble: return cuda::FloatType::kFloat64;
    case at::kHalf: return cuda::FloatType::kFloat16;
    case at::kBFloat16: return cuda::FloatType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, "rhmfast: unsupported dtype on CUDA: ", t);
  }
}

inline cuda::Act cuda_act(Activation a) {
  switch (a) {
    case Activation::kRelu: return cuda::Act::kRelu;
    case Activation::kSquare: return cuda::Act::kSquare;
    default: return cuda::Act::kNone;
  }
}

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "rhmfast: CUDA kernel ", what, " failed: ", cudaGetErrorString(err));
}

inline const void* ptr_or_null(const std::optional<at::Tensor>& t) { return t ? t->data_ptr() : nullptr; }

// d = grad * act'(saved) on the current stream, plus the bias sums into grad_pos / grad_bias when given.
void activation_grad_cuda(const at::Tensor& grad, const at::Tensor& saved, at::Tensor& d, const PatchShape& g,
                          Activation act, at::Tensor* grad_pos, at::Tensor* grad_bias);

}  // namespace rhmfast
