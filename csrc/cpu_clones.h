// RHMFAST_CPU_CLONES: compiles a hot CPU loop twice, for AVX2 and for baseline x86-64, and lets the
// loader pick the clone the CPU runs (GCC/Clang function multi-versioning). The extension itself is
// built for baseline x86-64 so that one build runs on any x86-64 machine. AVX2 does not bring FMA, so
// no multiply-add is ever contracted and both clones compute the same bits.
#pragma once

//
// RHMFAST_CPU_INLINE marks the helpers such a function calls: inlined, they are compiled into each
// clone; left out of line, they would run the baseline code.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RHMFAST_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#define RHMFAST_CPU_INLINE __attribute__((always_inline)) inline
#else
#define RHMFAST_CPU_CLONES
#define RHMFAST_CPU_INLINE inline
#endif
