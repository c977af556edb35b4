// `sage_attn` on the GPU: the planner and kernels of sage_cuda.h over the engine's paged cache.
// Pages that are not sealed 8-bit pages (every page of a bf16 cache, the bf16 tail page of each
// request of an 8-bit cache) are quantized on the fly into a per-call scratch by the cache's own
// sealing kernel, once per layer, and the attention kernels read them like sealed pages: this is
// the CPU twin's rule (sage_numerics.h step 2).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "attention/cuda_attention.h"
#include "attention/sage/sage_backend.h"
#include "attention/sage/sage_cuda.h"
#include "core/device_buffer.h"
#include "core/error.h"

namespace sagellm {

namespace {

using sage_cuda::kSagePageSize;
using sage_cuda::SageQuantJob;

class SageCudaAttention final : public CudaAttention {
 public:
  explicit SageCudaAttention(sage_cuda::SagePv pv) : pv_(pv) {}

  std::string_view name() const override { return "sage_attn"; }

  std::string unsupported_reason(const AttentionShape& shape, int page_size,
                                 KVCacheDType /*dtype*/) const override {
    // Both storages work: bf16 pages are quantized on the fly, 8-bit pages read as stored.
    return sage_cuda::sage_shape_unsupported_reason(shape, page_size, pv_);
  }

  KVCacheDType default_kv_cache_dtype() const override { return KVCacheDType::kInt8; }
  KVValueCodes kv_value_codes() const override {
    return pv_ == sage_cuda::SagePv::kInt8 ? KVValueCodes::kInt8 : KVValueCodes::kFp8E4M3;
  }

  void plan(const AttentionShape& shape, const AttentionBatch& batch, const CudaKVCacheView& kv,
            CUstream_st* stream) override {
    plan_ = sage_cuda::select_sage_kernel(shape, batch, kv.page_size, pv_);
    SAGELLM_CHECK(plan_.supported(), "sage_attn attention on the GPU: {}",
                  plan_.unsupported_reason);
    check_view(kv);
    int width = 1;
    for (const AttentionSeq& s : batch.seqs) width = std::max(width, pages_of(s));
    build_tables(batch, kv, width, /*slot_per_request=*/false);
    upload(stream);
  }

  bool plan_fixed_decode(const AttentionShape& shape, const AttentionBatch& batch,
                         const CudaKVCacheView& kv, int max_pages, CUstream_st* stream) override {
    // Only an 8-bit cache has a fixed amount of on-the-fly work per decode step (one tail page
    // per request at most); a bf16 cache quantizes every page, a number that grows each step.
    if (kv.dtype != KVCacheDType::kInt8 || batch.seqs.empty()) return false;
    sage_cuda::SagePlan plan = sage_cuda::select_sage_kernel(shape, batch, kv.page_size, pv_);
    SAGELLM_CHECK(plan.supported(), "sage_attn attention on the GPU: {}", plan.unsupported_reason);
    for (const AttentionSeq& s : batch.seqs) {
      if (s.q_len != 1 || s.kv_len > static_cast<int64_t>(max_pages) * kv.page_size) return false;
    }
    if (plan.run_prefill || !plan.run_decode) return false;
    check_view(kv);
    // Launch dimensions and buffers that depend only on the request count and max_pages: the
    // split kernel's grid covers the most splits (blocks past a request's own count exit), the
    // combine skips requests with one split, and request s owns scratch slot s.
    const auto n = static_cast<int64_t>(batch.seqs.size());
    plan.max_splits = sage_cuda::kSageMaxSplits;
    plan.run_combine = true;
    plan.max_combine_q_len = 1;
    for (int64_t s = 0; s < n; ++s) {
      plan.split_offsets[static_cast<size_t>(s)] =
          static_cast<int32_t>(s * shape.num_heads * sage_cuda::kSageMaxSplits);
    }
    plan.split_slots = n * shape.num_heads * sage_cuda::kSageMaxSplits;
    plan_ = std::move(plan);
    build_tables(batch, kv, max_pages, /*slot_per_request=*/true);
    upload(stream);
    return true;
  }

  uint64_t buffer_epoch() const override { return epoch_; }

  void run(const CudaKVLayer& kv, const void* q, int64_t q_row_stride, void* out,
           CUstream_st* stream) override {
    SAGELLM_CHECK(kv.dtype == dtype_, "sage_attn: the layer's cache storage changed after plan()");
    if (num_jobs_ > 0) {
      sage_cuda::SageQuantParams qp;
      qp.jobs = reinterpret_cast<const SageQuantJob*>(meta_.data() + off_jobs_);
      qp.num_jobs = num_jobs_;
      qp.k_src = kv.k_pages;
      qp.v_src = kv.v_pages;
      qp.src_page_stride = kv.page_stride;
      qp.src_head_stride = kv.kv_head_stride;
      qp.dst8 = scratch8_.data();
      qp.dst_page_stride = params_.scratch_page_stride;
      qp.dst_head_stride = params_.scratch_head_stride;
      qp.v_int8 = pv_ == sage_cuda::SagePv::kInt8;
      if (pv_ == sage_cuda::SagePv::kFp16) {
        qp.dst_v16 = scratch_v16_.data();
        qp.dst_v16_page_stride = params_.scratch_v16_page_stride;
        qp.dst_v16_head_stride = params_.scratch_v16_head_stride;
      }
      qp.num_kv_heads = plan_.num_kv_heads;
      qp.head_dim = plan_.head_dim;
      qp.head_dim_padded = plan_.head_dim_padded;
      sage_cuda::sage_quantize_pages_cuda(qp, stream);
    }
    sage_cuda::SageParams p = params_;
    p.q = q;
    p.q_row_stride = q_row_stride;
    p.o = out;
    if (kv.dtype == KVCacheDType::kInt8) {
      p.pages8 = static_cast<const uint8_t*>(kv.pages8);
      p.page8_stride = kv.page8_stride;
      p.head8_stride = kv.head8_stride;
    }
    sage_cuda::sage_attention_cuda(plan_, p, stream);
  }

 private:
  static int pages_of(const AttentionSeq& s) {
    return (s.kv_len + kSagePageSize - 1) / kSagePageSize;
  }

  static void check_view(const CudaKVCacheView& kv) {
    SAGELLM_CHECK(kv.dtype == KVCacheDType::kFloat ||
                      (kv.dtype == KVCacheDType::kInt8 && kv.tail_slot_of_page != nullptr),
                  "sage_attn: an 8-bit cache view without its tail map");
  }

  // The attention kernels' block table and the on-the-fly quantization jobs. With
  // slot_per_request, request s's tail page (if any) goes to scratch slot s and every request has
  // a job (an empty one without a tail), so the buffers depend only on the request count.
  void build_tables(const AttentionBatch& batch, const CudaKVCacheView& kv, int width,
                    bool slot_per_request) {
    dtype_ = kv.dtype;
    lens_.clear();
    for (const AttentionSeq& s : batch.seqs) lens_.emplace_back(s.q_len, s.kv_len);
    block_table_.assign(batch.seqs.size() * static_cast<size_t>(width), 0);
    jobs_.clear();
    for (size_t s = 0; s < batch.seqs.size(); ++s) {
      const AttentionSeq& seq = batch.seqs[s];
      const int used = pages_of(seq);
      bool has_job = false;
      for (int pi = 0; pi < used; ++pi) {
        const int page = seq.pages[static_cast<size_t>(pi)];
        int32_t src = page;
        if (kv.dtype == KVCacheDType::kInt8) {
          SAGELLM_CHECK(page < static_cast<int>(kv.tail_slot_of_page->size()),
                        "sage_attn: page {} outside the cache", page);
          src = (*kv.tail_slot_of_page)[static_cast<size_t>(page)];
        }
        int32_t entry = page;
        if (src >= 0) {
          SageQuantJob job;
          job.src_page = src;
          job.n_old = std::min(kSagePageSize, seq.kv_len - pi * kSagePageSize);
          job.dst = static_cast<int32_t>(slot_per_request ? s : jobs_.size());
          entry = sage_cuda::sage_scratch_ref(job.dst);
          SAGELLM_CHECK(!(slot_per_request && has_job),
                        "sage_attn: request {} has more than one unsealed page", s);
          has_job = true;
          jobs_.push_back(job);
        }
        block_table_[s * static_cast<size_t>(width) + static_cast<size_t>(pi)] = entry;
      }
      if (slot_per_request && !has_job) {
        SageQuantJob none;
        none.dst = static_cast<int32_t>(s);
        jobs_.push_back(none);
      }
    }
    width_ = width;
    num_jobs_ = static_cast<int>(jobs_.size());
  }

  // One upload for cu_seqlens, kv_lens, the block table, the split offsets and the jobs; the
  // workspaces grow to what the plan needs.
  void upload(CUstream_st* stream) {
    staging_.clear();
    int32_t row = plan_.first_q_row;
    staging_.push_back(row);
    for (const auto& [q_len, kv_len] : lens_) {
      row += q_len;
      staging_.push_back(row);
    }
    const size_t off_kv = staging_.size();
    for (const auto& lens : lens_) staging_.push_back(lens.second);
    const size_t off_table = staging_.size();
    staging_.insert(staging_.end(), block_table_.begin(), block_table_.end());
    const size_t off_split = staging_.size();
    staging_.insert(staging_.end(), plan_.split_offsets.begin(), plan_.split_offsets.end());
    off_jobs_ = staging_.size();
    for (const SageQuantJob& j : jobs_) {
      staging_.insert(staging_.end(), {j.src_page, j.n_old, j.first_new_row, j.n_new, j.dst});
    }
    grow(meta_, staging_.size());
    meta_.upload_async(staging_, stream);

    params_ = sage_cuda::sage_params_for(plan_);
    params_.cu_seqlens_q = meta_.data();
    params_.kv_lens = meta_.data() + off_kv;
    params_.block_table = meta_.data() + off_table;
    params_.block_table_stride = width_;
    params_.split_offsets = plan_.split_offsets.empty() ? nullptr : meta_.data() + off_split;
    grow(q8_, static_cast<size_t>(std::max<int64_t>(plan_.q8_bytes(), 16)));
    grow(q_scale_, static_cast<size_t>(std::max<int64_t>(plan_.q_scale_floats(), 1)));
    params_.q8 = q8_.data();
    params_.q_scale = q_scale_.data();
    if (num_jobs_ > 0) {
      grow(scratch8_,
           static_cast<size_t>(num_jobs_) * static_cast<size_t>(params_.scratch_page_stride));
      params_.scratch8 = scratch8_.data();
      if (pv_ == sage_cuda::SagePv::kFp16) {
        grow(scratch_v16_,
             static_cast<size_t>(num_jobs_) * static_cast<size_t>(params_.scratch_v16_page_stride));
        params_.scratch_v16 = scratch_v16_.data();
      }
    }
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

  sage_cuda::SagePv pv_;
  uint64_t epoch_ = 0;
  KVCacheDType dtype_ = KVCacheDType::kFloat;
  sage_cuda::SagePlan plan_;
  sage_cuda::SageParams params_;
  std::vector<std::pair<int32_t, int32_t>> lens_;  // (q_len, kv_len) per request
  std::vector<int32_t> block_table_, staging_;
  std::vector<SageQuantJob> jobs_;
  int width_ = 1;
  int num_jobs_ = 0;
  size_t off_jobs_ = 0;
  DeviceBuffer<int32_t> meta_;
  DeviceBuffer<int8_t> q8_;
  DeviceBuffer<float> q_scale_, split_acc_, split_ml_;
  DeviceBuffer<uint8_t> scratch8_;
  DeviceBuffer<uint16_t> scratch_v16_;
};

}  // namespace

std::unique_ptr<CudaAttention> make_sage_cuda_attention(const AttentionOptions& options) {
  const std::string& pv = options.sage_pv_dtype;
  SAGELLM_CHECK(pv == "fp8" || pv == "int8" || pv == "fp16",
                "unknown --sage-pv-dtype '{}' (choose one of: fp8, int8, fp16)", pv);
  return std::make_unique<SageCudaAttention>(pv == "fp8"    ? sage_cuda::SagePv::kFp8
                                             : pv == "int8" ? sage_cuda::SagePv::kInt8
                                                            : sage_cuda::SagePv::kFp16);
}

}  // namespace sagellm
