// Host launchers of the sm_80 kernels (one translation unit per kernel family, so that the two
// head-dim instances of each compile in parallel). They return the CUDA error of the launch; the
// caller (flash_launch.cu) turns it into sagellm::Error.
#pragma once

#include <cuda_runtime.h>

#include "attention/flash/flash_params.h"

namespace sagellm::flash_cuda::sm80 {

// grid (ceil(max_q_len / block rows), num_heads, num_seqs); blocks of requests on the split kernel
// exit.
template <int kHeadDim>
cudaError_t launch_prefill(const FlashParams& p, int max_q_len, cudaStream_t stream);

// grid (max_splits, num_kv_heads * m_blocks, num_seqs).
template <int kHeadDim>
cudaError_t launch_decode(const FlashParams& p, int m_blocks, int max_splits, cudaStream_t stream);

// grid (max_q_len, num_heads, num_seqs) over requests with more than one split.
cudaError_t launch_split_combine(const FlashParams& p, int max_q_len, cudaStream_t stream);

}  // namespace sagellm::flash_cuda::sm80
