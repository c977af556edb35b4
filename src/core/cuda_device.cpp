#include "core/cuda_device.h"

#include <fmt/format.h>

#include "core/error.h"

#if defined(SAGELLM_HAVE_CUDA)

#include <cuda_runtime_api.h>

#include <string_view>

#include "core/cuda_check.h"
#include "core/device_buffer.h"

namespace sagellm {

namespace detail {

namespace {

// Paths from the repository root down ("src/kernels/cuda/rmsnorm.cu"), not the build machine's.
std::string_view short_path(std::string_view file) {
  size_t best = std::string_view::npos;
  for (std::string_view root : {"/src/", "/tests/"}) {
    const size_t at = file.rfind(root);
    if (at != std::string_view::npos && (best == std::string_view::npos || at > best)) best = at;
  }
  return best == std::string_view::npos ? file : file.substr(best + 1);
}

double gib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

}  // namespace

void throw_error(const std::string& message) { throw Error(message); }

void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  // Reset the runtime's last error (for errors that are not sticky), so a later launch check
  // does not report this one again at the wrong place.
  (void)cudaGetLastError();
  fail("CUDA error {}: {} at {}:{} in {}", cudaGetErrorName(err), cudaGetErrorString(err),
       short_path(file), line, expr);
}

void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line) {
  fail("cuBLAS error {}: {} at {}:{} in {}", cublas_status_name(status),
       cublas_status_description(status), short_path(file), line, expr);
}

const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

const char* cublas_status_description(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an unsupported value or parameter was passed";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "the GPU does not support this operation";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "license error";
  }
  return "unknown cuBLAS status";
}

void* device_malloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: clear it so the next call does not report it
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) (void)cudaGetLastError();
    fail(
        "out of GPU memory allocating {} bytes (free {} of {} bytes; {:.2f} GiB requested, "
        "{:.2f} GiB free)",
        bytes, free_bytes, total_bytes, gib(bytes), gib(free_bytes));
  }
  SAGELLM_CUDA_CHECK(err);
  return p;
}

}  // namespace detail

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

GpuInfo gpu_info(int device) {
  const int n = cuda_device_count();
  SAGELLM_CHECK(device >= 0 && device < n, "CUDA device {} does not exist ({} device{} found)",
                device, n, n == 1 ? "" : "s");
  cudaDeviceProp prop{};
  SAGELLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  GpuInfo info;
  info.device = device;
  info.name = prop.name;
  info.sm_major = prop.major;
  info.sm_minor = prop.minor;
  info.total_memory = prop.totalGlobalMem;
  info.multiprocessors = prop.multiProcessorCount;
  info.l2_cache_bytes = static_cast<size_t>(prop.l2CacheSize);
  info.shared_memory_per_block_optin = prop.sharedMemPerBlockOptin;
  return info;
}

GpuKernelFamily kernel_family(const GpuInfo& info) {
  return info.sm() == 90 ? GpuKernelFamily::kHopperSm90 : GpuKernelFamily::kPortableSm80;
}

GpuInfo require_supported_gpu(int device) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    if (err != cudaSuccess) {
      fail("no CUDA GPU found ({}: {})", cudaGetErrorName(err), cudaGetErrorString(err));
    }
    fail("no CUDA GPU found");
  }
  const GpuInfo info = gpu_info(device);
  if (info.sm_major < 8) {
    fail(
        "GPU {} ({}) is not supported: sagellm's CUDA kernels need compute capability 8.0 or "
        "newer (Ampere, Ada, Hopper); this GPU has {}.{}",
        device, info.name, info.sm_major, info.sm_minor);
  }
  return info;
}

std::string describe_gpu(const GpuInfo& info) {
  return fmt::format("{} (sm_{}, {:.1f} GiB, {} SMs)", info.name, info.sm(),
                     detail::gib(info.total_memory), info.multiprocessors);
}

GpuMemoryInfo gpu_memory_info() {
  GpuMemoryInfo m;
  SAGELLM_CUDA_CHECK(cudaMemGetInfo(&m.free, &m.total));
  return m;
}

}  // namespace sagellm

#else  // !SAGELLM_HAVE_CUDA

namespace sagellm {

namespace {
constexpr const char* kNoCuda =
    "this build of sagellm has no CUDA support (nvcc was not found when it was built); "
    "use --device cpu, or rebuild on a machine with the CUDA toolkit";
}  // namespace

bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }
GpuInfo gpu_info(int) { throw Error(kNoCuda); }
GpuKernelFamily kernel_family(const GpuInfo&) { return GpuKernelFamily::kPortableSm80; }
GpuInfo require_supported_gpu(int) { throw Error(kNoCuda); }
std::string describe_gpu(const GpuInfo& info) {
  return fmt::format("{} (sm_{})", info.name, info.sm());
}
GpuMemoryInfo gpu_memory_info() { throw Error(kNoCuda); }

}  // namespace sagellm

#endif
