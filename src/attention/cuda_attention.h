// The GPU side of an attention backend: bf16 queries against one layer of the GPU paged KV cache,
// planned once per forward step (the batch metadata is the same for every layer) and run once
// per layer. Plain C++: no CUDA headers, so the engine can hold one without nvcc.
//
// Backends register their CUDA implementation in attention/registry_cuda.cpp (CUDA builds only),
// next to their CPU twin's line in attention/registry.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "attention/backend.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace sagellm {

// One layer of the GPU paged KV cache.
// kFloat (bf16 pages): k_pages / v_pages hold pages of [kv_head][slot][head_dim] bf16 values.
// kInt8 (sage_attn's 8-bit cache): sealed pages are 8-bit blocks (attention/sage/sage_params.h)
// at pages8 + page * page8_stride + kv_head * head8_stride bytes; k_pages / v_pages are then the
// bf16 tail pool, the same layout as bf16 pages but indexed by tail slot (CudaKVCacheView).
struct CudaKVLayer {
  const void* k_pages = nullptr;
  const void* v_pages = nullptr;
  int64_t page_stride = 0;     // elements
  int64_t kv_head_stride = 0;  // elements
  int page_size = 0;
  int num_pages = 0;
  KVCacheDType dtype = KVCacheDType::kFloat;
  const void* pages8 = nullptr;
  int64_t page8_stride = 0;  // bytes
  int64_t head8_stride = 0;  // bytes
};

// What planning needs to know of the cache, the same for every layer of a step: its page size and
// storage and, for an 8-bit cache, which pages are still bf16 tails (not yet full, so not sealed).
struct CudaKVCacheView {
  int page_size = 0;
  KVCacheDType dtype = KVCacheDType::kFloat;  // kFloat: bf16 pages on the GPU
  // kInt8: indexed by page, the tail slot holding that page's tokens, or -1 for a sealed page.
  const std::vector<int32_t>* tail_slot_of_page = nullptr;
};

class CudaAttention {
 public:
  virtual ~CudaAttention() = default;
  virtual std::string_view name() const = 0;
  // Empty when the backend's kernels run this shape with this page size and cache storage; the
  // reason otherwise.
  virtual std::string unsupported_reason(const AttentionShape& shape, int page_size,
                                         KVCacheDType dtype) const = 0;
  // The cache storage `--kv-cache-dtype auto` means for this backend on the GPU.
  virtual KVCacheDType default_kv_cache_dtype() const { return KVCacheDType::kFloat; }
  // How an 8-bit cache this backend reads encodes V (page_quant.h).
  virtual KVValueCodes kv_value_codes() const { return KVValueCodes::kFp8E4M3; }
  // Validates the batch (throws sagellm::Error) and enqueues its metadata on `stream`.
  virtual void plan(const AttentionShape& shape, const AttentionBatch& batch,
                    const CudaKVCacheView& kv, CUstream_st* stream) = 0;
  // For decode steps replayed from a CUDA graph: plans a batch of one new token per request with
  // launch dimensions and buffer addresses that depend only on the number of requests and on
  // `max_pages` (the block-table width, at least every request's page count), so that one graph
  // captured for that pair serves every later step with it. Returns false, planning nothing,
  // when the backend cannot (the caller then uses plan()). Outputs are the bits plan() gives.
  virtual bool plan_fixed_decode(const AttentionShape& shape, const AttentionBatch& batch,
                                 const CudaKVCacheView& kv, int max_pages, CUstream_st* stream) {
    return false;
  }
  // Changes whenever the backend reallocates a buffer that a captured graph may point to.
  virtual uint64_t buffer_epoch() const { return 0; }
  // q: rows of num_heads * head_dim bf16 values with row stride q_row_stride (elements, so q may
  // be a view into fused QKV rows); out: dense [rows][num_heads * head_dim] bf16. Uses the last
  // plan.
  virtual void run(const CudaKVLayer& kv, const void* q, int64_t q_row_stride, void* out,
                   CUstream_st* stream) = 0;
};

// Throws sagellm::Error for a name without CUDA kernels in this build.
std::unique_ptr<CudaAttention> make_cuda_attention(std::string_view name,
                                                   const AttentionOptions& options);

}  // namespace sagellm
