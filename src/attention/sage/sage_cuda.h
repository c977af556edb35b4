// Launch API of the `sage_attn` CUDA kernels (sage_params.h): bf16 queries against 8-bit pages,
// bf16 out. Plain C++, compilable without nvcc.
//
// A call runs up to five kernels on one stream:
//   1. page quantization (sage_quantize_pages_cuda) of the pages that are not sealed 8-bit pages
//      (every page of a bf16 cache; the bf16 tail page of each request of an 8-bit cache) into a
//      per-call scratch in the 8-bit block layout;
//   2. Q quantization: INT8 codes and one scale per new token and head;
//   3. the prefill kernel (requests with q_len * group > 64 rows; on compute capability 9.0 with
//      fp8 or int8 P.V and head dims padded to 128, the warp-specialized sm_90a wgmma kernel of
//      sage_prefill_sm90.cuh, else the portable sm_80 one) and/or
//   4. the split-KV kernel (the others: decode, short extends), then
//   5. the fixed-order combine of the splits.
// select_sage_kernel is the one place that decides what is supported and which kernels run.
//
// Restrictions: head_dim a multiple of 8, at most 128 (64 and 128 native, others zero-padded);
// page size kSagePageSize (64); num_heads a multiple of num_kv_heads; fp8 P.V needs compute
// capability 8.9 or newer (sm_90a build), int8 and fp16 P.V run on 8.0 and newer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "attention/backend.h"
#include "attention/sage/sage_params.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace sagellm::sage_cuda {

struct SagePlan {
  std::string unsupported_reason;  // empty when supported
  bool supported() const { return unsupported_reason.empty(); }

  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int head_dim_padded = 0;
  float sm_scale = 0.0f;
  bool causal = true;
  SagePv pv = SagePv::kFp8;
  int num_seqs = 0;
  int total_q = 0;
  int first_q_row = 0;
  int max_q_len = 0;  // grid of the Q kernel

  bool run_prefill = false;
  int max_prefill_q_len = 0;
  // The sm_90a wgmma prefill kernel (Hopper, fp8 or int8 P.V, head dims padded to 128) instead of
  // the portable one.
  bool hopper_prefill = false;
  bool run_decode = false;
  int max_decode_m_blocks = 0;
  int max_splits = 0;
  bool run_combine = false;
  int max_combine_q_len = 0;

  std::vector<int32_t> split_offsets;
  int64_t split_slots = 0;

  int64_t split_acc_floats() const { return split_slots * head_dim; }
  int64_t split_ml_floats() const { return split_slots * 2; }
  int64_t q8_bytes() const { return static_cast<int64_t>(total_q) * num_heads * head_dim_padded; }
  int64_t q_scale_floats() const { return static_cast<int64_t>(total_q) * num_heads; }
};

// 64 or 128, or 0 when head_dim is not supported.
int sage_padded_head_dim(int head_dim);

// Checks the shape, page size and P.V mode alone. Empty string when supported.
std::string sage_shape_unsupported_reason(const AttentionShape& shape, int page_size, SagePv pv);

// True when this GPU can run fp8 P.V (compute capability >= 8.9 and a build for it).
bool sage_fp8_pv_available();

SagePlan select_sage_kernel(const AttentionShape& shape, const AttentionBatch& batch, int page_size,
                            SagePv pv);

// Params with the plan's shape and mask, strides of contiguous q/o rows, and the pool and
// scratch strides of dense 8-bit blocks ([page][kv_head] blocks). Pointers are the caller's.
SageParams sage_params_for(const SagePlan& plan);

// Enqueues kernels 2-5 (the scratch, if any, must be ready: see sage_quantize_pages_cuda).
// Throws sagellm::Error when the plan is unsupported, params do not match it, or a launch fails.
void sage_attention_cuda(const SagePlan& plan, const SageParams& params, CUstream_st* stream);

// Quantizes pages into 8-bit blocks (page_quant.h's specification; see SageQuantJob).
void sage_quantize_pages_cuda(const SageQuantParams& params, CUstream_st* stream);

}  // namespace sagellm::sage_cuda
