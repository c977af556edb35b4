// Planning and launching of the sage_attn CUDA kernels (sage_cuda.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include "attention/batch_layout.h"
#include "attention/sage/sage_cuda.h"
#include "attention/sage/sage_launch_sm80.cuh"
#include "attention/sage/sage_launch_sm90.cuh"
#include "core/cuda_check.h"

namespace sagellm::sage_cuda {

namespace {

constexpr int kMaxGridYZ = 65535;

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
void check(bool ok, const Args&... args) {
  if (!ok) detail::throw_error(cat("sage_attn (CUDA): ", args...));
}

void check_cuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) detail::throw_cuda_error(err, what, file, line);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

int sage_padded_head_dim(int head_dim) {
  if (head_dim <= 0 || head_dim % 8 != 0 || head_dim > kSageMaxHeadDim) return 0;
  return head_dim <= 64 ? 64 : 128;
}

bool sage_fp8_pv_available() {
  // The fp8 product is compiled only into the sm_89+ code; ask which code this GPU runs.
  int version = 0;
  if (sm80::fp8_kernel_binary_version(&version) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return version >= 89;
}

std::string sage_shape_unsupported_reason(const AttentionShape& shape, int page_size, SagePv pv) {
  if (shape.num_heads <= 0 || shape.num_kv_heads <= 0 ||
      shape.num_heads % shape.num_kv_heads != 0) {
    return cat("sage_attn (CUDA): ", shape.num_heads, " query heads cannot share ",
               shape.num_kv_heads, " KV heads");
  }
  if (shape.num_heads > kMaxGridYZ) {
    return cat("sage_attn (CUDA): ", shape.num_heads, " query heads (at most ", kMaxGridYZ, ")");
  }
  if (sage_padded_head_dim(shape.head_dim) == 0) {
    return cat("sage_attn (CUDA): head_dim ", shape.head_dim,
               " is not supported (a multiple of 8, at most ", kSageMaxHeadDim,
               "; 64 and 128 are native, smaller ones are zero-padded)");
  }
  if (!(std::isfinite(shape.sm_scale) && shape.sm_scale > 0.0f)) {
    return cat("sage_attn (CUDA): sm_scale must be positive and finite (got ", shape.sm_scale, ")");
  }
  if (page_size != kSagePageSize) {
    return cat("sage_attn (CUDA): KV cache page size ", page_size, " is not supported (the 8-bit ",
               "kernels use pages of ", kSagePageSize, " tokens: --page-size ", kSagePageSize, ")");
  }
  if (pv == SagePv::kFp8 && !sage_fp8_pv_available()) {
    return "sage_attn (CUDA): --sage-pv-dtype fp8 needs a GPU of compute capability 8.9 or newer "
           "(FP8 tensor cores); use --sage-pv-dtype int8 or fp16";
  }
  return {};
}

SagePlan select_sage_kernel(const AttentionShape& shape, const AttentionBatch& batch, int page_size,
                            SagePv pv) {
  SagePlan plan;
  plan.num_heads = shape.num_heads;
  plan.num_kv_heads = shape.num_kv_heads;
  plan.head_dim = shape.head_dim;
  plan.head_dim_padded = sage_padded_head_dim(shape.head_dim);
  plan.sm_scale = shape.sm_scale;
  plan.causal = batch.causal;
  plan.pv = pv;
  plan.num_seqs = static_cast<int>(batch.seqs.size());
  plan.unsupported_reason = sage_shape_unsupported_reason(shape, page_size, pv);
  if (!plan.supported()) return plan;
  const auto reject = [&plan](const std::string& why) {
    plan.unsupported_reason = "sage_attn (CUDA): " + why;
    plan.run_prefill = plan.run_decode = plan.run_combine = false;
    return plan;
  };
  if (const std::string why = attention_batch_layout_error(batch, page_size, kMaxGridYZ);
      !why.empty()) {
    return reject(why);
  }
  const int group = shape.num_heads / shape.num_kv_heads;
  plan.split_offsets.assign(batch.seqs.size(), 0);
  plan.first_q_row = batch.seqs.empty() ? 0 : batch.seqs.front().q_start;
  int64_t next_row = plan.first_q_row;
  int64_t slots = 0;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const AttentionSeq& seq = batch.seqs[s];
    next_row += seq.q_len;
    if (seq.q_len == 0) continue;
    plan.max_q_len = std::max(plan.max_q_len, seq.q_len);
    if (sage_uses_split_kernel(seq.q_len, group)) {
      plan.run_decode = true;
      plan.max_decode_m_blocks =
          std::max(plan.max_decode_m_blocks, sage_ceil_div(seq.q_len * group, kSageDecodeBlockM));
      const int splits = sage_num_splits(seq.kv_len);
      plan.max_splits = std::max(plan.max_splits, splits);
      if (splits > 1) {
        plan.run_combine = true;
        plan.max_combine_q_len = std::max(plan.max_combine_q_len, seq.q_len);
        plan.split_offsets[s] = static_cast<int32_t>(slots);
        slots += static_cast<int64_t>(seq.q_len) * shape.num_heads * splits;
        if (slots > std::numeric_limits<int32_t>::max()) {
          return reject("the split-KV workspace of this batch is too large");
        }
      }
    } else {
      plan.run_prefill = true;
      plan.max_prefill_q_len = std::max(plan.max_prefill_q_len, seq.q_len);
    }
  }
  if (static_cast<int64_t>(shape.num_kv_heads) * std::max(plan.max_decode_m_blocks, 1) >
      kMaxGridYZ) {
    return reject(cat(shape.num_kv_heads, " KV heads (too many for the split kernel's grid)"));
  }
  plan.hopper_prefill = plan.run_prefill && (plan.pv == SagePv::kFp8 || plan.pv == SagePv::kInt8) &&
                        plan.head_dim_padded == 128 && sm90::prefill_available();
  plan.total_q = static_cast<int>(next_row - plan.first_q_row);
  plan.split_slots = slots;
  return plan;
}

SageParams sage_params_for(const SagePlan& plan) {
  SageParams p;
  p.num_heads = plan.num_heads;
  p.num_kv_heads = plan.num_kv_heads;
  p.head_dim = plan.head_dim;
  p.head_dim_padded = plan.head_dim_padded;
  p.num_seqs = plan.num_seqs;
  p.causal = plan.causal;
  p.pv = plan.pv;
  // sage::q_factor (sage_numerics.h): one fp32 product with log2(e) rounded to fp32.
  p.q_factor = plan.sm_scale * 1.4426950408889634f;
  p.q_head_stride = plan.head_dim;
  p.q_row_stride = static_cast<int64_t>(plan.num_heads) * plan.head_dim;
  p.o_head_stride = p.q_head_stride;
  p.o_row_stride = p.q_row_stride;
  const int64_t block = sage_page_block_bytes(plan.head_dim_padded);
  p.head8_stride = block;
  p.page8_stride = block * plan.num_kv_heads;
  p.scratch_head_stride = block;
  p.scratch_page_stride = block * plan.num_kv_heads;
  p.scratch_v16_head_stride = static_cast<int64_t>(kSagePageSize) * plan.head_dim_padded;
  p.scratch_v16_page_stride = p.scratch_v16_head_stride * plan.num_kv_heads;
  return p;
}

void sage_attention_cuda(const SagePlan& plan, const SageParams& p, CUstream_st* stream) {
  if (!plan.supported()) detail::throw_error(plan.unsupported_reason);
  check(p.num_heads == plan.num_heads && p.num_kv_heads == plan.num_kv_heads &&
            p.head_dim == plan.head_dim && p.head_dim_padded == plan.head_dim_padded &&
            p.num_seqs == plan.num_seqs && p.causal == plan.causal && p.pv == plan.pv,
        "params do not match the plan");
  check(std::isfinite(p.q_factor) && p.q_factor > 0.0f, "q_factor must be positive and finite");
  if (!plan.run_prefill && !plan.run_decode) return;
  check(p.q != nullptr && p.o != nullptr && p.q8 != nullptr && p.q_scale != nullptr &&
            p.block_table != nullptr && p.cu_seqlens_q != nullptr && p.kv_lens != nullptr,
        "null q, o, Q workspace, block table, cu_seqlens_q or kv_lens");
  check(p.pages8 != nullptr || p.scratch8 != nullptr, "no pages (neither pool nor scratch)");
  check(aligned16(p.q) && aligned16(p.o) && aligned16(p.q8) && aligned16(p.pages8) &&
            aligned16(p.scratch8) && aligned16(p.scratch_v16),
        "q, o, the Q codes and the pages must be 16-byte aligned");
  const int64_t block = sage_page_block_bytes(p.head_dim_padded);
  check(p.q_row_stride % 8 == 0 && p.q_head_stride % 8 == 0 && p.o_row_stride % 2 == 0 &&
            p.o_head_stride % 2 == 0 && p.page8_stride % 16 == 0 && p.head8_stride % 16 == 0 &&
            p.scratch_page_stride % 16 == 0 && p.scratch_head_stride % 16 == 0,
        "strides must be multiples of 8 elements (q), 2 (o) and 16 bytes (pages)");
  check((p.pages8 == nullptr || p.head8_stride >= block) &&
            (p.scratch8 == nullptr || p.scratch_head_stride >= block) && p.block_table_stride >= 1,
        "page strides or block table stride too small");
  check(p.pv != SagePv::kFp16 || p.scratch8 == nullptr || p.scratch_v16 != nullptr,
        "fp16 P.V needs the fp16 V of the scratch pages");
  if (plan.split_slots > 0) {
    check(p.split_acc != nullptr && p.split_ml != nullptr && p.split_offsets != nullptr,
          "this batch needs the split-KV workspace and the split offsets");
  }
  cudaStream_t s = stream;
  check_cuda(sm80::launch_quantize_q(p, plan.max_q_len, s), "sage_attn Q quantization launch",
             __FILE__, __LINE__);
  const bool d64 = plan.head_dim_padded == 64;
  if (plan.run_prefill) {
    cudaError_t err;
    const int q = plan.max_prefill_q_len;
    if (plan.hopper_prefill) {
      err = plan.pv == SagePv::kInt8 ? sm90::launch_prefill<SagePv::kInt8>(p, q, s)
                                     : sm90::launch_prefill<SagePv::kFp8>(p, q, s);
    } else if (plan.pv == SagePv::kFp8) {
      err = d64 ? sm80::launch_prefill<64, SagePv::kFp8>(p, q, s)
                : sm80::launch_prefill<128, SagePv::kFp8>(p, q, s);
    } else if (plan.pv == SagePv::kInt8) {
      err = d64 ? sm80::launch_prefill<64, SagePv::kInt8>(p, q, s)
                : sm80::launch_prefill<128, SagePv::kInt8>(p, q, s);
    } else {
      err = d64 ? sm80::launch_prefill<64, SagePv::kFp16>(p, q, s)
                : sm80::launch_prefill<128, SagePv::kFp16>(p, q, s);
    }
    check_cuda(err, "sage_attn prefill kernel launch", __FILE__, __LINE__);
  }
  if (plan.run_decode) {
    const int mb = plan.max_decode_m_blocks, ms = plan.max_splits;
    cudaError_t err;
    if (plan.pv == SagePv::kFp8) {
      err = d64 ? sm80::launch_decode<64, SagePv::kFp8>(p, mb, ms, s)
                : sm80::launch_decode<128, SagePv::kFp8>(p, mb, ms, s);
    } else if (plan.pv == SagePv::kInt8) {
      err = d64 ? sm80::launch_decode<64, SagePv::kInt8>(p, mb, ms, s)
                : sm80::launch_decode<128, SagePv::kInt8>(p, mb, ms, s);
    } else {
      err = d64 ? sm80::launch_decode<64, SagePv::kFp16>(p, mb, ms, s)
                : sm80::launch_decode<128, SagePv::kFp16>(p, mb, ms, s);
    }
    check_cuda(err, "sage_attn split-KV kernel launch", __FILE__, __LINE__);
  }
  if (plan.run_combine) {
    check_cuda(sm80::launch_split_combine(p, plan.max_combine_q_len, s),
               "sage_attn split combine launch", __FILE__, __LINE__);
  }
}

}  // namespace sagellm::sage_cuda
