// Allocation of large CPU outputs, which the kernels write once from end to end.
//
// glibc serves a large block either from memory it already has mapped or, past its mapping threshold
// (which moves with the history of the process) or after it has handed freed memory back to the system,
// from fresh pages whose first write takes a page fault per 4 KiB. Outputs of 4 MiB or more therefore
// get mappings of their own: 2 MiB-aligned, advised to use transparent huge pages (one fault per 2 MiB),
// and, once freed, kept for the next output of the same size in a small cache (at most 16 mappings and
// 256 MiB). Smaller blocks, other devices and other systems get plain at::empty.
#pragma once

#include <ATen/core/Tensor.h>

namespace rhmfast {

at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options);

}  // namespace rhmfast
