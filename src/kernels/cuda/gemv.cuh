// Small-M Linear layers (decode: M tokens, at most kGemvMaxRows), C[m][n] = A[m][k] · W[n][k]^T,
// with W streamed from memory once at close to full bandwidth. cuBLASLt's kernels for M = 1..4
// leave a fifth of the bandwidth unused; this one keeps 16 bytes x kUnroll x kRowsPerWarp loads
// in flight per thread.
//
// With few output rows (n <= 32768: o_proj, down_proj, QKV and gate/up of an 8B model) 2 or 4
// warps share each row and split its k-chunks, which keeps the GPU's loads in flight (measured on
// the H200, batch-1 decode: o/down 3.0 -> 3.5 TB/s, QKV 3.0 -> 3.2 TB/s; gate/up with two warps a
// row, batch-4 decode 740 -> 760 tokens/s, batch 1 unchanged).
//
// Numerics: fp32 accumulation; each lane sums its k-chunks in increasing k, then a fixed
// butterfly reduction over the warp, then the warps sharing a row in warp order; one rounding at
// the store. The order depends on n and k alone, so row m of C is the same bits whatever M is: a
// request's logits do not depend on its batch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace sagellm::gpu {

// Beyond 4 rows the kernel turns compute-bound (measured on the H200: batch 8 decode of an 8B
// model took 1.8x the time of batch 1) and cuBLASLt's tensor-core kernels win.
inline constexpr int kGemvMaxRows = 4;

// RoPE and the KV-cache write of a decode step's QKV projection, done in the GEMV's epilogue
// (GemvArgs::rope): the bits of gpu::rope_kv_write on the GEMV's bf16 output (ops.h), one launch
// and one dependency wait fewer per layer.
struct GemvRopeKv {
  int q_heads = 0, kv_heads = 0, head_dim = 0;  // W's rows: q heads, k heads, v heads
  const float* inv_freq = nullptr;              // [head_dim / 2]
  const int32_t* positions = nullptr;           // [m]
  __nv_bfloat16* k_cache = nullptr;             // [page][kv_heads][page_size][head_dim]
  __nv_bfloat16* v_cache = nullptr;
  const int32_t* pages = nullptr;  // [m]; a row whose page or slot is out of range is not cached
  const int32_t* slots = nullptr;  // [m]
  int page_size = 0, num_pages = 0;
};

struct GemvArgs {
  const __nv_bfloat16* a = nullptr;  // [m][lda]
  // [n][k]; its first loads go before the wait for the previous kernel of programmatic dependent
  // launch (core/cuda_pdl.cuh): no kernel still running on the stream may write it (weights).
  const __nv_bfloat16* w = nullptr;
  void* c = nullptr;  // [m][ldc], bf16 or fp32
  bool c_f32 = false;
  // W holds 2 * n rows, [gate; up], and C[m][j] = bf16(silu(g) * u) of the bf16-rounded gate and
  // up sums (gpu::silu_mul's formula): the gate/up projection and SwiGLU of a decode step in one
  // pass over W, with the bits of the two separate steps. bf16 C only.
  bool swiglu = false;
  // C holds the q, k and v heads of rope_kv (n = (q_heads + 2 * kv_heads) * head_dim, ldc >= n):
  // q and k are rotated, k and v also stored in the cache. bf16 C only.
  bool rope = false;
  GemvRopeKv rope_kv;
  int m = 0, n = 0, k = 0;
  int64_t lda = 0, ldc = 0;
};

// True when the GEMV kernel takes this case: 1 <= m <= kGemvMaxRows, k a multiple of 8, lda a
// multiple of 8, A and W 16-byte aligned, no accumulation (and for `rope`, n made of whole heads
// of an even head_dim). The one place that decides.
bool gemv_supports(const GemvArgs& args, bool accumulate);

// Launches on `stream`; returns the launch status.
cudaError_t gemv_launch(const GemvArgs& args, cudaStream_t stream);

}  // namespace sagellm::gpu
