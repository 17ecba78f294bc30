// CPU GEMMs through at::mm or oneDNN (see gemm_cpu.h for the choice).
#include "gemm_cpu.h"

#include <ATen/Context.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <dlfcn.h>
#endif

#include "large_output_cpu.h"

namespace rhmfast {
namespace {

CpuGemm parse_cpu_gemm(const std::string& name, const char* what) {
  if (name == "auto") return CpuGemm::kAuto;
  if (name == "blas") return CpuGemm::kBlas;
  if (name == "onednn") return CpuGemm::kOneDnn;
  TORCH_CHECK_VALUE(false, "rhmfast: ", what, " must be 'auto', 'blas' or 'onednn', got '", name, "'");
}

CpuGemm initial_choice() {
  const char* env = std::getenv("RHMFAST_CPU_GEMM");
  return env == nullptr || *env == '\0' ? CpuGemm::kAuto : parse_cpu_gemm(env, "RHMFAST_CPU_GEMM");
}

std::atomic<CpuGemm>& choice() {
  static std::atomic<CpuGemm> c{initial_choice()};
  return c;
}

// An x86-64 CPU with AVX-512 that is not Intel's: where oneDNN was measured faster than MKL.
bool non_intel_avx512_cpu() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
  char vendor[13] = {};
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  if (std::strcmp(vendor, "GenuineIntel") == 0 || eax < 7) return false;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  return (ebx >> 16) & 1u;  // AVX-512F
#else
  return false;
#endif
}

// torch's oneDNN GEMM into a given output, result = beta · result + alpha · mat1 · mat2. libtorch_cpu
// exports it (at::native::mkldnn_matmul) but ships no header for it, so it is looked up by its symbol at
// run time: a torch without it, or with another signature, leaves every GEMM on at::mm instead of
// keeping the extension from loading. One tiny product, run once, checks that it accepts float32 on
// this CPU (torch requires AVX-512 BW/VL/DQ or AVX-NE-CONVERT for that).
using MkldnnMatmul = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);

MkldnnMatmul onednn_matmul() {
  static const MkldnnMatmul fn = []() -> MkldnnMatmul {
#if defined(__linux__) && defined(__x86_64__)
    void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);  // loaded already: the extension links it
    if (torch_cpu == nullptr) return nullptr;
    auto f = reinterpret_cast<MkldnnMatmul>(dlsym(torch_cpu, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));
    dlclose(torch_cpu);  // drops only the reference dlopen added
    if (f == nullptr) return nullptr;
    try {
      const at::Tensor one = at::ones({1, 1}, at::kFloat);
      at::Tensor out = at::empty({1, 1}, at::kFloat);
      f(one, one, out, 0.0f, 2.0f);
      return out.item<float>() == 2.0f ? f : nullptr;
    } catch (const c10::Error&) {
      return nullptr;
    }
#else
    return nullptr;
#endif
  }();
  return fn;
}

bool onednn_usable() { return at::globalContext().userEnabledMkldnn() && onednn_matmul() != nullptr; }

// macs: the product's multiply-adds (M·N·K; empty products stay on BLAS); -1 asks about large products.
bool use_onednn(at::ScalarType dtype, int64_t macs) {
  if (dtype != at::kFloat || macs == 0 || !onednn_usable()) return false;
  switch (choice().load()) {
    case CpuGemm::kBlas: return false;
    case CpuGemm::kOneDnn: return true;
    default: {
      // MKL picks its kernels by vendor; other BLAS builds and other CPUs were never measured against
      // oneDNN, so they keep at::mm. oneDNN's call costs ~10 us more than at::mm's, which it wins back
      // from 2^23 to 2^24 multiply-adds on (measured on the AMD EPYC).
      static const bool prefer = at::hasMKL() && non_intel_avx512_cpu();
      constexpr int64_t kMinMacs = int64_t{1} << 24;
      return prefer && (macs < 0 || macs >= kMinMacs);
    }
  }
}

}  // namespace

void set_cpu_gemm(const std::string& name) { choice().store(parse_cpu_gemm(name, "cpu_gemm")); }

std::string cpu_gemm_in_use() { return use_onednn(at::kFloat, -1) ? "onednn" : "blas"; }

at::Tensor matmul_nt_cpu(const at::Tensor& a, const at::Tensor& b, double alpha, at::IntArrayRef size) {
  at::Tensor out = empty_output(size, a.options());
  at::Tensor out2 = out.view({a.size(0), b.size(0)});
  // alpha = 0 stays on BLAS: oneDNN's wrapper returns without writing the output then.
  if (alpha != 0.0 && use_onednn(a.scalar_type(), a.size(0) * a.size(1) * b.size(0)))
    onednn_matmul()(a, b.t(), out2, /*beta=*/0.0f, static_cast<float>(alpha));
  else
    at::addmm_out(out2, out2, a, b.t(), /*beta=*/0, alpha);  // beta = 0: out is never read
  return out;
}

}  // namespace rhmfast
