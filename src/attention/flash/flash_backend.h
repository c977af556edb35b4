// `flash`: exact attention, the baseline the 8-bit backend is judged against.
#pragma once

#include <memory>

#include "attention/backend.h"

namespace sagellm {

std::unique_ptr<AttentionBackend> make_flash_backend(const AttentionOptions& options);

class CudaAttention;
// The GPU kernels (CUDA builds only: flash_backend_cuda.cpp).
std::unique_ptr<CudaAttention> make_flash_cuda_attention();

}  // namespace sagellm
