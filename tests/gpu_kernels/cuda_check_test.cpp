// Failing CUDA and cuBLAS calls become sagellm::Error with a message naming the error and the
// call; running out of GPU memory says how much was asked for; device queries explain themselves.
#include "core/cuda_check.h"

#include <cublas_api.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "gpu_test_util.h"

namespace sagellm {
namespace {

using testing::expect_error;
class CudaGpu : public testing::GpuTest {};

TEST(CudaCheck, RuntimeErrorMessageNamesErrorFileAndExpression) {
  expect_error([] { SAGELLM_CUDA_CHECK(cudaErrorInvalidValue); },
               {"CUDA error cudaErrorInvalidValue: ", "invalid argument",
                "at tests/gpu_kernels/cuda_check_test.cpp:", "in cudaErrorInvalidValue"});
}

TEST(CudaCheck, CublasErrorMessageNamesStatus) {
  expect_error([] { SAGELLM_CUBLAS_CHECK(CUBLAS_STATUS_NOT_SUPPORTED); },
               {"cuBLAS error CUBLAS_STATUS_NOT_SUPPORTED: ", "not supported",
                "tests/gpu_kernels/cuda_check_test.cpp:", "in CUBLAS_STATUS_NOT_SUPPORTED"});
  EXPECT_STREQ(detail::cublas_status_name(CUBLAS_STATUS_EXECUTION_FAILED),
               "CUBLAS_STATUS_EXECUTION_FAILED");
}

TEST(CudaCheck, SuccessDoesNotThrow) {
  EXPECT_NO_THROW(SAGELLM_CUDA_CHECK(cudaSuccess));
  EXPECT_NO_THROW(SAGELLM_CUBLAS_CHECK(CUBLAS_STATUS_SUCCESS));
}

TEST(DeviceBuffer, ElementCountOverflowIsAnError) {
  expect_error([] { DeviceBuffer<double> b(std::numeric_limits<size_t>::max() / 4); },
               {"overflows"});
}

TEST(DeviceBuffer, CopyOutsideTheBufferIsAnError) {
  DeviceBuffer<float> empty;  // allocates nothing, so no GPU is needed
  const std::vector<float> three(3, 1.0f);
  expect_error([&] { empty.upload(three); }, {"upload of 3 elements", "buffer's 0 elements"});
  std::vector<float> out(1);
  expect_error([&] { empty.download(out); }, {"download of 1 elements"});
}

TEST(CudaDevice, NoGpuIsAClearError) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is present";
  expect_error([] { require_supported_gpu(); }, {"no CUDA GPU found"});
}

TEST(CudaDevice, MissingDeviceIndexIsAnError) {
  expect_error([] { gpu_info(cuda_device_count() + 3); }, {"does not exist"});
  expect_error([] { gpu_info(-1); }, {"CUDA device -1 does not exist"});
}

TEST_F(CudaGpu, SupportedGpuIsDescribed) {
  const GpuInfo info = require_supported_gpu(0);
  EXPECT_GE(info.sm(), 80);
  EXPECT_FALSE(info.name.empty());
  EXPECT_GT(info.total_memory, size_t{1} << 30);
  EXPECT_GT(info.multiprocessors, 0);
  EXPECT_EQ(kernel_family(info) == GpuKernelFamily::kHopperSm90, info.sm() == 90);
  const std::string d = describe_gpu(info);
  std::printf("[   device ] %s\n", d.c_str());
  EXPECT_NE(d.find(fmt::format("sm_{}", info.sm())), std::string::npos) << d;
  const GpuMemoryInfo mem = gpu_memory_info();
  EXPECT_GT(mem.free, 0u);
  EXPECT_LE(mem.free, mem.total);
}

TEST_F(CudaGpu, FailingMemcpyThrowsAndDeviceStaysUsable) {
  std::vector<uint8_t> host(64, 7);
  expect_error(
      [&] {
        SAGELLM_CUDA_CHECK(cudaMemcpy(nullptr, host.data(), host.size(), cudaMemcpyHostToDevice));
      },
      {"CUDA error cuda", " at tests/gpu_kernels/cuda_check_test.cpp:",
       "in cudaMemcpy(nullptr, host.data(), host.size(), cudaMemcpyHostToDevice)"});
  expect_error(
      [&] {
        SAGELLM_CUDA_CHECK(
            cudaMemcpy(host.data(), host.data() + 1, 8, static_cast<cudaMemcpyKind>(77)));
      },
      {"CUDA error cudaErrorInvalidMemcpyDirection"});
  // The errors were not sticky: the device still works.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  DeviceBuffer<uint8_t> buf = DeviceBuffer<uint8_t>::from_host(host);
  EXPECT_EQ(buf.to_host(), host);
}

TEST_F(CudaGpu, LaunchCheckReportsAPendingError) {
  // The launch check reads the runtime's last error; leave one there (a harmless, non-sticky one).
  EXPECT_EQ(cudaSetDevice(cuda_device_count() + 100), cudaErrorInvalidDevice);
  expect_error([] { SAGELLM_CUDA_CHECK_LAUNCH(); },
               {"CUDA error cudaErrorInvalidDevice", "in kernel launch"});
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST_F(CudaGpu, HugeAllocationIsAnOutOfMemoryError) {
  const size_t huge = size_t{1} << 50;  // 1 PiB
  expect_error([&] { DeviceBuffer<uint8_t> b(huge); },
               {"out of GPU memory allocating 1125899906842624 bytes (free ", " of "});
  // Nothing is left pending: the next allocation and copy succeed.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> v = {1.0f, -2.0f, 3.5f};
  DeviceBuffer<float> b = DeviceBuffer<float>::from_host(v);
  EXPECT_EQ(b.to_host(), v);
}

TEST_F(CudaGpu, DeviceBufferMovesOwnership) {
  const std::vector<int32_t> v = {4, 5, 6, 7};
  DeviceBuffer<int32_t> a = DeviceBuffer<int32_t>::from_host(v);
  const int32_t* p = a.data();
  DeviceBuffer<int32_t> b = std::move(a);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from state is defined
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(b.size(), 4u);
  DeviceBuffer<int32_t> c(2);
  c = std::move(b);
  EXPECT_EQ(c.to_host(), v);
  std::vector<int32_t> part(2);
  c.download(part, 2);
  EXPECT_EQ(part, (std::vector<int32_t>{6, 7}));
  c.zero();
  EXPECT_EQ(c.to_host(), std::vector<int32_t>(4, 0));
}

}  // namespace
}  // namespace sagellm
