// The CUDA half of `sagellm bench-attention`: times the `flash` kernels with CUDA events. Built
// only with CUDA (*_cuda.cpp); bench_attention.cpp does not call it otherwise.
#if defined(SAGELLM_HAVE_CUDA)

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attention/cuda_attention.h"
#include "attention/flash/flash_cuda.h"
#include "attention/sage/sage_backend.h"
#include "attention/sage/sage_cuda.h"
#include "cli/bench_attention.h"
#include "core/cuda_check.h"
#include "core/cuda_device.h"
#include "core/device_buffer.h"
#include "core/dtype.h"
#include "core/error.h"

namespace sagellm::cli {

namespace {

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = float_to_bf16(x[i]);
  return h;
}

// The page pool the kernels read, [page][kv_head][slot][head_dim]; slots no token fills stay 0.
void fill_pools(const AttentionBenchProblem& p, std::vector<uint16_t>& k_pool,
                std::vector<uint16_t>& v_pool) {
  const int kvh = p.shape.num_kv_heads, hd = p.shape.head_dim, ps = p.page_size;
  const size_t page_elems = static_cast<size_t>(kvh) * ps * hd;
  k_pool.assign(page_elems * static_cast<size_t>(p.num_pages), 0);
  v_pool.assign(k_pool.size(), 0);
  const size_t width = static_cast<size_t>(kvh) * hd;
  for (size_t b = 0; b < p.batch.seqs.size(); ++b) {
    const AttentionSeq& seq = p.batch.seqs[b];
    for (int t = 0; t < seq.kv_len; ++t) {
      const size_t page = static_cast<size_t>(seq.pages[static_cast<size_t>(t / ps)]);
      const size_t src_row = (b * static_cast<size_t>(p.kv_len) + t) * width;
      for (int h = 0; h < kvh; ++h) {
        const size_t dst = page * page_elems + (static_cast<size_t>(h) * ps + t % ps) * hd;
        const size_t src = src_row + static_cast<size_t>(h) * hd;
        for (int d = 0; d < hd; ++d) {
          k_pool[dst + d] = float_to_bf16(p.k[src + d]);
          v_pool[dst + d] = float_to_bf16(p.v[src + d]);
        }
      }
    }
  }
}

// Events destroyed on every exit path (a failing launch throws).
class EventPair {
 public:
  EventPair() {
    SAGELLM_CUDA_CHECK(cudaEventCreate(&start_));
    SAGELLM_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventPair() {
    (void)cudaEventDestroy(start_);
    (void)cudaEventDestroy(stop_);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  cudaEvent_t start() const { return start_; }
  cudaEvent_t stop() const { return stop_; }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// Times `call` with CUDA events, `repeats` times after `warmup` untimed calls, and reads the bf16
// output back: the seconds, out and device fields of an AttentionTiming.
template <typename F>
AttentionTiming time_calls(F&& call, int warmup, int repeats, const DeviceBuffer<uint16_t>& o_dev,
                           const GpuInfo& gpu) {
  for (int i = 0; i < warmup; ++i) call();
  SAGELLM_CUDA_CHECK(cudaDeviceSynchronize());
  EventPair events;
  AttentionTiming t;
  for (int i = 0; i < repeats; ++i) {
    SAGELLM_CUDA_CHECK(cudaEventRecord(events.start(), nullptr));
    call();
    SAGELLM_CUDA_CHECK(cudaEventRecord(events.stop(), nullptr));
    SAGELLM_CUDA_CHECK(cudaEventSynchronize(events.stop()));
    float ms = 0.0f;
    SAGELLM_CUDA_CHECK(cudaEventElapsedTime(&ms, events.start(), events.stop()));
    t.seconds.push_back(static_cast<double>(ms) * 1e-3);
  }
  const std::vector<uint16_t> o = o_dev.to_host();
  t.out.resize(o.size());
  for (size_t i = 0; i < o.size(); ++i) t.out[i] = bf16_to_float(o[i]);
  t.device = describe_gpu(gpu);
  return t;
}

}  // namespace

AttentionTiming time_flash_cuda(const AttentionBenchProblem& p, int warmup, int repeats) {
  using namespace flash_cuda;
  const GpuInfo gpu = require_supported_gpu(0);
  SAGELLM_CUDA_CHECK(cudaSetDevice(gpu.device));
  const FlashPlan plan = select_flash_kernel(p.shape, p.batch, p.page_size);
  SAGELLM_CHECK(plan.supported(), "the flash CUDA kernels do not support this problem: {}",
                plan.unsupported_reason);
  FlashParams params = flash_params_for(plan);

  std::vector<uint16_t> k_pool, v_pool;
  fill_pools(p, k_pool, v_pool);
  auto q_dev = DeviceBuffer<uint16_t>::from_host(to_bf16(p.q));
  DeviceBuffer<uint16_t> o_dev(p.q.size());
  o_dev.zero();
  auto k_dev = DeviceBuffer<uint16_t>::from_host(k_pool);
  auto v_dev = DeviceBuffer<uint16_t>::from_host(v_pool);
  k_pool = {};
  v_pool = {};
  int table_stride = 0;
  auto table_dev =
      DeviceBuffer<int32_t>::from_host(flash_block_table(p.batch, p.page_size, &table_stride));
  auto cu_dev = DeviceBuffer<int32_t>::from_host(flash_cu_seqlens_q(p.batch));
  auto kv_lens_dev = DeviceBuffer<int32_t>::from_host(flash_kv_lens(p.batch));
  DeviceBuffer<int32_t> offsets_dev;
  if (!plan.split_offsets.empty()) {
    offsets_dev = DeviceBuffer<int32_t>::from_host(plan.split_offsets);
  }
  DeviceBuffer<float> acc_dev(static_cast<size_t>(plan.split_acc_floats()));
  DeviceBuffer<float> ml_dev(static_cast<size_t>(plan.split_ml_floats()));
  params.q = q_dev.data();
  params.o = o_dev.data();
  params.k_pages = k_dev.data();
  params.v_pages = v_dev.data();
  params.block_table = table_dev.data();
  params.block_table_stride = table_stride;
  params.cu_seqlens_q = cu_dev.data();
  params.kv_lens = kv_lens_dev.data();
  params.split_offsets = offsets_dev.data();
  params.split_acc = acc_dev.data();
  params.split_ml = ml_dev.data();

  AttentionTiming t =
      time_calls([&] { flash_attention_cuda(plan, params, nullptr); }, warmup, repeats, o_dev, gpu);
  std::string kernels = plan.run_prefill ? "prefill" : "";
  if (plan.run_decode) kernels += kernels.empty() ? "split-KV" : " + split-KV";
  if (plan.run_combine) kernels += " + combine";
  t.method = fmt::format(
      "CUDA events around each launch of the flash kernels ({}), after {} warm-up launches; bf16 "
      "Q/K/V/O, fp32 softmax and accumulation",
      kernels, warmup);
  return t;
}

AttentionTiming time_sage_cuda(const AttentionBenchProblem& p, const AttentionOptions& options,
                               int warmup, int repeats) {
  using namespace sage_cuda;
  const GpuInfo gpu = require_supported_gpu(0);
  SAGELLM_CUDA_CHECK(cudaSetDevice(gpu.device));
  std::unique_ptr<CudaAttention> attention = make_sage_cuda_attention(options);
  const std::string why = attention->unsupported_reason(p.shape, p.page_size, KVCacheDType::kInt8);
  SAGELLM_CHECK(why.empty(), "the sage_attn CUDA kernels do not support this problem: {}", why);

  std::vector<uint16_t> k_pool, v_pool;
  fill_pools(p, k_pool, v_pool);
  auto q_dev = DeviceBuffer<uint16_t>::from_host(to_bf16(p.q));
  DeviceBuffer<uint16_t> o_dev(p.q.size());
  o_dev.zero();
  auto k_dev = DeviceBuffer<uint16_t>::from_host(k_pool);
  auto v_dev = DeviceBuffer<uint16_t>::from_host(v_pool);
  k_pool = {};
  v_pool = {};
  const int kvh = p.shape.num_kv_heads, hd = p.shape.head_dim, ps = p.page_size;
  CudaKVLayer layer;
  layer.k_pages = k_dev.data();
  layer.v_pages = v_dev.data();
  layer.kv_head_stride = static_cast<int64_t>(ps) * hd;
  layer.page_stride = layer.kv_head_stride * kvh;
  layer.page_size = ps;
  layer.num_pages = p.num_pages;
  CudaKVCacheView view;
  view.page_size = ps;
  const bool decode = p.q_len == 1;
  std::vector<int32_t> tail_slot_of_page;
  DeviceBuffer<uint8_t> pool;
  if (decode) {
    // An 8-bit cache: full pages sealed once here, the partly filled last page of a request stays
    // bf16 (its tail slot is its own page of the bf16 pool).
    const int dp = sage_padded_head_dim(hd);
    const int64_t block = sage_page_block_bytes(dp);
    pool = DeviceBuffer<uint8_t>(static_cast<size_t>(p.num_pages) * kvh * block);
    pool.zero();
    tail_slot_of_page.assign(static_cast<size_t>(p.num_pages), -1);
    std::vector<int32_t> jobs;
    for (const AttentionSeq& seq : p.batch.seqs) {
      for (int pi = 0; pi * ps < seq.kv_len; ++pi) {
        const int page = seq.pages[static_cast<size_t>(pi)];
        const int n = std::min(ps, seq.kv_len - pi * ps);
        if (n < ps) {
          tail_slot_of_page[static_cast<size_t>(page)] = page;
          continue;
        }
        jobs.insert(jobs.end(), {page, n, 0, 0, page});
      }
    }
    if (!jobs.empty()) {
      auto jobs_dev = DeviceBuffer<int32_t>::from_host(jobs);
      SageQuantParams qp;
      qp.jobs = reinterpret_cast<const SageQuantJob*>(jobs_dev.data());
      qp.num_jobs = static_cast<int>(jobs.size() / 5);
      qp.k_src = k_dev.data();
      qp.v_src = v_dev.data();
      qp.src_page_stride = layer.page_stride;
      qp.src_head_stride = layer.kv_head_stride;
      qp.dst8 = pool.data();
      qp.dst_head_stride = block;
      qp.dst_page_stride = block * kvh;
      qp.num_kv_heads = kvh;
      qp.head_dim = hd;
      qp.head_dim_padded = dp;
      qp.v_int8 = attention->kv_value_codes() == KVValueCodes::kInt8;
      sage_quantize_pages_cuda(qp, nullptr);
      SAGELLM_CUDA_CHECK(cudaDeviceSynchronize());
    }
    layer.dtype = view.dtype = KVCacheDType::kInt8;
    layer.pages8 = pool.data();
    layer.head8_stride = block;
    layer.page8_stride = block * kvh;
    view.tail_slot_of_page = &tail_slot_of_page;
  }
  attention->plan(p.shape, p.batch, view, nullptr);
  const int64_t row = static_cast<int64_t>(p.shape.num_heads) * hd;
  const auto call = [&] { attention->run(layer, q_dev.data(), row, o_dev.data(), nullptr); };

  AttentionTiming t = time_calls(call, warmup, repeats, o_dev, gpu);
  t.method = fmt::format(
      "CUDA events around each sage_attn call (page quantization of {}, Q quantization, "
      "attention kernels), after {} warm-up calls; P.V in {}",
      decode ? "each request's bf16 tail page; full pages sealed 8-bit beforehand"
             : "every K/V page from bf16",
      warmup, options.sage_pv_dtype);
  return t;
}

}  // namespace sagellm::cli

#endif  // SAGELLM_HAVE_CUDA
