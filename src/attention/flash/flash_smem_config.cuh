// Raising a kernel's dynamic shared-memory limit once per device (above 48 KB a launch fails
// without it). Threads racing here both set the same value, which is harmless.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace sagellm::flash_cuda::sm80 {

template <class Kernel>
cudaError_t ensure_dynamic_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& done_devices) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (done_devices.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && bit != 0) done_devices.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

}  // namespace sagellm::flash_cuda::sm80
