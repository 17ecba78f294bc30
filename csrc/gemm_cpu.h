// The CPU GEMMs of the patchwise layers, and which library computes them.
//
// torch's CPU builds carry two GEMM libraries: the BLAS behind at::mm (MKL on x86-64 wheels) and
// oneDNN. MKL picks its fast kernels by CPU vendor; on an AMD EPYC with AVX-512 oneDNN's float32 matmul
// ran the layers' GEMMs up to 1.7x as fast (benchmarks/README.md). So by default a float32 GEMM goes to
// oneDNN when the CPU is an x86-64 with AVX-512 that is not Intel's, torch's BLAS is MKL, oneDNN is
// enabled (torch.backends.mkldnn) and the product has at least 2^24 multiply-adds (below, oneDNN's
// larger call overhead loses). Everything else goes to at::mm: float64, Intel CPUs, CPUs without
// AVX-512 (oneDNN was not faster on the AVX2 EPYC), other builds. set_cpu_gemm() and RHMFAST_CPU_GEMM
// override the choice: "blas" sends every product to at::mm, "onednn" every float32 product, of any size,
// to oneDNN, as far as oneDNN is usable (Linux x86-64, a CPU torch runs its float32 oneDNN matmul on,
// torch.backends.mkldnn enabled); where it is not, products stay on at::mm. Both libraries are deterministic for a fixed thread count, so a run repeats bit
// for bit under either; the two differ from each other in the last bits.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace rhmfast {

enum class CpuGemm { kAuto, kBlas, kOneDnn };

// "auto", "blas" or "onednn" (ValueError otherwise); the initial value comes from RHMFAST_CPU_GEMM.
void set_cpu_gemm(const std::string& name);
// The library that computes large float32 GEMMs now (auto and usability resolved): "blas" or "onednn".
std::string cpu_gemm_in_use();

// alpha · a · bᵀ for a [M, K] (contiguous, or a view with unit column stride) and b [N, K] (contiguous
// or transposed): a new contiguous tensor of shape `size` (M·N elements). Large results reuse freed
// mappings (large_output_cpu.h).
at::Tensor matmul_nt_cpu(const at::Tensor& a, const at::Tensor& b, double alpha, at::IntArrayRef size);

// The same product written into out [M, N] (contiguous, e.g. one replica's slice of a replica-form
// output; never read): the same library call, so the same bits as matmul_nt_cpu.
void matmul_nt_cpu_out(const at::Tensor& a, const at::Tensor& b, double alpha, at::Tensor& out);

}  // namespace rhmfast
