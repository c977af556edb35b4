// Host launcher of the Hopper (sm_90a) sage_attn prefill kernel. It returns the CUDA error of the
// launch; the caller (sage_launch.cu) turns it into sagellm::Error.
#pragma once

#include <cuda_runtime.h>

#include "attention/sage/sage_params.h"

namespace sagellm::sage_cuda::sm90 {

// True when the current GPU runs the sm_90a kernel (flash_cuda::sm90::kernel_runs_here).
bool prefill_available();

// fp8 or int8 P.V and head_dim_padded 128 only. grid (ceil(max_q_len / 128), num_heads,
// num_seqs); requests on the split kernel exit.
template <SagePv kPv>
cudaError_t launch_prefill(const SageParams& p, int max_q_len, cudaStream_t stream);

}  // namespace sagellm::sage_cuda::sm90
