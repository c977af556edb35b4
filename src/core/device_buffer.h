// An owned, typed allocation in GPU memory (cudaMalloc / cudaFree), move-only, with checked
// copies to and from the host. Running out of GPU memory is a sagellm::Error that says how much
// was asked for and how much was free, not a crash.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/cuda_check.h"

namespace sagellm {

namespace detail {

// cudaMalloc that throws "out of GPU memory allocating N bytes (free F of T)" on exhaustion and
// the usual checked-call error otherwise. Zero bytes allocate nothing and return nullptr.
void* device_malloc(size_t bytes);

}  // namespace detail

template <typename T>
class DeviceBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "device buffers hold plain data");

 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : size_(count) {
    if (count > std::numeric_limits<size_t>::max() / sizeof(T)) {
      detail::throw_error("device buffer of " + std::to_string(count) + " elements of " +
                          std::to_string(sizeof(T)) + " bytes overflows the address space");
    }
    ptr_ = static_cast<T*>(detail::device_malloc(count * sizeof(T)));
  }
  ~DeviceBuffer() { reset(); }

  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  static DeviceBuffer from_host(std::span<const T> host) {
    DeviceBuffer b(host.size());
    b.upload(host);
    return b;
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  bool empty() const { return size_ == 0; }

  // Frees the memory. cudaFree's status is ignored: a destructor cannot throw, and the only
  // failures left at that point (a dead context, program exit) have already been reported.
  void reset() {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }

  // Synchronous copies (cudaMemcpy: ordered after all earlier work on the legacy stream).
  void upload(std::span<const T> host, size_t offset = 0) {
    check_range("upload", host.size(), offset);
    if (host.empty()) return;
    SAGELLM_CUDA_CHECK(
        cudaMemcpy(ptr_ + offset, host.data(), host.size_bytes(), cudaMemcpyHostToDevice));
  }
  void download(std::span<T> host, size_t offset = 0) const {
    check_range("download", host.size(), offset);
    if (host.empty()) return;
    SAGELLM_CUDA_CHECK(
        cudaMemcpy(host.data(), ptr_ + offset, host.size_bytes(), cudaMemcpyDeviceToHost));
  }
  std::vector<T> to_host() const {
    std::vector<T> h(size_);
    download(h);
    return h;
  }

  // Stream-ordered copies; `host` must stay alive (and, to overlap, be pinned) until the stream
  // reaches the copy.
  void upload_async(std::span<const T> host, cudaStream_t stream, size_t offset = 0) {
    check_range("upload", host.size(), offset);
    if (host.empty()) return;
    SAGELLM_CUDA_CHECK(cudaMemcpyAsync(ptr_ + offset, host.data(), host.size_bytes(),
                                       cudaMemcpyHostToDevice, stream));
  }
  void download_async(std::span<T> host, cudaStream_t stream, size_t offset = 0) const {
    check_range("download", host.size(), offset);
    if (host.empty()) return;
    SAGELLM_CUDA_CHECK(cudaMemcpyAsync(host.data(), ptr_ + offset, host.size_bytes(),
                                       cudaMemcpyDeviceToHost, stream));
  }

  // Sets every byte to zero, ordered on `stream`.
  void zero(cudaStream_t stream = nullptr) {
    if (ptr_ != nullptr) SAGELLM_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, bytes(), stream));
  }

 private:
  void check_range(const char* what, size_t count, size_t offset) const {
    if (offset > size_ || count > size_ - offset) {
      detail::throw_error(std::string("device buffer ") + what + " of " + std::to_string(count) +
                          " elements at offset " + std::to_string(offset) +
                          " does not fit the buffer's " + std::to_string(size_) + " elements");
    }
  }

  T* ptr_ = nullptr;
  size_t size_ = 0;
};

// Makes `buf` hold at least `count` elements, reallocating (contents lost) when it is smaller, with
// headroom so that slowly growing batches do not reallocate every step. Never shrinks. Must not be
// called while a CUDA graph that uses the buffer is captured or replayed.
template <typename T>
void ensure_capacity(DeviceBuffer<T>& buf, size_t count) {
  if (buf.size() >= count) return;
  buf.reset();
  buf = DeviceBuffer<T>(count + count / 4);
}

}  // namespace sagellm
