// Launch API of the `flash` CUDA kernels (bf16 in, fp32 softmax and accumulation, bf16 out, over
// a paged bf16 KV cache). Plain C++, compilable without nvcc.
//
// Use:
//   FlashPlan plan = select_flash_kernel(shape, batch, page_size);   // host, no GPU needed
//   if (!plan.supported()) ... plan.unsupported_reason ...
//   FlashParams params = flash_params_for(plan);
//   upload flash_cu_seqlens_q(batch), flash_kv_lens(batch), flash_block_table(batch, ...) and
//   plan.split_offsets; when plan.split_slots > 0 allocate split_acc_floats() and
//   split_ml_floats() floats of workspace; set the pointers in params;
//   flash_attention_cuda(plan, params, stream);
//
// select_flash_kernel is the one place that decides whether a problem is supported and which
// kernels run; supports() is the same function, so the two cannot disagree. Each request is
// routed on its own lengths only (flash_params.h): requests with q_len * group <= 64 rows go to
// the split-KV kernel (decode, short extends), the others to the prefill kernel; a batch with
// both kinds launches both kernels. The split count of a request depends only on its kv_len and
// splits are combined in a fixed order, so outputs are bitwise reproducible and a request's output
// does not depend on the rest of the batch.
//
// Restrictions (anything else is reported by select_flash_kernel and thrown as sagellm::Error by
// flash_attention_cuda):
// - head_dim a multiple of 8, at most 128 (64 and 128 native, the rest zero-padded to them);
// - page_size a positive multiple of 16;
// - num_heads a multiple of num_kv_heads; at most 65535 requests and 65535 heads;
// - the q rows of the requests contiguous and in order (q_start of request s+1 is q_start + q_len
//   of request s), as cu_seqlens_q describes them;
// - q, o, k_pages, v_pages 16-byte aligned, all strides multiples of 8 elements;
// - a GPU of compute capability 8.0 or newer. The prefill kernel is the Hopper (sm_90a, wgmma) one
//   on compute capability 9.0 when the binary holds it, the portable sm_80 one elsewhere; the
//   split-KV and combine kernels are sm_80 code everywhere (decode is memory-bound).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "attention/backend.h"
#include "attention/flash/flash_params.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace sagellm::flash_cuda {

struct FlashPlan {
  std::string unsupported_reason;  // empty when supported
  bool supported() const { return unsupported_reason.empty(); }

  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int head_dim_padded = 0;  // 64 or 128: the kernel instance
  int page_size = 0;
  float sm_scale = 0.0f;
  bool causal = true;
  int num_seqs = 0;
  int total_q = 0;      // rows from the first request's q_start to the end of the last
  int first_q_row = 0;  // q_start of the first request (cu_seqlens_q[0])

  bool run_prefill = false;
  int max_prefill_q_len = 0;    // grid of the prefill kernel
  bool hopper_prefill = false;  // the sm_90a wgmma prefill kernel instead of the sm_80 one
  int num_pages = 0;            // 1 + the largest page id a prefill-kernel request reads
  bool run_decode = false;
  int max_decode_m_blocks = 0;  // grid of the split kernel: 16-row blocks of the largest request
  int max_splits = 0;           // grid of the split kernel
  bool run_combine = false;
  int max_combine_q_len = 0;  // grid of the combine kernel

  std::vector<int32_t> split_offsets;  // [num_seqs] first workspace slot (0 where unused)
  int64_t split_slots = 0;             // workspace slots in all

  int64_t split_acc_floats() const { return split_slots * head_dim; }
  int64_t split_ml_floats() const { return split_slots * 2; }
  size_t workspace_bytes() const {
    return static_cast<size_t>(split_acc_floats() + split_ml_floats()) * sizeof(float);
  }
};

// Head dim the kernels compute with (64 or 128), or 0 when head_dim is not supported.
int flash_padded_head_dim(int head_dim);

// Checks the shape alone (heads, head_dim, sm_scale, page size). Empty string when supported.
std::string flash_shape_unsupported_reason(const AttentionShape& shape, int page_size);

// Plans one forward call: validates shape and batch and picks the kernels (see above).
FlashPlan select_flash_kernel(const AttentionShape& shape, const AttentionBatch& batch,
                              int page_size);

// True when select_flash_kernel supports the problem; the reason otherwise.
bool supports(const AttentionShape& shape, const AttentionBatch& batch, int page_size,
              std::string* reason = nullptr);

// Params with the plan's shape, scale and mask filled in, and the strides of contiguous tensors:
// q and o [row][num_heads][head_dim], pages [page][num_kv_heads][page_size][head_dim]. The caller
// sets the pointers, block_table_stride and, for other layouts, the strides.
FlashParams flash_params_for(const FlashPlan& plan);

// The host arrays the kernels read, built from the batch (to upload): cu_seqlens_q [num_seqs+1]
// and kv_lens [num_seqs].
std::vector<int32_t> flash_cu_seqlens_q(const AttentionBatch& batch);
std::vector<int32_t> flash_kv_lens(const AttentionBatch& batch);
// Block table [num_seqs][stride], stride = the most pages of any request (at least 1); unused
// entries are 0 and never read.
std::vector<int32_t> flash_block_table(const AttentionBatch& batch, int page_size, int* stride);

// Launches the planned kernels on `stream`. Throws sagellm::Error when the plan is unsupported,
// when params do not match the plan (heads, head_dim, page size, null or misaligned pointers, a
// missing workspace) or when a CUDA call or launch fails. Asynchronous otherwise.
void flash_attention_cuda(const FlashPlan& plan, const FlashParams& params, CUstream_st* stream);

}  // namespace sagellm::flash_cuda
