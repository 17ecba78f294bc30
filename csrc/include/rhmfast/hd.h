// Portability macro for code shared by the C++ CPU kernels and the CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define RHMFAST_HD __host__ __device__ __forceinline__
#else
#define RHMFAST_HD inline
#endif
