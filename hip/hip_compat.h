// Lets the .hip sources build either with hipcc (ROCm, FUMJAX_USE_HIP defined) or with nvcc
// (CUDA): under CUDA the hip* runtime names used by fumjax map onto their cuda* equivalents.
#ifndef FUMJAX_HIP_HIP_COMPAT_H_
#define FUMJAX_HIP_HIP_COMPAT_H_

#if defined(FUMJAX_USE_HIP)
#include <hip/hip_runtime.h>
#else
#include <cuda_runtime.h>

#define hipStream_t cudaStream_t
#define hipError_t cudaError_t
#define hipSuccess cudaSuccess
#define hipGetLastError cudaGetLastError
#define hipPeekAtLastError cudaPeekAtLastError
#define hipGetErrorString cudaGetErrorString
#define hipGetErrorName cudaGetErrorName
#endif

#endif  // FUMJAX_HIP_HIP_COMPAT_H_
