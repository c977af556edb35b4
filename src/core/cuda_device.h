// Which CUDA GPUs are present and whether sagellm's kernels can run on them.
//
// This header needs no CUDA headers, so code that is built either way can call it; in a build
// without CUDA, cuda_device_count() is 0 and require_supported_gpu() explains that the build has
// no GPU support.
#pragma once

#include <cstddef>
#include <string>

namespace sagellm {

struct GpuInfo {
  int device = 0;
  std::string name;
  int sm_major = 0;
  int sm_minor = 0;
  size_t total_memory = 0;  // bytes
  int multiprocessors = 0;
  size_t l2_cache_bytes = 0;
  size_t shared_memory_per_block_optin = 0;  // the most a kernel can ask for after opting in

  int sm() const { return sm_major * 10 + sm_minor; }  // 90 for compute capability 9.0
};

// The kernels a GPU runs. Hopper kernels (wgmma/TMA) are built for sm_90a, whose machine code
// runs on compute capability 9.0 only; every other supported GPU (8.x, and newer majors through
// the compute_80 PTX the build embeds) runs the portable sm_80 kernels.
enum class GpuKernelFamily { kPortableSm80, kHopperSm90 };

// True when this build has CUDA support compiled in.
bool cuda_compiled();

// Number of usable CUDA devices; 0 when there is none, no driver, or no CUDA in this build.
// Never throws.
int cuda_device_count();

// Properties of `device`; throws sagellm::Error if it does not exist.
GpuInfo gpu_info(int device);

GpuKernelFamily kernel_family(const GpuInfo& info);

// Checks that `device` exists and is supported (compute capability 8.0 or newer) and returns its
// properties. Throws sagellm::Error: "no CUDA GPU found (...)", or one naming the GPU and its
// compute capability when it is too old. Does not change the current device.
GpuInfo require_supported_gpu(int device = 0);

// "NVIDIA H200 (sm_90, 139.8 GiB, 132 SMs)".
std::string describe_gpu(const GpuInfo& info);

struct GpuMemoryInfo {
  size_t free = 0;   // bytes
  size_t total = 0;  // bytes
};

// Free and total memory of the current device (cudaMemGetInfo).
GpuMemoryInfo gpu_memory_info();

}  // namespace sagellm
