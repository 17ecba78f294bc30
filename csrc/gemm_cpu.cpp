// CPU GEMMs through at::mm or oneDNN (see gemm_cpu.h for the choice).
#include "gemm_cpu.h"

#include <ATen/Context.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/full.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <limits>

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
  return __builtin_cpu_supports("avx512f") && !__builtin_cpu_is("intel");
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

MkldnnMatmul find_onednn_matmul() {
#if defined(__linux__) && defined(__x86_64__)
  // The loaded libtorch_cpu, found from one of its functions (whatever its file is called).
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&at::globalContext), &info) == 0 || info.dli_fname == nullptr) return nullptr;
  void* torch_cpu = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (torch_cpu == nullptr) return nullptr;
  auto f = reinterpret_cast<MkldnnMatmul>(dlsym(torch_cpu, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));
  dlclose(torch_cpu);  // drops only the reference dlopen added
  if (f == nullptr) return nullptr;
  // The probe runs on plain CPU tensors whatever Python dispatch mode is active, and any failure (torch's,
  // oneDNN's, memory) means: not usable.
  c10::impl::ExcludeDispatchKeyGuard no_python(
      c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot}));
  try {
    const at::Tensor one = at::full({1, 1}, 1.0f, at::kFloat);
    at::Tensor out = at::full({1, 1}, std::numeric_limits<float>::quiet_NaN(), at::kFloat);
    f(one, one, out, 0.0f, 2.0f);
    return out.item<float>() == 2.0f ? f : nullptr;
  } catch (...) {
    return nullptr;
  }
#else
  return nullptr;
#endif
}

MkldnnMatmul onednn_matmul() {
  static const MkldnnMatmul fn = find_onednn_matmul();
  return fn;
}

bool onednn_usable() { return at::globalContext().userEnabledMkldnn() && onednn_matmul() != nullptr; }

// macs: the product's multiply-adds (M·N·K; empty products stay on BLAS); -1 asks about large products.
// The private symbol is looked up (and probed) only once everything else says oneDNN.
bool use_onednn(at::ScalarType dtype, int64_t macs) {
  if (dtype != at::kFloat || macs == 0) return false;
  switch (choice().load()) {
    case CpuGemm::kBlas: return false;
    case CpuGemm::kOneDnn: return onednn_usable();
    case CpuGemm::kAuto: {
      // MKL picks its kernels by vendor; other BLAS builds and other CPUs were never found slower than
      // oneDNN, so they keep at::mm. oneDNN's call costs ~10 us more than at::mm's: it lost at 2^23
      // multiply-adds and won by 3 to 5% at 2^24 (measured on the AMD EPYC).
      static const bool prefer = at::hasMKL() && non_intel_avx512_cpu();
      constexpr int64_t kMinMacs = int64_t{1} << 24;
      return prefer && (macs < 0 || macs >= kMinMacs) && onednn_usable();
    }
  }
  return false;
}

}  // namespace

void set_cpu_gemm(const std::string& name) { choice().store(parse_cpu_gemm(name, "cpu_gemm")); }

std::string cpu_gemm_in_use() { return use_onednn(at::kFloat, -1) ? "onednn" : "blas"; }

void matmul_nt_cpu_out(const at::Tensor& a, const at::Tensor& b, double alpha, at::Tensor& out2) {
  // alpha = 0 stays on BLAS: oneDNN's wrapper returns without writing the output then.
  if (alpha != 0.0 && use_onednn(a.scalar_type(), a.size(0) * a.size(1) * b.size(0)))
    onednn_matmul()(a, b.t(), out2, /*beta=*/0.0f, static_cast<float>(alpha));
  else
    at::addmm_out(out2, out2, a, b.t(), /*beta=*/0, alpha);  // beta = 0: out is never read
}

at::Tensor matmul_nt_cpu(const at::Tensor& a, const at::Tensor& b, double alpha, at::IntArrayRef size) {
  at::Tensor out = empty_output(size, a.options());
  at::Tensor out2 = out.view({a.size(0), b.size(0)});
  matmul_nt_cpu_out(a, b, alpha, out2);
  return out;
}

}  // namespace rhmfast
