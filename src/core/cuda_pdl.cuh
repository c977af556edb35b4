// Programmatic dependent launch (compute capability 9.0 on): a kernel launched with
// launch_dependent() may start while the kernel before it in the stream is still running, once
// every CTA of that kernel has called pdl_launch_dependents() (or exited). It must call
// pdl_wait() before it reads anything the kernels before it write, or writes anything they read:
// pdl_wait() returns when the previous kernel has completed and its memory is visible. Work that
// touches only data no kernel of the step writes (weights) may go before the wait: that is the
// gain, with the launch latency of the next kernel hidden behind this one's tail.
//
// Every kernel launched this way calls pdl_wait() in every CTA before it can exit, so a kernel
// never completes before the one before it: the guarantee holds transitively down the stream. On
// devices before sm_90 (and with SAGELLM_PDL=0) launches are plain, and the two calls are no-ops.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace sagellm::cuda_pdl {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Whether launches on the current device use the attribute: compute capability >= 9.0 and not
// switched off by SAGELLM_PDL=0 (read once per device).
inline bool pdl_enabled() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> state[kMaxDevices];  // 0 unknown, 1 off, 2 on
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return false;
  if (state[dev].load(std::memory_order_relaxed) == 0) {
    int major = 0;
    const char* env = std::getenv("SAGELLM_PDL");
    const bool off = env != nullptr && std::strcmp(env, "0") == 0;
    const bool ok =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess;
    state[dev].store(!off && ok && major >= 9 ? 2 : 1, std::memory_order_relaxed);
  }
  return state[dev].load(std::memory_order_relaxed) == 2;
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization when
// pdl_enabled(). Returns the launch status (that of cudaGetLastError() after the launch).
template <typename... KernelArgs, typename... Args>
cudaError_t launch_dependent(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                             cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
  // Read and cleared, as after kernel<<<...>>>: a failed launch is reported here, not to a later
  // cudaGetLastError().
  const cudaError_t last = cudaGetLastError();
  return err != cudaSuccess ? err : last;
}

}  // namespace sagellm::cuda_pdl
