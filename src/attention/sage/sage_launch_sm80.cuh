// Host launchers of the sage_attn kernels (one translation unit per kernel family, so the head-dim
// and P.V-mode instances compile in parallel). They return the CUDA error of the launch; the
// caller (sage_launch.cu) turns it into sagellm::Error.
#pragma once

#include <cuda_runtime.h>

#include "attention/sage/sage_params.h"

namespace sagellm::sage_cuda::sm80 {

// grid (ceil(max_q_len / 16), num_heads, num_seqs).
cudaError_t launch_quantize_q(const SageParams& p, int max_q_len, cudaStream_t stream);

// grid (ceil(max_q_len / 128), num_heads, num_seqs); requests on the split kernel exit.
template <int kHeadDim, SagePv kPv>
cudaError_t launch_prefill(const SageParams& p, int max_q_len, cudaStream_t stream);

// grid (max_splits, num_kv_heads * m_blocks, num_seqs).
template <int kHeadDim, SagePv kPv>
cudaError_t launch_decode(const SageParams& p, int m_blocks, int max_splits, cudaStream_t stream);

// The binary version (10 * major + minor) of the fp8 split kernel's code that this GPU runs: the
// FP8 product exists only in code built for 8.9 and newer.
cudaError_t fp8_kernel_binary_version(int* version);

// grid (max_q_len, num_heads, num_seqs) over requests with more than one split.
cudaError_t launch_split_combine(const SageParams& p, int max_q_len, cudaStream_t stream);

}  // namespace sagellm::sage_cuda::sm80
