// The `sage_attn` CUDA kernels (through the backend's CudaAttention, as the engine drives them)
// against the CPU twin on the same inputs and against exact fp64 attention: bf16 caches (every
// page quantized on the fly) and 8-bit caches (sealed pages built by the CPU cache's own sealing,
// the bf16 tail page quantized on the fly), fp8, int8 and fp16 P.V, head dims 64/128 and padded
// ones, GQA, causal and not, q_len != kv_len, decode with split-KV; the GPU page quantization
// (FP8 and INT8 V codes) is bitwise the CPU's; 10 reruns are bitwise equal and a request's output
// does not depend on its batch.
#include "attention/sage/sage_cuda.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "attention/cuda_attention.h"
#include "attention/sage/sage_backend.h"
#include "core/cuda_check.h"
#include "core/device_buffer.h"
#include "core/dtype.h"
#include "gpu_attention_util.h"
#include "kv_cache/kv_cache.h"
#include "kv_cache/page_quant.h"

namespace sagellm::gpu_attention_test {
namespace {

using sage_cuda::kSagePageSize;
using sage_cuda::sage_page_block_bytes;

bool fp8_available() { return sage_cuda::sage_fp8_pv_available(); }

std::vector<std::string> pv_modes() {
  std::vector<std::string> m = {"fp16", "int8"};
  if (fp8_available()) m.emplace_back("fp8");
  return m;
}

KVValueCodes codes_of(const std::string& pv) {
  return pv == "int8" ? KVValueCodes::kInt8 : KVValueCodes::kFp8E4M3;
}

// The CPU twin of sage_attn on the same bf16 values, over a float or an 8-bit cache.
PagedKVCache cpu_cache(const Problem& p, KVCacheDType dtype,
                       KVValueCodes codes = KVValueCodes::kFp8E4M3) {
  KVCacheShape cs;
  cs.num_layers = 1;
  cs.num_kv_heads = p.spec.num_kv_heads;
  cs.head_dim = p.spec.head_dim;
  cs.page_size = p.spec.page_size;
  cs.num_pages = p.num_pages;
  PagedKVCache cache(cs, dtype, codes);
  const int width = p.spec.num_kv_heads * p.spec.head_dim;
  for (size_t r = 0; r < p.batch.seqs.size(); ++r) {
    const AttentionSeq& seq = p.batch.seqs[r];
    for (int t = 0; t < seq.kv_len; ++t) {
      cache.write(0, seq.pages[static_cast<size_t>(t / cs.page_size)], t % cs.page_size,
                  &p.k[r][static_cast<size_t>(t) * width], &p.v[r][static_cast<size_t>(t) * width]);
    }
  }
  return cache;
}

std::vector<float> run_cpu_sage(const Problem& p, const PagedKVCache& cache,
                                const std::string& pv) {
  std::vector<float> out(p.q.size(), 0.0f);
  AttentionOptions o;
  o.sage_pv_dtype = pv;
  make_sage_backend(o)->forward(p.shape, p.batch, cache, 0, p.q.data(), out.data());
  return out;
}

// An 8-bit GPU layer built from the CPU cache: sealed pages in the block layout (V transposed
// with its keys permuted), the other pages' bf16 values in a tail pool, one tail slot each.
struct Int8Layer {
  DeviceBuffer<uint8_t> pool;
  DeviceBuffer<uint16_t> tail_k, tail_v;
  std::vector<int32_t> tail_slot_of_page;
};

Int8Layer build_int8_layer(const Problem& p, const PagedKVCache& cache) {
  const int kvh = p.spec.num_kv_heads, hd = p.spec.head_dim, ps = p.spec.page_size;
  const int dp = sage_cuda::sage_padded_head_dim(hd);
  const int64_t block = sage_page_block_bytes(dp);
  std::vector<uint8_t> pool(static_cast<size_t>(p.num_pages) * kvh * block, 0xAB);
  Int8Layer l;
  l.tail_slot_of_page.assign(static_cast<size_t>(p.num_pages), -1);
  std::vector<uint16_t> tk, tv;
  const size_t page_elems = static_cast<size_t>(kvh) * ps * hd;
  for (int page = 0; page < p.num_pages; ++page) {
    if (!cache.is_sealed(0, page)) {
      const int slot = static_cast<int>(tk.size() / page_elems);
      l.tail_slot_of_page[static_cast<size_t>(page)] = slot;
      tk.resize(tk.size() + page_elems, kBf16Poison);
      tv.resize(tv.size() + page_elems, kBf16Poison);
      for (int h = 0; h < kvh; ++h) {
        const float* kf = cache.k_float(0, page, h);
        const float* vf = cache.v_float(0, page, h);
        for (int i = 0; i < ps * hd; ++i) {
          const size_t dst = static_cast<size_t>(slot) * page_elems +
                             static_cast<size_t>(h) * ps * hd + static_cast<size_t>(i);
          // Slots never written hold NaN in the CPU cache too; keep them poisoned.
          if (std::isfinite(kf[i])) tk[dst] = float_to_bf16(kf[i]);
          if (std::isfinite(vf[i])) tv[dst] = float_to_bf16(vf[i]);
        }
      }
      continue;
    }
    for (int h = 0; h < kvh; ++h) {
      const QuantizedKVPageView q = cache.quantized(0, page, h);
      uint8_t* b = pool.data() + (static_cast<size_t>(page) * kvh + h) * block;
      std::memset(b, 0, static_cast<size_t>(block));
      for (int j = 0; j < ps; ++j) {
        for (int d = 0; d < hd; ++d) {
          b[j * dp + d] = static_cast<uint8_t>(q.k[j * hd + d]);
          b[sage_cuda::sage_v_codes_offset(dp) + d * kSagePageSize +
            sage_cuda::sage_v_position_of_key(j)] = q.v[j * hd + d];
        }
      }
      // The cache's V scales are bf16 values: the conversion is exact.
      float* mean = reinterpret_cast<float*>(b + sage_cuda::sage_k_mean_offset(dp));
      auto* vscale = reinterpret_cast<uint16_t*>(b + sage_cuda::sage_v_scale_offset(dp));
      for (int d = 0; d < hd; ++d) {
        mean[d] = q.k_mean[d];
        vscale[d] = float_to_bf16(q.v_scale[d]);
      }
      *reinterpret_cast<float*>(b + sage_cuda::sage_k_scale_offset(dp)) = q.k_scale;
    }
  }
  if (tk.empty()) tk.assign(page_elems, 0), tv.assign(page_elems, 0);
  l.pool = DeviceBuffer<uint8_t>::from_host(pool);
  l.tail_k = DeviceBuffer<uint16_t>::from_host(tk);
  l.tail_v = DeviceBuffer<uint16_t>::from_host(tv);
  return l;
}

// One call through the backend: plan, then run for the one layer. For kInt8, `int8` holds the
// layer; otherwise the problem's bf16 pools are the cache.
std::vector<uint16_t> run_sage_gpu(const Problem& p, const AttentionBatch& batch,
                                   const std::string& pv, KVCacheDType dtype, const Int8Layer* int8,
                                   bool fixed_decode = false) {
  AttentionOptions o;
  o.sage_pv_dtype = pv;
  auto att = make_sage_cuda_attention(o);
  const int h = p.spec.num_heads, hd = p.spec.head_dim;
  const int64_t row = static_cast<int64_t>(h) * hd;
  std::vector<uint16_t> q_host = p.q_bf16;
  DeviceBuffer<uint16_t> q_dev = DeviceBuffer<uint16_t>::from_host(q_host);
  DeviceBuffer<uint16_t> o_dev(q_host.size());
  SAGELLM_CUDA_CHECK(cudaMemset(o_dev.data(), 0xFF, o_dev.bytes()));
  CudaKVCacheView view;
  view.page_size = p.spec.page_size;
  view.dtype = dtype;
  CudaKVLayer layer;
  layer.page_size = p.spec.page_size;
  layer.num_pages = p.num_pages;
  layer.dtype = dtype;
  layer.kv_head_stride = static_cast<int64_t>(p.spec.page_size) * hd;
  layer.page_stride = layer.kv_head_stride * p.spec.num_kv_heads;
  DeviceBuffer<uint16_t> k_dev, v_dev;
  if (dtype == KVCacheDType::kInt8) {
    view.tail_slot_of_page = &int8->tail_slot_of_page;
    layer.k_pages = int8->tail_k.data();
    layer.v_pages = int8->tail_v.data();
    layer.pages8 = int8->pool.data();
    const int64_t block = sage_page_block_bytes(sage_cuda::sage_padded_head_dim(hd));
    layer.head8_stride = block;
    layer.page8_stride = block * p.spec.num_kv_heads;
  } else {
    k_dev = DeviceBuffer<uint16_t>::from_host(p.k_pool);
    v_dev = DeviceBuffer<uint16_t>::from_host(p.v_pool);
    layer.k_pages = k_dev.data();
    layer.v_pages = v_dev.data();
  }
  if (fixed_decode) {
    int width = 1;
    for (const AttentionSeq& s : batch.seqs) {
      while (width * p.spec.page_size < s.kv_len) width *= 2;
    }
    EXPECT_TRUE(att->plan_fixed_decode(p.shape, batch, view, width, nullptr));
  } else {
    att->plan(p.shape, batch, view, nullptr);
  }
  att->run(layer, q_dev.data(), row, o_dev.data(), nullptr);
  SAGELLM_CUDA_CHECK(cudaDeviceSynchronize());
  return o_dev.to_host();
}

double cosine(const Problem& p, const std::vector<uint16_t>& gpu, const std::vector<double>& ref) {
  double oo = 0, rr = 0, orr = 0;
  for (const AttentionSeq& s : p.batch.seqs) {
    const size_t row = static_cast<size_t>(p.spec.num_heads) * p.spec.head_dim;
    for (size_t i = static_cast<size_t>(s.q_start) * row;
         i < static_cast<size_t>(s.q_start + s.q_len) * row; ++i) {
      const double o = bf16_to_float(gpu[i]);
      oo += o * o;
      rr += ref[i] * ref[i];
      orr += o * ref[i];
    }
  }
  return orr / std::sqrt(oo * rr);
}

std::string label(const Spec& s, const std::string& pv, KVCacheDType dtype) {
  return s.name + " H" + std::to_string(s.num_heads) + "/" + std::to_string(s.num_kv_heads) + " D" +
         std::to_string(s.head_dim) + (s.causal ? " causal" : " full") + " pv " + pv +
         (dtype == KVCacheDType::kInt8 ? " int8-cache" : " bf16-cache") +
         (s.k_offset_sigma > 0 ? " K-offset" : "");
}

// Bounds. Against the CPU twin only the order of fp32 additions, FMA contraction and exp2's
// last bits differ, and the GPU output is rounded to bf16 (~1.4e-3 rel-L1 by itself). Split-KV
// is the exception in fp8 mode: each split runs its own maximum, so P is rounded to FP8 relative
// to another reference than the twin's one sequential maximum -- other rounding points, equally
// accurate (the GPU must then stay as close to fp64 as the twin).
constexpr double kMaxVsTwin = 2e-3;
constexpr double kMaxVsTwinFp8Splits = 1.2e-2;

bool fp8_with_splits(const Problem& p, const std::string& pv) {
  if (pv != "fp8") return false;
  const int group = p.spec.num_heads / p.spec.num_kv_heads;
  for (const AttentionSeq& s : p.batch.seqs) {
    if (sage_cuda::sage_uses_split_kernel(s.q_len, group) &&
        sage_cuda::sage_num_splits(s.kv_len) > 1)
      return true;
  }
  return false;
}
// Against fp64 (measured by the CPU twin: fp16 P.V <= 0.013 on a float cache; an FP8 V or fp8 P
// adds ~0.02 each; int8 P.V, which rounds P against each page's own maximum, the same reference
// in every split, <= 0.017 on either cache).
double max_vs_fp64(const std::string& pv, KVCacheDType dtype) {
  if (pv == "int8") return 0.022;
  if (pv == "fp16" && dtype == KVCacheDType::kFloat) return 0.016;
  return pv == "fp16" ? 0.03 : 0.045;
}

void check(const Spec& spec, const std::string& pv, KVCacheDType dtype) {
  const Problem p = make_problem(spec);
  const PagedKVCache cache = cpu_cache(p, dtype, codes_of(pv));
  Int8Layer l;
  if (dtype == KVCacheDType::kInt8) l = build_int8_layer(p, cache);
  const std::vector<uint16_t> gpu = run_sage_gpu(p, p.batch, pv, dtype, &l);
  const std::vector<float> twin = run_cpu_sage(p, cache, pv);
  const std::vector<double> ref = reference(p);
  const Errors vs_twin = compare(p, gpu, twin);
  const Errors vs_ref = compare(p, gpu, ref);
  const Errors twin_vs_ref = compare(
      p,
      [&] {
        std::vector<uint16_t> b(twin.size());
        for (size_t i = 0; i < twin.size(); ++i) b[i] = float_to_bf16(twin[i]);
        for (size_t i = 0; i < gpu.size(); ++i) {
          if (gpu[i] == kBf16Poison) b[i] = kBf16Poison;
        }
        return b;
      }(),
      ref);
  const double cos = cosine(p, gpu, ref);
  const std::string name = label(spec, pv, dtype);
  std::printf("[sage-cuda] %-72s vs twin %.2e  vs fp64 %.3e (twin %.3e)  cos %.6f\n", name.c_str(),
              vs_twin.rel_l1, vs_ref.rel_l1, twin_vs_ref.rel_l1, cos);
  std::fflush(stdout);
  EXPECT_EQ(vs_ref.non_finite, 0u) << name;
  EXPECT_EQ(vs_ref.touched_outside, 0u) << name;
  EXPECT_LE(vs_twin.rel_l1, fp8_with_splits(p, pv) ? kMaxVsTwinFp8Splits : kMaxVsTwin) << name;
  EXPECT_LE(vs_ref.rel_l1, max_vs_fp64(pv, dtype)) << name;
  EXPECT_LE(vs_ref.rel_l1, twin_vs_ref.rel_l1 * 1.05 + 1e-3) << name;
  EXPECT_GE(cos, 0.999) << name;
}

TEST(SageCuda, PrefillAndDecodeBothCaches) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 100;
  for (const std::string& pv : pv_modes()) {
    for (KVCacheDType dtype : {KVCacheDType::kFloat, KVCacheDType::kInt8}) {
      for (int hd : {64, 128}) {
        for (bool causal : {true, false}) {
          check({"prefix300+77,extend5,decode",
                 8,
                 2,
                 hd,
                 kSagePageSize,
                 causal,
                 {{77, 377}, {5, 305}, {1, 300}, {200, 200}},
                 0.0f,
                 seed++},
                pv, dtype);
        }
      }
    }
  }
}

TEST(SageCuda, PaddedHeadDimsGqaAndKOffsets) {
  SKIP_WITHOUT_GPU();
  uint64_t seed = 200;
  const std::string pv = fp8_available() ? "fp8" : "fp16";
  for (int hd : {8, 32, 96}) {
    check({"padded", 4, 2, hd, kSagePageSize, true, {{130, 250}, {1, 64}}, 0.0f, seed++}, pv,
          KVCacheDType::kInt8);
  }
  for (auto [h, kvh] : {std::pair{32, 8}, std::pair{8, 8}, std::pair{3, 1}}) {
    check(
        {"gqa", h, kvh, 128, kSagePageSize, true, {{96, 1000}, {1, 1000}, {3, 129}}, 0.0f, seed++},
        pv, KVCacheDType::kInt8);
  }
  for (const std::string& m : pv_modes()) {
    check({"k-offset", 8, 2, 128, kSagePageSize, true, {{256, 700}, {1, 2000}}, 5.0f, seed++}, m,
          KVCacheDType::kInt8);
    check({"k-offset", 8, 2, 128, kSagePageSize, false, {{256, 256}}, 5.0f, seed++}, m,
          KVCacheDType::kFloat);
  }
}

TEST(SageCuda, LongDecodeSplits) {
  SKIP_WITHOUT_GPU();
  for (const std::string& pv : pv_modes()) {
    check({"decode", 32, 8, 128, kSagePageSize, true, {{1, 20000}, {1, 63}, {2, 4097}}, 0.0f, 300},
          pv, KVCacheDType::kInt8);
  }
}

// The GPU page quantization equals the CPU cache's sealing bit for bit.
TEST(SageCuda, PageQuantizationBitwiseEqualsCpu) {
  SKIP_WITHOUT_GPU();
  for (const KVValueCodes codes : {KVValueCodes::kFp8E4M3, KVValueCodes::kInt8})
    for (int hd : {64, 128, 40}) {
      const Problem p = make_problem(
          {"quant", 4, 2, hd, kSagePageSize, true, {{1, 64 * 5 + 17}}, 3.0f, 400u + hd});
      const PagedKVCache cache = cpu_cache(p, KVCacheDType::kInt8, codes);
      const int kvh = p.spec.num_kv_heads, dp = sage_cuda::sage_padded_head_dim(hd);
      const int64_t block = sage_page_block_bytes(dp);
      const AttentionSeq& seq = p.batch.seqs[0];
      const int pages = (seq.kv_len + kSagePageSize - 1) / kSagePageSize;
      std::vector<sage_cuda::SageQuantJob> jobs;
      for (int pi = 0; pi < pages; ++pi) {
        sage_cuda::SageQuantJob j;
        // Old tokens from the pool, the rest from "new rows" (the same values, read row-wise).
        const int n = std::min(kSagePageSize, seq.kv_len - pi * kSagePageSize);
        j.src_page = seq.pages[static_cast<size_t>(pi)];
        j.n_old = n / 3;
        j.first_new_row = pi * kSagePageSize + j.n_old;
        j.n_new = n - j.n_old;
        j.dst = pi;
        jobs.push_back(j);
      }
      std::vector<uint16_t> k_rows(p.k[0].size()), v_rows(p.v[0].size());
      for (size_t i = 0; i < k_rows.size(); ++i) {
        k_rows[i] = float_to_bf16(p.k[0][i]);
        v_rows[i] = float_to_bf16(p.v[0][i]);
      }
      auto jobs_dev = DeviceBuffer<int32_t>::from_host(
          std::vector<int32_t>(reinterpret_cast<const int32_t*>(jobs.data()),
                               reinterpret_cast<const int32_t*>(jobs.data()) + jobs.size() * 5));
      auto k_pool = DeviceBuffer<uint16_t>::from_host(p.k_pool);
      auto v_pool = DeviceBuffer<uint16_t>::from_host(p.v_pool);
      auto k_new = DeviceBuffer<uint16_t>::from_host(k_rows);
      auto v_new = DeviceBuffer<uint16_t>::from_host(v_rows);
      DeviceBuffer<uint8_t> dst(static_cast<size_t>(pages) * kvh * block);
      SAGELLM_CUDA_CHECK(cudaMemset(dst.data(), 0xCD, dst.bytes()));
      sage_cuda::SageQuantParams qp;
      qp.jobs = reinterpret_cast<const sage_cuda::SageQuantJob*>(jobs_dev.data());
      qp.num_jobs = pages;
      qp.k_src = k_pool.data();
      qp.v_src = v_pool.data();
      qp.src_head_stride = static_cast<int64_t>(kSagePageSize) * hd;
      qp.src_page_stride = qp.src_head_stride * kvh;
      qp.k_new = k_new.data();
      qp.v_new = v_new.data();
      qp.k_new_row_stride = qp.v_new_row_stride = static_cast<int64_t>(kvh) * hd;
      qp.dst8 = dst.data();
      qp.dst_head_stride = block;
      qp.dst_page_stride = block * kvh;
      qp.num_kv_heads = kvh;
      qp.head_dim = hd;
      qp.head_dim_padded = dp;
      qp.v_int8 = codes == KVValueCodes::kInt8;
      sage_cuda::sage_quantize_pages_cuda(qp, nullptr);
      SAGELLM_CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<uint8_t> got = dst.to_host();
      size_t mismatches = 0;
      for (int pi = 0; pi < pages; ++pi) {
        const int page = seq.pages[static_cast<size_t>(pi)];
        const int n = std::min(kSagePageSize, seq.kv_len - pi * kSagePageSize);
        for (int h = 0; h < kvh; ++h) {
          // The CPU reference: the cache's sealing function on the page's tokens.
          std::vector<float> kt(static_cast<size_t>(n) * hd), vt(kt.size());
          for (int j = 0; j < n; ++j) {
            for (int d = 0; d < hd; ++d) {
              const size_t src = (static_cast<size_t>(pi * kSagePageSize + j) * kvh + h) * hd + d;
              kt[static_cast<size_t>(j) * hd + d] = p.k[0][src];
              vt[static_cast<size_t>(j) * hd + d] = p.v[0][src];
            }
          }
          std::vector<int8_t> kc(static_cast<size_t>(kSagePageSize) * hd);
          std::vector<uint8_t> vc(kc.size());
          std::vector<float> km(static_cast<size_t>(hd)), vs(static_cast<size_t>(hd));
          float ks = 0.0f;
          quantize_k_page(kt.data(), n, kSagePageSize, hd, kc.data(), km.data(), &ks);
          quantize_v_page(vt.data(), n, kSagePageSize, hd, vc.data(), vs.data(), codes);
          if (cache.is_sealed(0, page)) {
            const QuantizedKVPageView q = cache.quantized(0, page, h);
            ASSERT_EQ(0, std::memcmp(q.k, kc.data(), kc.size()));
            ASSERT_EQ(0, std::memcmp(q.v, vc.data(), vc.size()));
            ASSERT_EQ(q.k_scale, ks);
          }
          const uint8_t* b = got.data() + (static_cast<size_t>(pi) * kvh + h) * block;
          for (int j = 0; j < kSagePageSize; ++j) {
            for (int d = 0; d < dp; ++d) {
              const int8_t want_k = d < hd ? kc[static_cast<size_t>(j) * hd + d] : int8_t{0};
              const uint8_t want_v = d < hd ? vc[static_cast<size_t>(j) * hd + d] : uint8_t{0};
              mismatches += static_cast<int8_t>(b[j * dp + d]) != want_k;
              mismatches += b[sage_cuda::sage_v_codes_offset(dp) + d * kSagePageSize +
                              sage_cuda::sage_v_position_of_key(j)] != want_v;
            }
          }
          const float* mean = reinterpret_cast<const float*>(b + sage_cuda::sage_k_mean_offset(dp));
          const auto* vscale =
              reinterpret_cast<const uint16_t*>(b + sage_cuda::sage_v_scale_offset(dp));
          for (int d = 0; d < dp; ++d) {
            mismatches += mean[d] != (d < hd ? km[static_cast<size_t>(d)] : 0.0f);
            mismatches += bf16_to_float(vscale[d]) != (d < hd ? vs[static_cast<size_t>(d)] : 0.0f);
          }
          mismatches +=
              *reinterpret_cast<const float*>(b + sage_cuda::sage_k_scale_offset(dp)) != ks;
        }
      }
      EXPECT_EQ(mismatches, 0u) << "head_dim " << hd << ", V " << kv_value_codes_name(codes);
    }
}

TEST(SageCuda, BitwiseReproducibleAndBatchIndependent) {
  SKIP_WITHOUT_GPU();
  const Problem p = make_problem({"repro",
                                  32,
                                  8,
                                  128,
                                  kSagePageSize,
                                  true,
                                  {{300, 900}, {1, 5000}, {7, 100}, {1, 64}},
                                  0.0f,
                                  500});
  for (const std::string& pv : pv_modes()) {
    const PagedKVCache cache = cpu_cache(p, KVCacheDType::kInt8, codes_of(pv));
    const Int8Layer l = build_int8_layer(p, cache);
    const std::vector<uint16_t> first = run_sage_gpu(p, p.batch, pv, KVCacheDType::kInt8, &l);
    for (int i = 0; i < 10; ++i) {
      EXPECT_EQ(run_sage_gpu(p, p.batch, pv, KVCacheDType::kInt8, &l), first)
          << pv << " rerun " << i;
    }
    // Each request alone (its rows moved to the front) gives the same bits.
    const size_t row = static_cast<size_t>(p.spec.num_heads) * p.spec.head_dim;
    for (size_t r = 0; r < p.batch.seqs.size(); ++r) {
      AttentionBatch alone;
      alone.causal = p.batch.causal;
      alone.seqs.push_back(p.batch.seqs[r]);
      const std::vector<uint16_t> out = run_sage_gpu(p, alone, pv, KVCacheDType::kInt8, &l);
      const AttentionSeq& s = p.batch.seqs[r];
      for (size_t i = static_cast<size_t>(s.q_start) * row;
           i < static_cast<size_t>(s.q_start + s.q_len) * row; ++i) {
        ASSERT_EQ(out[i], first[i]) << pv << " request " << r << " element " << i;
      }
    }
  }
}

// A decode step planned for CUDA graphs (fixed grid and buffers) gives plan()'s bits.
TEST(SageCuda, FixedDecodePlanMatchesPlan) {
  SKIP_WITHOUT_GPU();
  const std::string pv = fp8_available() ? "fp8" : "fp16";
  const Problem p = make_problem({"fixed-decode",
                                  32,
                                  8,
                                  128,
                                  kSagePageSize,
                                  true,
                                  {{1, 3000}, {1, 64}, {1, 65}, {1, 700}},
                                  0.0f,
                                  600});
  const PagedKVCache cache = cpu_cache(p, KVCacheDType::kInt8);
  const Int8Layer l = build_int8_layer(p, cache);
  EXPECT_EQ(run_sage_gpu(p, p.batch, pv, KVCacheDType::kInt8, &l, true),
            run_sage_gpu(p, p.batch, pv, KVCacheDType::kInt8, &l, false));
}

TEST(SageCudaPlan, RejectsWhatTheKernelsCannotDo) {
  AttentionShape shape{8, 2, 128, 0.088f};
  EXPECT_NE(sage_cuda::sage_shape_unsupported_reason(shape, 16, sage_cuda::SagePv::kFp16)
                .find("page size"),
            std::string::npos);
  shape.head_dim = 136;
  EXPECT_NE(sage_cuda::sage_shape_unsupported_reason(shape, 64, sage_cuda::SagePv::kFp16)
                .find("head_dim"),
            std::string::npos);
  shape = {8, 3, 128, 0.088f};
  EXPECT_FALSE(
      sage_cuda::sage_shape_unsupported_reason(shape, 64, sage_cuda::SagePv::kFp16).empty());
  shape = {8, 2, 128, 0.088f};
  AttentionBatch batch;
  AttentionSeq s;
  s.q_len = 4;
  s.kv_len = 130;
  s.pages = {0, 1};  // needs 3
  batch.seqs.push_back(s);
  EXPECT_FALSE(
      sage_cuda::select_sage_kernel(shape, batch, 64, sage_cuda::SagePv::kFp16).supported());
}

}  // namespace
}  // namespace sagellm::gpu_attention_test
