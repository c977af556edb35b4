// What `sagellm bench-attention` hands to the device-specific timing code: one attention problem
// (seeded inputs already rounded to bf16, pages laid out) and what a timing run returns.
#pragma once

#include <string>
#include <vector>

#include "attention/backend.h"

namespace sagellm::cli {

struct AttentionBenchProblem {
  AttentionShape shape;
  AttentionBatch batch;  // B requests of q_len new tokens over kv_len keys, pages interleaved
  int batch_size = 0;
  int q_len = 0;
  int kv_len = 0;
  int page_size = 0;
  int num_pages = 0;
  // bf16-representable values, so every device sees exactly the same inputs.
  std::vector<float> q;     // [batch_size * q_len][num_heads * head_dim]
  std::vector<float> k, v;  // [batch_size][kv_len][num_kv_heads * head_dim]
};

struct AttentionTiming {
  std::vector<double> seconds;  // one entry per timed repeat
  std::vector<float> out;       // the last repeat's output, laid out like q
  std::string device;           // what ran it, in words
  std::string method;           // how it was timed
};

// The `flash` CUDA kernels on GPU 0: `warmup` untimed launches, then `repeats` launches timed one
// by one with CUDA events; bf16 inputs, the output converted to float. Throws sagellm::Error when
// no supported GPU is present or the kernels do not support the shape. Defined only in builds
// with CUDA (SAGELLM_HAVE_CUDA).
AttentionTiming time_flash_cuda(const AttentionBenchProblem& problem, int warmup, int repeats);

// The `sage_attn` CUDA kernels through the backend's CudaAttention, timed the same way. Each
// timed call includes the quantization the engine would run in that call: for prefill, every
// page is bf16 and quantized on the fly (as a bf16 cache, or pages written in the same step,
// would be) plus Q; for decode (q_len 1), full pages are sealed 8-bit pages of the cache
// (quantized once, not timed) and only each request's partly filled last page and Q are
// quantized in the call.
AttentionTiming time_sage_cuda(const AttentionBenchProblem& problem,
                               const AttentionOptions& options, int warmup, int repeats);

}  // namespace sagellm::cli
