// Planning and launching of the `flash` CUDA kernels (flash_cuda.h).

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "attention/batch_layout.h"
#include "attention/flash/flash_cuda.h"
#include "attention/flash/flash_launch_sm80.cuh"
#include "attention/flash/flash_launch_sm90.cuh"
#include "attention/flash/flash_params.h"
#include "core/cuda_check.h"

namespace sagellm::flash_cuda {

namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr int kMaxGridYZ = 65535;

// Messages are put together with streams: nvcc cannot compile fmt (core/cuda_check.h says why),
// so errors leave through detail::throw_error, which throws sagellm::Error.
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
void check(bool ok, const Args&... args) {
  if (!ok) detail::throw_error(cat("flash (CUDA): ", args...));
}

void check_cuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) detail::throw_cuda_error(err, what, file, line);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

int flash_padded_head_dim(int head_dim) {
  if (head_dim <= 0 || head_dim % 8 != 0 || head_dim > kFlashMaxHeadDim) return 0;
  return head_dim <= 64 ? 64 : 128;
}

std::string flash_shape_unsupported_reason(const AttentionShape& shape, int page_size) {
  if (shape.num_heads <= 0 || shape.num_kv_heads <= 0 ||
      shape.num_heads % shape.num_kv_heads != 0) {
    return cat("flash (CUDA): ", shape.num_heads, " query heads cannot share ", shape.num_kv_heads,
               " KV heads");
  }
  if (shape.num_heads > kMaxGridYZ) {
    return cat("flash (CUDA): ", shape.num_heads, " query heads (at most ", kMaxGridYZ, ")");
  }
  if (flash_padded_head_dim(shape.head_dim) == 0) {
    return cat("flash (CUDA): head_dim ", shape.head_dim,
               " is not supported (a multiple of 8, at most ", kFlashMaxHeadDim,
               "; 64 and 128 are native, smaller ones are zero-padded)");
  }
  if (!(std::isfinite(shape.sm_scale) && shape.sm_scale > 0.0f)) {
    return cat("flash (CUDA): sm_scale must be positive and finite (got ", shape.sm_scale, ")");
  }
  if (page_size <= 0 || page_size % 16 != 0) {
    return cat("flash (CUDA): KV cache page size ", page_size,
               " is not supported (a positive multiple of 16)");
  }
  return {};
}

FlashPlan select_flash_kernel(const AttentionShape& shape, const AttentionBatch& batch,
                              int page_size) {
  FlashPlan plan;
  plan.num_heads = shape.num_heads;
  plan.num_kv_heads = shape.num_kv_heads;
  plan.head_dim = shape.head_dim;
  plan.head_dim_padded = flash_padded_head_dim(shape.head_dim);
  plan.page_size = page_size;
  plan.sm_scale = shape.sm_scale;
  plan.causal = batch.causal;
  plan.num_seqs = static_cast<int>(batch.seqs.size());
  plan.unsupported_reason = flash_shape_unsupported_reason(shape, page_size);
  if (!plan.supported()) return plan;
  const auto reject = [&plan](const std::string& why) {
    plan.unsupported_reason = "flash (CUDA): " + why;
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
    if (flash_uses_split_kernel(seq.q_len, group)) {
      plan.run_decode = true;
      plan.max_decode_m_blocks =
          std::max(plan.max_decode_m_blocks, flash_ceil_div(seq.q_len * group, kFlashDecodeBlockM));
      const int splits = flash_num_splits(seq.kv_len);
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
      const int used = flash_ceil_div(seq.kv_len, page_size);
      for (int j = 0; j < used; ++j) {
        plan.num_pages = std::max(plan.num_pages, seq.pages[static_cast<size_t>(j)] + 1);
      }
    }
  }
  if (static_cast<int64_t>(shape.num_kv_heads) * std::max(plan.max_decode_m_blocks, 1) >
      kMaxGridYZ) {
    return reject(cat(shape.num_kv_heads, " KV heads (too many for the split kernel's grid)"));
  }
  plan.hopper_prefill = plan.run_prefill && sm90::prefill_available();
  plan.total_q = static_cast<int>(next_row - plan.first_q_row);
  plan.split_slots = slots;
  return plan;
}

bool supports(const AttentionShape& shape, const AttentionBatch& batch, int page_size,
              std::string* reason) {
  FlashPlan plan = select_flash_kernel(shape, batch, page_size);
  if (reason != nullptr) *reason = plan.unsupported_reason;
  return plan.supported();
}

FlashParams flash_params_for(const FlashPlan& plan) {
  FlashParams p;
  p.num_heads = plan.num_heads;
  p.num_kv_heads = plan.num_kv_heads;
  p.head_dim = plan.head_dim;
  p.page_size = plan.page_size;
  p.num_seqs = plan.num_seqs;
  p.causal = plan.causal;
  p.sm_scale = plan.sm_scale;
  p.scale_log2 = static_cast<float>(static_cast<double>(plan.sm_scale) * kLog2e);
  p.q_head_stride = plan.head_dim;
  p.q_row_stride = static_cast<int64_t>(plan.num_heads) * plan.head_dim;
  p.o_head_stride = p.q_head_stride;
  p.o_row_stride = p.q_row_stride;
  p.kv_head_stride = static_cast<int64_t>(plan.page_size) * plan.head_dim;
  p.page_stride = static_cast<int64_t>(plan.num_kv_heads) * p.kv_head_stride;
  return p;
}

std::vector<int32_t> flash_cu_seqlens_q(const AttentionBatch& batch) {
  std::vector<int32_t> cu;
  cu.reserve(batch.seqs.size() + 1);
  cu.push_back(batch.seqs.empty() ? 0 : batch.seqs.front().q_start);
  for (const AttentionSeq& s : batch.seqs) cu.push_back(cu.back() + s.q_len);
  return cu;
}

std::vector<int32_t> flash_kv_lens(const AttentionBatch& batch) {
  std::vector<int32_t> kv;
  kv.reserve(batch.seqs.size());
  for (const AttentionSeq& s : batch.seqs) kv.push_back(s.kv_len);
  return kv;
}

std::vector<int32_t> flash_block_table(const AttentionBatch& batch, int page_size, int* stride) {
  int w = 1;
  for (const AttentionSeq& s : batch.seqs) {
    const int need = page_size > 0 ? (s.kv_len + page_size - 1) / page_size : 0;
    w = std::max(w, need);
  }
  std::vector<int32_t> table(batch.seqs.size() * static_cast<size_t>(w), 0);
  for (size_t i = 0; i < batch.seqs.size(); ++i) {
    const AttentionSeq& s = batch.seqs[i];
    const int need = page_size > 0 ? (s.kv_len + page_size - 1) / page_size : 0;
    for (int j = 0; j < need && j < static_cast<int>(s.pages.size()); ++j) {
      table[i * static_cast<size_t>(w) + static_cast<size_t>(j)] = s.pages[static_cast<size_t>(j)];
    }
  }
  if (stride != nullptr) *stride = w;
  return table;
}

void flash_attention_cuda(const FlashPlan& plan, const FlashParams& p, CUstream_st* stream) {
  if (!plan.supported()) detail::throw_error(plan.unsupported_reason);
  check(p.num_heads == plan.num_heads && p.num_kv_heads == plan.num_kv_heads &&
            p.head_dim == plan.head_dim && p.page_size == plan.page_size &&
            p.num_seqs == plan.num_seqs && p.causal == plan.causal,
        "params (heads ", p.num_heads, "/", p.num_kv_heads, ", head_dim ", p.head_dim,
        ", page size ", p.page_size, ", ", p.num_seqs, " requests, causal ", p.causal,
        ") do not match the plan (heads ", plan.num_heads, "/", plan.num_kv_heads, ", head_dim ",
        plan.head_dim, ", page size ", plan.page_size, ", ", plan.num_seqs, " requests, causal ",
        plan.causal, ")");
  check(std::isfinite(p.scale_log2) && p.scale_log2 > 0.0f,
        "scale_log2 must be positive and finite (got ", p.scale_log2, ")");
  if (!plan.run_prefill && !plan.run_decode) return;
  check(p.q != nullptr && p.o != nullptr && p.k_pages != nullptr && p.v_pages != nullptr &&
            p.block_table != nullptr && p.cu_seqlens_q != nullptr && p.kv_lens != nullptr,
        "null q, o, K/V pages, block table, cu_seqlens_q or kv_lens");
  check(aligned16(p.q) && aligned16(p.o) && aligned16(p.k_pages) && aligned16(p.v_pages),
        "q, o, k_pages and v_pages must be 16-byte aligned");
  check(p.q_row_stride % 8 == 0 && p.q_head_stride % 8 == 0 && p.o_row_stride % 8 == 0 &&
            p.o_head_stride % 8 == 0 && p.page_stride % 8 == 0 && p.kv_head_stride % 8 == 0,
        "strides must be multiples of 8 elements (q ", p.q_row_stride, "/", p.q_head_stride, ", o ",
        p.o_row_stride, "/", p.o_head_stride, ", page ", p.page_stride, ", kv head ",
        p.kv_head_stride, ")");
  check(p.kv_head_stride >= static_cast<int64_t>(p.page_size) * p.head_dim &&
            p.page_stride >= static_cast<int64_t>(p.num_kv_heads) * p.kv_head_stride &&
            p.block_table_stride >= 1,
        "page strides (", p.page_stride, ", ", p.kv_head_stride, ") or block table stride (",
        p.block_table_stride, ") too small");
  if (plan.split_slots > 0) {
    check(p.split_acc != nullptr && p.split_ml != nullptr && p.split_offsets != nullptr,
          "this batch needs the split-KV workspace (", plan.workspace_bytes(),
          " bytes) and the split offsets");
  }
  cudaStream_t s = stream;
  if (plan.run_prefill) {
    const int q = plan.max_prefill_q_len;
    const bool d64 = plan.head_dim_padded == 64;
    check_cuda(plan.hopper_prefill
                   ? (d64 ? sm90::launch_prefill<64>(p, q, plan.num_pages, s)
                          : sm90::launch_prefill<128>(p, q, plan.num_pages, s))
                   : (d64 ? sm80::launch_prefill<64>(p, q, s) : sm80::launch_prefill<128>(p, q, s)),
               "flash prefill kernel launch", __FILE__, __LINE__);
  }
  if (plan.run_decode) {
    check_cuda(plan.head_dim_padded == 64
                   ? sm80::launch_decode<64>(p, plan.max_decode_m_blocks, plan.max_splits, s)
                   : sm80::launch_decode<128>(p, plan.max_decode_m_blocks, plan.max_splits, s),
               "flash split-KV kernel launch", __FILE__, __LINE__);
  }
  if (plan.run_combine) {
    check_cuda(sm80::launch_split_combine(p, plan.max_combine_q_len, s),
               "flash split combine launch", __FILE__, __LINE__);
  }
}

}  // namespace sagellm::flash_cuda
