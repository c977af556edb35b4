// Host launchers of the Hopper (sm_90a) kernels. They return the CUDA error of the launch; the
// caller (flash_launch.cu) turns it into sagellm::Error.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>

#include "attention/flash/flash_params.h"

namespace sagellm::flash_cuda::sm90 {

// True when the current GPU is compute capability 9.0 and `kernel` (a __global__ function of an
// sm_90a kernel) runs as sm_90a machine code there; cached per device in device_state (0 unknown,
// 1 yes, 2 no). SAGELLM_PREFILL_KERNEL=sm80 in the environment makes it false: the portable
// kernels then run everywhere.
bool kernel_runs_here(const void* kernel, std::array<std::atomic<int>, 64>& device_state);

// kernel_runs_here for the flash prefill kernel.
bool prefill_available();

// grid (ceil(max_q_len / 128), num_heads, num_seqs); blocks of requests on the split kernel exit.
// num_pages: pages the block table may name (the extent of the tensor maps over the pools). The
// producer copies pages with the tensor memory accelerator where the page size allows (dividing
// 128 or a multiple of it), and gathers rows with cp.async otherwise.
template <int kHeadDim>
cudaError_t launch_prefill(const FlashParams& p, int max_q_len, int num_pages, cudaStream_t stream);

// One kernel variant (flash_prefill_sm90.cuh's PrefillTraits), for benchmarks;
// cudaErrorNotSupported when a tensor-memory variant cannot copy these pages.
template <class Traits>
cudaError_t launch_prefill_variant(const FlashParams& p, int max_q_len, int num_pages,
                                   cudaStream_t stream);

}  // namespace sagellm::flash_cuda::sm90
