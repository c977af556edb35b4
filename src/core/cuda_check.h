// Checked CUDA runtime and cuBLAS calls: a failing call throws sagellm::Error naming the error,
// the expression and where it was made, so a GPU failure is one clear message, never a crash.
//
// Usable from .cpp and .cu files. nvcc cannot compile fmt (core/error.h), so the throwing
// happens out of line (core/cuda_device.cpp) and this header includes only CUDA headers.
#pragma once

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include <string>

namespace sagellm::detail {

// Throws sagellm::Error(message). For code compiled by nvcc, which cannot include core/error.h.
[[noreturn]] void throw_error(const std::string& message);

// "CUDA error <name>: <description> at <file>:<line> in <expr>".
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line);

// "cuBLAS error <name>: <description> at <file>:<line> in <expr>".
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file,
                                     int line);

// Names and descriptions of cuBLAS statuses without linking libcublas (cuBLASLt has no such
// function, and libcublas is a large library to load just for a string).
const char* cublas_status_name(cublasStatus_t status);
const char* cublas_status_description(cublasStatus_t status);

}  // namespace sagellm::detail

#define SAGELLM_CUDA_CHECK(expr)                                                         \
  do {                                                                                   \
    const cudaError_t sagellm_cuda_err_ = (expr);                                        \
    if (sagellm_cuda_err_ != cudaSuccess) {                                              \
      ::sagellm::detail::throw_cuda_error(sagellm_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                                    \
  } while (0)

// After a kernel launch: reports a bad launch configuration (and any earlier asynchronous error)
// where it happened. Defining SAGELLM_CUDA_SYNC_AFTER_LAUNCH also waits for the kernel, so a fault
// inside it is reported at its launch site (debugging only; it breaks CUDA graph capture).
#ifdef SAGELLM_CUDA_SYNC_AFTER_LAUNCH
#define SAGELLM_CUDA_CHECK_LAUNCH()              \
  do {                                           \
    SAGELLM_CUDA_CHECK(cudaGetLastError());      \
    SAGELLM_CUDA_CHECK(cudaDeviceSynchronize()); \
  } while (0)
#else
#define SAGELLM_CUDA_CHECK_LAUNCH()                                                                \
  do {                                                                                             \
    const cudaError_t sagellm_cuda_err_ = cudaGetLastError();                                      \
    if (sagellm_cuda_err_ != cudaSuccess) {                                                        \
      ::sagellm::detail::throw_cuda_error(sagellm_cuda_err_, "kernel launch", __FILE__, __LINE__); \
    }                                                                                              \
  } while (0)
#endif

#define SAGELLM_CUBLAS_CHECK(expr)                                                          \
  do {                                                                                      \
    const cublasStatus_t sagellm_cublas_st_ = (expr);                                       \
    if (sagellm_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                      \
      ::sagellm::detail::throw_cublas_error(sagellm_cublas_st_, #expr, __FILE__, __LINE__); \
    }                                                                                       \
  } while (0)
