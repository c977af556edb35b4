// The collectives of a tensor-parallel group over several GPUs of this process, through NCCL: one
// communicator per rank (ncclCommInitAll), each driven from its rank's thread (rank_threads.h).
// The calls are enqueued on the caller's stream and may be captured into a CUDA graph.
//
// NCCL is loaded when a group is made (dlopen of libnccl.so.2, or of the file SAGELLM_NCCL_LIBRARY
// names), not linked: the library is large and needed only with --tp-size above 1, so a binary
// carried to a GPU machine runs there without it. NVLink multicast (NVLS) stays off.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace sagellm {

struct NcclApi;  // the NCCL entry points, resolved from the loaded library

class NcclGroup {
 public:
  // One rank per entry of `devices` (CUDA device ordinals), rank i on devices[i]. Throws
  // sagellm::Error when NCCL cannot be loaded or the communicators cannot be made.
  explicit NcclGroup(const std::vector<int>& devices);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  int size() const { return static_cast<int>(comms_.size()); }
  // "2.28.3": the version of the NCCL library loaded.
  std::string version() const;

  // In-place sum of `count` bf16 values over the ranks, on `stream` (rank's device current).
  void all_reduce_sum_bf16(int rank, void* data, size_t count, cudaStream_t stream);
  // out = every rank's `count` float values, rank after rank.
  void all_gather_f32(int rank, const float* in, float* out, size_t count, cudaStream_t stream);

  // Aborts every communicator (from any thread): collectives in flight return, and the group is
  // unusable after.
  void abort();

 private:
  const NcclApi* api_;
  std::vector<void*> comms_;  // ncclComm_t
  std::atomic<bool> aborted_{false};
};

}  // namespace sagellm
