// Flat parameters of the `flash` CUDA kernels, and the per-request policy that both the host
// planner and the kernels evaluate (which kernel serves a request, how its keys are split), so
// the two can never disagree. Plain C++: this header is also read by code compiled without nvcc.
//
// Tensors (bf16 unless said otherwise; strides in elements):
// - q, o: rows [total_q][num_heads][head_dim]; the rows of request s are
//   cu_seqlens_q[s] .. cu_seqlens_q[s+1]-1.
// - k_pages, v_pages: one layer's page pool, [page][kv_head][slot][head_dim]; slot j of page p of
//   head h starts at p * page_stride + h * kv_head_stride + j * head_dim.
// - block_table: int32 [num_seqs][block_table_stride]; token t of request s lives in page
//   block_table[s * block_table_stride + t / page_size], slot t % page_size.
// - kv_lens: int32 [num_seqs], the request's cached tokens, its new ones included.
// Causal masks are aligned bottom-right: new token i of a request sees keys 0..kv_len-q_len+i.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SAGELLM_HOST_DEVICE __host__ __device__
#else
#define SAGELLM_HOST_DEVICE
#endif

namespace sagellm::flash_cuda {

// Keys per K/V tile in shared memory, for both kernels.
inline constexpr int kFlashBlockN = 64;
// Query rows per CTA in the prefill kernel.
inline constexpr int kFlashPrefillBlockM = 128;
// Packed rows (new token x query head of one GQA group) per CTA in the split-KV kernel.
inline constexpr int kFlashDecodeBlockM = 16;
// Requests with q_len * group up to this many rows run on the split-KV kernel.
inline constexpr int kFlashDecodeMaxRows = 64;
// Split-KV granularity: about this many keys per split, at most kFlashMaxSplits splits; a short
// context is cut into up to kFlashMinSplits splits of one tile or more, so that one request's few
// KV heads still spread over the GPU (batch 1, 1K keys, 8 KV heads: 136 CTAs instead of 40).
inline constexpr int kFlashSplitKeys = 256;
inline constexpr int kFlashMaxSplits = 64;
inline constexpr int kFlashMinSplits = 32;
// Head dims are padded up to one of the two native sizes.
inline constexpr int kFlashMaxHeadDim = 128;

SAGELLM_HOST_DEVICE inline constexpr int flash_ceil_div(int a, int b) { return (a + b - 1) / b; }

// The kernel a request runs on depends only on its own q_len and the GQA group, never on the
// rest of the batch: this is what makes a request's output independent of the batch.
SAGELLM_HOST_DEVICE inline constexpr bool flash_uses_split_kernel(int q_len, int group) {
  return q_len > 0 && q_len * group <= kFlashDecodeMaxRows;
}

// K/V tiles of kFlashBlockN keys per split. A function of kv_len alone, so that the partial
// results and their fixed-order combination are the same whatever else is in the batch.
SAGELLM_HOST_DEVICE inline constexpr int flash_tiles_per_split(int kv_len) {
  const int tiles = flash_ceil_div(kv_len, kFlashBlockN);
  if (tiles <= 0) return 1;
  int want = flash_ceil_div(kv_len, kFlashSplitKeys);
  const int short_want = tiles < kFlashMinSplits ? tiles : kFlashMinSplits;
  if (want < short_want) want = short_want;
  if (want > kFlashMaxSplits) want = kFlashMaxSplits;
  if (want < 1) want = 1;
  return flash_ceil_div(tiles, want);
}

// Number of splits of a request's keys; every split holds at least one tile.
SAGELLM_HOST_DEVICE inline constexpr int flash_num_splits(int kv_len) {
  const int tiles = flash_ceil_div(kv_len, kFlashBlockN);
  if (tiles <= 0) return 1;
  return flash_ceil_div(tiles, flash_tiles_per_split(kv_len));
}

struct FlashParams {
  const void* q = nullptr;  // bf16
  int64_t q_row_stride = 0;
  int64_t q_head_stride = 0;
  void* o = nullptr;  // bf16
  int64_t o_row_stride = 0;
  int64_t o_head_stride = 0;

  const void* k_pages = nullptr;  // bf16, one layer
  const void* v_pages = nullptr;  // bf16, one layer, same layout as k_pages
  int64_t page_stride = 0;        // usually num_kv_heads * page_size * head_dim
  int64_t kv_head_stride = 0;     // usually page_size * head_dim
  int page_size = 0;

  const int32_t* block_table = nullptr;
  int block_table_stride = 0;             // max pages per request
  const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1]
  const int32_t* kv_lens = nullptr;       // [num_seqs]
  int num_seqs = 0;

  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float sm_scale = 0.0f;
  float scale_log2 = 0.0f;  // sm_scale * log2(e): scores go through exp2
  bool causal = true;

  // Split-KV workspace, used by requests on the split kernel with more than one split. Request s
  // owns slots split_offsets[s] + (t * num_heads + head) * num_splits + split; a slot holds
  // head_dim fp32 unnormalized outputs in split_acc and (max in log2 units, sum) in split_ml.
  float* split_acc = nullptr;
  float* split_ml = nullptr;
  const int32_t* split_offsets = nullptr;  // [num_seqs]
};

}  // namespace sagellm::flash_cuda
