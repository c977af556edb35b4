// `flash` on the GPU: the planner and kernels of flash_cuda.h over the engine's paged cache.
#include <cuda_runtime_api.h>

#include <vector>

#include "attention/cuda_attention.h"
#include "attention/flash/flash_backend.h"
#include "attention/flash/flash_cuda.h"
#include "core/device_buffer.h"
#include "core/error.h"

namespace sagellm {

namespace {

class FlashCudaAttention final : public CudaAttention {
 public:
  std::string_view name() const override { return "flash"; }

  std::string unsupported_reason(const AttentionShape& shape, int page_size,
                                 KVCacheDType dtype) const override {
    if (dtype != KVCacheDType::kFloat) {
      return "flash reads bf16 pages only (use --kv-cache-dtype bf16 or auto)";
    }
    return flash_cuda::flash_shape_unsupported_reason(shape, page_size);
  }

  void plan(const AttentionShape& shape, const AttentionBatch& batch, const CudaKVCacheView& kv,
            CUstream_st* stream) override {
    require_bf16(kv);
    const int page_size = kv.page_size;
    plan_ = flash_cuda::select_flash_kernel(shape, batch, page_size);
    SAGELLM_CHECK(plan_.supported(), "flash attention on the GPU: {}", plan_.unsupported_reason);
    params_ = flash_cuda::flash_params_for(plan_);
    block_table_ = flash_cuda::flash_block_table(batch, page_size, &params_.block_table_stride);
    upload(batch, stream);
  }

  bool plan_fixed_decode(const AttentionShape& shape, const AttentionBatch& batch,
                         const CudaKVCacheView& kv, int max_pages, CUstream_st* stream) override {
    require_bf16(kv);
    const int page_size = kv.page_size;
    flash_cuda::FlashPlan plan = flash_cuda::select_flash_kernel(shape, batch, page_size);
    SAGELLM_CHECK(plan.supported(), "flash attention on the GPU: {}", plan.unsupported_reason);
    for (const AttentionSeq& s : batch.seqs) {
      if (s.q_len != 1 || s.kv_len > static_cast<int64_t>(max_pages) * page_size) return false;
    }
    if (batch.seqs.empty() || plan.run_prefill || !plan.run_decode) return false;
    // The split kernel runs on the largest grid any request can need; blocks past a request's
    // own split count (computed on the device from kv_len) return at once, and the combine
    // kernel skips requests with one split. Each request owns room for the most splits.
    const auto n = static_cast<int64_t>(batch.seqs.size());
    plan.max_splits = flash_cuda::kFlashMaxSplits;
    plan.run_combine = true;
    plan.max_combine_q_len = 1;
    for (int64_t s = 0; s < n; ++s) {
      plan.split_offsets[static_cast<size_t>(s)] =
          static_cast<int32_t>(s * shape.num_heads * flash_cuda::kFlashMaxSplits);
    }
    plan.split_slots = n * shape.num_heads * flash_cuda::kFlashMaxSplits;
    plan_ = std::move(plan);
    params_ = flash_cuda::flash_params_for(plan_);
    params_.block_table_stride = max_pages;
    block_table_.assign(static_cast<size_t>(n) * max_pages, 0);
    for (int64_t s = 0; s < n; ++s) {
      const AttentionSeq& seq = batch.seqs[static_cast<size_t>(s)];
      const int used = (seq.kv_len + page_size - 1) / page_size;
      std::copy(seq.pages.begin(), seq.pages.begin() + used, block_table_.begin() + s * max_pages);
    }
    upload(batch, stream);
    return true;
  }

  uint64_t buffer_epoch() const override { return epoch_; }

  void run(const CudaKVLayer& kv, const void* q, int64_t q_row_stride, void* out,
           CUstream_st* stream) override {
    flash_cuda::FlashParams p = params_;
    p.q = q;
    p.q_row_stride = q_row_stride;
    p.o = out;
    p.k_pages = kv.k_pages;
    p.v_pages = kv.v_pages;
    p.page_stride = kv.page_stride;
    p.kv_head_stride = kv.kv_head_stride;
    flash_cuda::flash_attention_cuda(plan_, p, stream);
  }

 private:
  static void require_bf16(const CudaKVCacheView& kv) {
    SAGELLM_CHECK(kv.dtype == KVCacheDType::kFloat,
                  "flash attention on the GPU reads bf16 pages only, not an 8-bit cache");
  }

  // Uploads cu_seqlens, kv_lens, the block table and the split offsets in one copy and points the
  // params at them; allocates the split workspace the plan needs.
  void upload(const AttentionBatch& batch, CUstream_st* stream) {
    cu_seqlens_ = flash_cuda::flash_cu_seqlens_q(batch);
    kv_lens_ = flash_cuda::flash_kv_lens(batch);
    staging_.clear();
    const size_t off_cu = 0;
    staging_.insert(staging_.end(), cu_seqlens_.begin(), cu_seqlens_.end());
    const size_t off_kv = staging_.size();
    staging_.insert(staging_.end(), kv_lens_.begin(), kv_lens_.end());
    const size_t off_table = staging_.size();
    staging_.insert(staging_.end(), block_table_.begin(), block_table_.end());
    const size_t off_split = staging_.size();
    staging_.insert(staging_.end(), plan_.split_offsets.begin(), plan_.split_offsets.end());
    grow(meta_, staging_.size());
    meta_.upload_async(staging_, stream);
    params_.cu_seqlens_q = meta_.data() + off_cu;
    params_.kv_lens = meta_.data() + off_kv;
    params_.block_table = meta_.data() + off_table;
    params_.split_offsets = plan_.split_offsets.empty() ? nullptr : meta_.data() + off_split;
    if (plan_.split_slots > 0) {
      grow(split_acc_, static_cast<size_t>(plan_.split_acc_floats()));
      grow(split_ml_, static_cast<size_t>(plan_.split_ml_floats()));
      params_.split_acc = split_acc_.data();
      params_.split_ml = split_ml_.data();
    }
  }

  template <typename T>
  void grow(DeviceBuffer<T>& buf, size_t count) {
    if (buf.size() >= count) return;
    ensure_capacity(buf, count);
    ++epoch_;
  }

  uint64_t epoch_ = 0;
  flash_cuda::FlashPlan plan_;
  flash_cuda::FlashParams params_;
  std::vector<int32_t> cu_seqlens_, kv_lens_, block_table_, staging_;
  DeviceBuffer<int32_t> meta_;
  DeviceBuffer<float> split_acc_, split_ml_;
};

}  // namespace

std::unique_ptr<CudaAttention> make_flash_cuda_attention() {
  return std::make_unique<FlashCudaAttention>();
}

}  // namespace sagellm
