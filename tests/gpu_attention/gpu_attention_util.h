// Helpers for the CUDA attention tests: seeded bf16 problems in a paged layout with shuffled page
// order (unused pages and slots past kv_len hold NaN, so any stray read shows), one GPU run of the
// `flash` kernels with poisoned outputs and workspace, the CPU twin on the same bf16 values, and an
// fp64 reference.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attention/backend.h"
#include "attention/flash/flash_cuda.h"
#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "core/dtype.h"
#include "kv_cache/kv_cache.h"

namespace sagellm::gpu_attention_test {

constexpr uint16_t kBf16Poison = 0xFFFF;  // a NaN

inline bool gpu_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    return false;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return false;
  return prop.major >= 8;
}

#define SKIP_WITHOUT_GPU()                                              \
  do {                                                                  \
    if (!::sagellm::gpu_attention_test::gpu_available()) {              \
      GTEST_SKIP() << "no CUDA GPU of compute capability 8.0 or newer"; \
    }                                                                   \
  } while (0)

struct Req {
  int q_len = 0;
  int kv_len = 0;
};

struct Spec {
  std::string name;
  int num_heads = 8;
  int num_kv_heads = 2;
  int head_dim = 64;
  int page_size = 64;
  bool causal = true;
  std::vector<Req> reqs;
  float k_offset_sigma = 0.0f;  // per-channel K offset ~ N(0, sigma)
  uint64_t seed = 1;
  int leading_rows = 0;  // q rows before the first request (must stay untouched)
};

// All values are exactly representable in bf16; the float vectors hold the same values.
struct Problem {
  Spec spec;
  AttentionShape shape;
  AttentionBatch batch;
  int num_pages = 0;
  int total_rows = 0;    // leading rows + all new tokens
  std::vector<float> q;  // [total_rows][num_heads * head_dim]
  std::vector<uint16_t> q_bf16;
  std::vector<uint16_t> k_pool, v_pool;  // [page][kv_head][slot][head_dim]
  std::vector<std::vector<float>> k, v;  // per request [kv_len][num_kv_heads * head_dim]
};

inline Problem make_problem(const Spec& spec) {
  Problem p;
  p.spec = spec;
  p.shape = {spec.num_heads, spec.num_kv_heads, spec.head_dim,
             1.0f / std::sqrt(static_cast<float>(spec.head_dim))};
  p.batch.causal = spec.causal;
  const int hd = spec.head_dim, kvh = spec.num_kv_heads, ps = spec.page_size;
  int needed = 0;
  for (const Req& r : spec.reqs) needed += (r.kv_len + ps - 1) / ps;
  p.num_pages = needed + needed / 4 + 3;  // spare pages, never referenced
  std::mt19937_64 rng(spec.seed);
  std::vector<int> order(static_cast<size_t>(p.num_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);

  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto bf = [](float x) { return round_to_bf16(x); };
  std::vector<float> offset(static_cast<size_t>(kvh * hd));
  for (float& o : offset) o = spec.k_offset_sigma * normal(rng);

  const size_t page_elems = static_cast<size_t>(kvh) * ps * hd;
  p.k_pool.assign(page_elems * p.num_pages, kBf16Poison);
  p.v_pool.assign(page_elems * p.num_pages, kBf16Poison);
  size_t next_page = 0;
  int row = spec.leading_rows;
  for (const Req& r : spec.reqs) {
    AttentionSeq seq;
    seq.q_start = row;
    seq.q_len = r.q_len;
    seq.kv_len = r.kv_len;
    for (int i = 0; i < (r.kv_len + ps - 1) / ps; ++i) seq.pages.push_back(order[next_page++]);
    std::vector<float> k(static_cast<size_t>(r.kv_len) * kvh * hd), v(k.size());
    for (size_t i = 0; i < k.size(); ++i) k[i] = bf(normal(rng) + offset[i % offset.size()]);
    for (float& x : v) x = bf(normal(rng));
    for (int t = 0; t < r.kv_len; ++t) {
      const size_t page = static_cast<size_t>(seq.pages[static_cast<size_t>(t / ps)]);
      for (int h = 0; h < kvh; ++h) {
        for (int d = 0; d < hd; ++d) {
          const size_t dst = page * page_elems + (static_cast<size_t>(h) * ps + t % ps) * hd + d;
          const size_t src = (static_cast<size_t>(t) * kvh + h) * hd + d;
          p.k_pool[dst] = float_to_bf16(k[src]);
          p.v_pool[dst] = float_to_bf16(v[src]);
        }
      }
    }
    p.k.push_back(std::move(k));
    p.v.push_back(std::move(v));
    p.batch.seqs.push_back(std::move(seq));
    row += r.q_len;
  }
  p.total_rows = row;
  p.q.resize(static_cast<size_t>(row) * spec.num_heads * hd);
  for (float& x : p.q) x = bf(normal(rng));
  p.q_bf16.resize(p.q.size());
  for (size_t i = 0; i < p.q.size(); ++i) p.q_bf16[i] = float_to_bf16(p.q[i]);
  return p;
}

// Layout options of one GPU run.
struct RunOptions {
  int q_row_pad = 0;            // extra elements per q/o row (a fused QKV buffer, say)
  bool interleaved_kv = false;  // K and V pages of one allocation, page_stride = 2 pages
};

// Output rows [total_rows][num_heads][head_dim] as bf16 bits; rows no request covers keep the
// poison. Works for any batch over the problem's pools (a sub-batch, too).
inline std::vector<uint16_t> run_gpu(const Problem& p, const AttentionBatch& batch,
                                     const std::vector<uint16_t>& q_bf16, int total_rows,
                                     const RunOptions& opt = {}) {
  using namespace flash_cuda;
  const int h = p.spec.num_heads, hd = p.spec.head_dim, ps = p.spec.page_size;
  const FlashPlan plan = select_flash_kernel(p.shape, batch, ps);
  if (!plan.supported())
    detail::throw_error("unexpectedly unsupported: " + plan.unsupported_reason);
  FlashParams params = flash_params_for(plan);

  const int64_t row_elems = static_cast<int64_t>(h) * hd;
  const int64_t row_stride = row_elems + opt.q_row_pad;
  std::vector<uint16_t> q_host(static_cast<size_t>(std::max<int64_t>(total_rows * row_stride, 8)),
                               kBf16Poison);
  for (int r = 0; r < total_rows; ++r) {
    std::copy_n(q_bf16.begin() + r * row_elems, row_elems, q_host.begin() + r * row_stride);
  }
  DeviceBuffer<uint16_t> q_dev = DeviceBuffer<uint16_t>::from_host(q_host);
  DeviceBuffer<uint16_t> o_dev(q_host.size());
  SAGELLM_CUDA_CHECK(cudaMemset(o_dev.data(), 0xFF, o_dev.bytes()));

  const size_t page_elems = static_cast<size_t>(p.spec.num_kv_heads) * ps * hd;
  DeviceBuffer<uint16_t> k_dev, v_dev, kv_dev;
  if (opt.interleaved_kv) {
    std::vector<uint16_t> both(2 * p.k_pool.size());
    for (int pg = 0; pg < p.num_pages; ++pg) {
      std::copy_n(p.k_pool.begin() + pg * page_elems, page_elems,
                  both.begin() + 2 * pg * page_elems);
      std::copy_n(p.v_pool.begin() + pg * page_elems, page_elems,
                  both.begin() + (2 * pg + 1) * page_elems);
    }
    kv_dev = DeviceBuffer<uint16_t>::from_host(both);
    params.k_pages = kv_dev.data();
    params.v_pages = kv_dev.data() + page_elems;
    params.page_stride = static_cast<int64_t>(2 * page_elems);
  } else {
    k_dev = DeviceBuffer<uint16_t>::from_host(p.k_pool);
    v_dev = DeviceBuffer<uint16_t>::from_host(p.v_pool);
    params.k_pages = k_dev.data();
    params.v_pages = v_dev.data();
  }

  int table_stride = 0;
  const std::vector<int32_t> table = flash_block_table(batch, ps, &table_stride);
  const std::vector<int32_t> cu = flash_cu_seqlens_q(batch);
  const std::vector<int32_t> kv = flash_kv_lens(batch);
  auto table_dev = DeviceBuffer<int32_t>::from_host(table);
  auto cu_dev = DeviceBuffer<int32_t>::from_host(cu);
  auto kv_lens_dev = DeviceBuffer<int32_t>::from_host(kv);
  DeviceBuffer<int32_t> offsets_dev;
  if (!plan.split_offsets.empty()) {
    offsets_dev = DeviceBuffer<int32_t>::from_host(plan.split_offsets);
  }
  DeviceBuffer<float> acc_dev(static_cast<size_t>(plan.split_acc_floats()));
  DeviceBuffer<float> ml_dev(static_cast<size_t>(plan.split_ml_floats()));
  // NaN everywhere: a slot the combine reads but no split wrote would show.
  if (!acc_dev.empty()) SAGELLM_CUDA_CHECK(cudaMemset(acc_dev.data(), 0xFF, acc_dev.bytes()));
  if (!ml_dev.empty()) SAGELLM_CUDA_CHECK(cudaMemset(ml_dev.data(), 0xFF, ml_dev.bytes()));

  params.q = q_dev.data();
  params.o = o_dev.data();
  params.q_row_stride = params.o_row_stride = row_stride;
  params.block_table = table_dev.data();
  params.block_table_stride = table_stride;
  params.cu_seqlens_q = cu_dev.data();
  params.kv_lens = kv_lens_dev.data();
  params.split_acc = acc_dev.data();
  params.split_ml = ml_dev.data();
  params.split_offsets = offsets_dev.data();
  flash_attention_cuda(plan, params, nullptr);
  SAGELLM_CUDA_CHECK(cudaDeviceSynchronize());

  const std::vector<uint16_t> o_host = o_dev.to_host();
  std::vector<uint16_t> out(static_cast<size_t>(total_rows) * row_elems);
  for (int r = 0; r < total_rows; ++r) {
    std::copy_n(o_host.begin() + r * row_stride, row_elems, out.begin() + r * row_elems);
  }
  return out;
}

inline std::vector<uint16_t> run_gpu(const Problem& p, const RunOptions& opt = {}) {
  return run_gpu(p, p.batch, p.q_bf16, p.total_rows, opt);
}

// The CPU twin (`flash`, fp32) on the same bf16 values.
inline std::vector<float> run_cpu_twin(const Problem& p) {
  KVCacheShape cs;
  cs.num_layers = 1;
  cs.num_kv_heads = p.spec.num_kv_heads;
  cs.head_dim = p.spec.head_dim;
  cs.page_size = p.spec.page_size;
  cs.num_pages = p.num_pages;
  PagedKVCache cache(cs, KVCacheDType::kFloat);
  const int width = p.spec.num_kv_heads * p.spec.head_dim;
  for (size_t r = 0; r < p.batch.seqs.size(); ++r) {
    const AttentionSeq& seq = p.batch.seqs[r];
    for (int t = 0; t < seq.kv_len; ++t) {
      cache.write(0, seq.pages[static_cast<size_t>(t / cs.page_size)], t % cs.page_size,
                  &p.k[r][static_cast<size_t>(t) * width], &p.v[r][static_cast<size_t>(t) * width]);
    }
  }
  std::vector<float> out(p.q.size(), 0.0f);
  make_attention_backend("flash")->forward(p.shape, p.batch, cache, 0, p.q.data(), out.data());
  return out;
}

// Exact attention in fp64 on the bf16 values.
inline std::vector<double> reference(const Problem& p) {
  const int h = p.spec.num_heads, kvh = p.spec.num_kv_heads, hd = p.spec.head_dim;
  const int group = h / kvh;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> out(p.q.size(), 0.0), s;
  for (size_t r = 0; r < p.batch.seqs.size(); ++r) {
    const AttentionSeq& seq = p.batch.seqs[r];
    for (int i = 0; i < seq.q_len; ++i) {
      const int last = p.batch.causal ? seq.kv_len - seq.q_len + i : seq.kv_len - 1;
      for (int head = 0; head < h; ++head) {
        const int kh = head / group;
        const float* qr = &p.q[(static_cast<size_t>(seq.q_start + i) * h + head) * hd];
        s.assign(static_cast<size_t>(last + 1), 0.0);
        double mx = -INFINITY;
        for (int j = 0; j <= last; ++j) {
          const float* kr = &p.k[r][(static_cast<size_t>(j) * kvh + kh) * hd];
          double dot = 0.0;
          for (int d = 0; d < hd; ++d) dot += static_cast<double>(qr[d]) * kr[d];
          s[static_cast<size_t>(j)] = dot * scale;
          mx = std::max(mx, s[static_cast<size_t>(j)]);
        }
        double l = 0.0;
        for (double& x : s) {
          x = std::exp(x - mx);
          l += x;
        }
        double* o = &out[(static_cast<size_t>(seq.q_start + i) * h + head) * hd];
        for (int j = 0; j <= last; ++j) {
          const float* vr = &p.v[r][(static_cast<size_t>(j) * kvh + kh) * hd];
          for (int d = 0; d < hd; ++d) o[d] += s[static_cast<size_t>(j)] * vr[d];
        }
        for (int d = 0; d < hd; ++d) o[d] /= l;
      }
    }
  }
  return out;
}

struct Errors {
  double rel_l1 = 0.0;         // sum |o - ref| / sum |ref| over the batch's rows
  double worst_row = 0.0;      // largest mean |o - ref| of one (token, head) row / mean |ref|
  size_t non_finite = 0;       // outputs of the batch's rows that are NaN or Inf
  size_t touched_outside = 0;  // outputs of rows outside the batch that lost their poison
};

// Compares GPU bf16 output with a reference (float or double) over the batch's rows.
template <typename Ref>
Errors compare(const Problem& p, const std::vector<uint16_t>& gpu, const std::vector<Ref>& ref) {
  const int h = p.spec.num_heads, hd = p.spec.head_dim;
  const size_t row_elems = static_cast<size_t>(h) * hd;
  std::vector<char> in_batch(static_cast<size_t>(p.total_rows), 0);
  for (const AttentionSeq& s : p.batch.seqs) {
    for (int i = 0; i < s.q_len; ++i) in_batch[static_cast<size_t>(s.q_start + i)] = 1;
  }
  Errors e;
  double l1 = 0.0, ref_l1 = 0.0;
  size_t n = 0;
  std::vector<double> row_err;
  for (int r = 0; r < p.total_rows; ++r) {
    for (int head = 0; head < h; ++head) {
      double err = 0.0;
      for (int d = 0; d < hd; ++d) {
        const size_t i = static_cast<size_t>(r) * row_elems + static_cast<size_t>(head) * hd + d;
        if (!in_batch[static_cast<size_t>(r)]) {
          if (gpu[i] != kBf16Poison) ++e.touched_outside;
          continue;
        }
        const double o = bf16_to_float(gpu[i]), x = static_cast<double>(ref[i]);
        if (!std::isfinite(o)) ++e.non_finite;
        err += std::fabs(o - x);
        ref_l1 += std::fabs(x);
        ++n;
      }
      if (in_batch[static_cast<size_t>(r)]) {
        l1 += err;
        row_err.push_back(err / hd);
      }
    }
  }
  e.rel_l1 = ref_l1 > 0.0 ? l1 / ref_l1 : l1;
  const double mean_ref = n > 0 ? ref_l1 / static_cast<double>(n) : 1.0;
  for (double x : row_err) e.worst_row = std::max(e.worst_row, x / mean_ref);
  return e;
}

// The accuracy bound for bf16 attention (output rounding alone is ~0.002).
constexpr double kMaxRelL1 = 0.005;
// A row whose mean error reaches 5% of the mean output magnitude is wrong, not imprecise.
constexpr double kMaxRowError = 0.05;

inline void expect_accurate(const Problem& p, const std::vector<uint16_t>& gpu,
                            const std::string& label) {
  const Errors vs_ref = compare(p, gpu, reference(p));
  const Errors vs_cpu = compare(p, gpu, run_cpu_twin(p));
  std::printf("[flash-cuda] %-60s rel-L1 vs fp64 %.3e  vs CPU twin %.3e  worst row %.3e\n",
              label.c_str(), vs_ref.rel_l1, vs_cpu.rel_l1, vs_ref.worst_row);
  std::fflush(stdout);
  EXPECT_EQ(vs_ref.non_finite, 0u) << label << ": outputs not written or not finite";
  EXPECT_EQ(vs_ref.touched_outside, 0u) << label << ": rows outside the batch were written";
  EXPECT_LE(vs_ref.rel_l1, kMaxRelL1) << label;
  EXPECT_LE(vs_cpu.rel_l1, kMaxRelL1) << label;
  EXPECT_LE(vs_ref.worst_row, kMaxRowError) << label;
}

}  // namespace sagellm::gpu_attention_test
