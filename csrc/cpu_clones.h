// RHMFAST_CPU_CLONES: compiles a hot CPU loop twice, for AVX2 and for baseline x86-64, and lets the
// loader pick the clone the CPU runs (GCC/Clang function multi-versioning). The extension itself is
// built for baseline x86-64 so that one build runs on any x86-64 machine. AVX2 does not bring FMA, so
// no multiply-add is ever contracted and both clones compute the same bits.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

// RHMFAST_CPU_INLINE marks the helpers such a function calls: inlined, they are compiled into each
// clone; left out of line, they would run the baseline code.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RHMFAST_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#define RHMFAST_CPU_INLINE __attribute__((always_inline)) inline
#else
#define RHMFAST_CPU_CLONES
#define RHMFAST_CPU_INLINE inline
#endif

namespace rhmfast {
namespace cpu {

// 32 bytes of T as one value (GCC/Clang vector extension): one AVX2 register in the avx2 clone, two SSE
// registers in the default one. Kernels write their column loops once, as a template over V = T (the
// tail) or V = Vec<T> (the body), so both compute the same bits; the compiler's own vectoriser gives up
// on loops that read and write many rows it cannot prove apart.
#if defined(__GNUC__) || defined(__clang__)
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename Lanes<T>::type;
template <typename T>
inline constexpr int64_t kLanes = 32 / sizeof(T);
#else  // no vector extension: the "vector" is one element, and the same loops stay correct
template <typename T>
using Vec = T;
template <typename T>
inline constexpr int64_t kLanes = 1;
#endif

// Functions that take or return a Vec are always inlined (RHMFAST_CPU_INLINE), so a 32-byte vector
// never crosses a call; GCC's warning that AVX passes such values differently from baseline x86-64 is
// therefore moot in every file that uses Vec.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

template <typename V, typename T>
RHMFAST_CPU_INLINE V load(const T* p) {
  if constexpr (std::is_same_v<V, T>) {
    return *p;
  } else {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
}

template <typename V, typename T>
RHMFAST_CPU_INLINE void store(T* p, V v) {
  if constexpr (std::is_same_v<V, T>) {
    *p = v;
  } else {
    std::memcpy(p, &v, sizeof v);
  }
}

}  // namespace cpu
}  // namespace rhmfast
