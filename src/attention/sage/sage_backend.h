// `sage_attn`: 8-bit attention (INT8 Q.K^T with per-page K smoothing, FP8, INT8 or FP16 P.V with
// two-level FP32 accumulation). Numerics: sage_numerics.h.
#pragma once

#include <memory>

#include "attention/backend.h"

namespace sagellm {

// What the softmax denominator sums. kQuantizedP is the specified choice (sage_numerics.h);
// kFloatP is kept only so that the test that measures the choice can compare the two.
enum class SageRowSum { kQuantizedP, kFloatP };

// Throws sagellm::Error for a sage_pv_dtype other than "fp8", "int8" or "fp16".
std::unique_ptr<AttentionBackend> make_sage_backend(const AttentionOptions& options,
                                                    SageRowSum row_sum = SageRowSum::kQuantizedP);

class CudaAttention;
// The GPU kernels (CUDA builds only: sage_backend_cuda.cpp). Throws sagellm::Error for a
// sage_pv_dtype other than "fp8", "int8" or "fp16".
std::unique_ptr<CudaAttention> make_sage_cuda_attention(const AttentionOptions& options);

}  // namespace sagellm
