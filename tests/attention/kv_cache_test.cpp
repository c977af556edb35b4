// The paged KV cache: allocator, float and 8-bit storage, sealing, argument checks, byte counts.
#include "kv_cache/kv_cache.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/fp8.h"
#include "kv_cache/page_quant.h"

namespace sagellm {
namespace {

KVCacheShape small_shape(int pages = 4, int page_size = 16, int head_dim = 64) {
  KVCacheShape s;
  s.num_layers = 2;
  s.num_kv_heads = 2;
  s.head_dim = head_dim;
  s.page_size = page_size;
  s.num_pages = pages;
  return s;
}

TEST(KVCacheAllocator, HandsOutLowestFirstAndReportsExhaustion) {
  PagedKVCache cache(small_shape(3), KVCacheDType::kFloat);
  EXPECT_EQ(cache.num_free_pages(), 3);
  EXPECT_EQ(cache.allocate(), 0);
  EXPECT_EQ(cache.allocate(), 1);
  EXPECT_EQ(cache.allocate(), 2);
  EXPECT_EQ(cache.allocate(), std::nullopt);
  EXPECT_EQ(cache.num_free_pages(), 0);
  cache.release(2);
  cache.release(0);
  EXPECT_EQ(cache.allocate(), 0);  // lowest free index first
  EXPECT_EQ(cache.allocate(), 2);
  EXPECT_EQ(cache.allocate(), std::nullopt);
  cache.release(1);
  EXPECT_THROW(cache.release(1), Error);  // double release
  EXPECT_THROW(cache.release(3), Error);
  EXPECT_THROW(cache.release(-1), Error);
}

TEST(KVCache, RejectsBadShapesAndArguments) {
  KVCacheShape bad = small_shape();
  bad.head_dim = 0;
  EXPECT_THROW(PagedKVCache(bad, KVCacheDType::kFloat), Error);
  bad = small_shape();
  bad.num_pages = 0;
  EXPECT_THROW(PagedKVCache(bad, KVCacheDType::kInt8), Error);

  PagedKVCache cache(small_shape(), KVCacheDType::kInt8);
  std::vector<float> kv(2 * 64, 1.0f);
  EXPECT_THROW(cache.write(2, 0, 0, kv.data(), kv.data()), Error);  // layer
  EXPECT_THROW(cache.write(-1, 0, 0, kv.data(), kv.data()), Error);
  EXPECT_THROW(cache.write(0, 4, 0, kv.data(), kv.data()), Error);   // page
  EXPECT_THROW(cache.write(0, 0, 16, kv.data(), kv.data()), Error);  // slot
  EXPECT_THROW(cache.write(0, 0, -1, kv.data(), kv.data()), Error);
  EXPECT_THROW(cache.write(0, 0, 0, nullptr, kv.data()), Error);
  EXPECT_THROW(cache.k_float(0, 0, 2), Error);    // kv head
  EXPECT_THROW(cache.quantized(0, 0, 0), Error);  // not sealed
  try {
    cache.write(0, 9, 0, kv.data(), kv.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("page 9"), std::string::npos) << e.what();
  }
}

TEST(KVCache, FloatModeStoresExactValuesAndNeverSeals) {
  PagedKVCache cache(small_shape(), KVCacheDType::kFloat);
  std::vector<float> k(2 * 64), v(2 * 64);
  for (int slot = 0; slot < 16; ++slot) {
    for (size_t i = 0; i < k.size(); ++i) {
      k[i] = 0.1234567f * static_cast<float>(i + 1) + static_cast<float>(slot);
      v[i] = -k[i] / 3.0f;
    }
    cache.write(1, 2, slot, k.data(), v.data());
    for (int h = 0; h < 2; ++h) {
      for (int d = 0; d < 64; ++d) {
        EXPECT_EQ(cache.k_float(1, 2, h)[slot * 64 + d], k[h * 64 + d]);
        EXPECT_EQ(cache.v_float(1, 2, h)[slot * 64 + d], v[h * 64 + d]);
      }
    }
  }
  EXPECT_FALSE(cache.is_sealed(1, 2));
  cache.write(1, 2, 15, k.data(), v.data());  // rewriting is allowed
}

// Fills page `page` of `layer` with random K (plus per-channel offsets) and V; returns them.
std::pair<std::vector<float>, std::vector<float>> fill_page(PagedKVCache& cache, int layer,
                                                            int page, int slots, uint32_t seed) {
  const KVCacheShape& s = cache.shape();
  const int width = s.num_kv_heads * s.head_dim;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> offset(static_cast<size_t>(width));
  for (float& o : offset) o = 5.0f * nd(rng);
  std::vector<float> k(static_cast<size_t>(slots) * width), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = nd(rng) + offset[i % width];
    v[i] = nd(rng) * (1.0f + static_cast<float>(i % width) / 16.0f);  // channel scales differ
  }
  for (int t = 0; t < slots; ++t) {
    cache.write(layer, page, t, &k[static_cast<size_t>(t) * width],
                &v[static_cast<size_t>(t) * width]);
  }
  return {k, v};
}

TEST(KVCache, Int8TailIsBf16AndLastSlotSealsThePage) {
  PagedKVCache cache(small_shape(), KVCacheDType::kInt8);
  ASSERT_EQ(cache.allocate(), 0);
  ASSERT_EQ(cache.allocate(), 1);
  auto [k, v] = fill_page(cache, 0, 1, 15, 5);
  EXPECT_FALSE(cache.is_sealed(0, 1));
  for (int t = 0; t < 15; ++t) {
    for (int h = 0; h < 2; ++h) {
      for (int d = 0; d < 64; ++d) {
        EXPECT_EQ(cache.k_float(0, 1, h)[t * 64 + d], round_to_bf16(k[(t * 2 + h) * 64 + d]));
        EXPECT_EQ(cache.v_float(0, 1, h)[t * 64 + d], round_to_bf16(v[(t * 2 + h) * 64 + d]));
      }
    }
  }
  std::vector<float> row(2 * 64, 0.5f);
  cache.write(0, 1, 15, row.data(), row.data());
  EXPECT_TRUE(cache.is_sealed(0, 1));
  EXPECT_FALSE(cache.is_sealed(1, 1));  // sealing is per layer
  EXPECT_THROW(cache.write(0, 1, 3, row.data(), row.data()), Error);
  cache.release(1);  // releasing un-seals
  EXPECT_FALSE(cache.is_sealed(0, 1));
  cache.write(0, 1, 0, row.data(), row.data());
}

TEST(KVCache, SealedPageReconstructsKAndVWithinTheirQuantizationSteps) {
  const int page_size = 64, hd = 128;
  PagedKVCache cache(small_shape(2, page_size, hd), KVCacheDType::kInt8);
  auto [k, v] = fill_page(cache, 1, 0, page_size, 9);
  ASSERT_TRUE(cache.is_sealed(1, 0));
  double k_err = 0.0, k_ref = 0.0, v_err = 0.0, v_ref = 0.0;
  for (int h = 0; h < 2; ++h) {
    const QuantizedKVPageView q = cache.quantized(1, 0, h);
    ASSERT_GT(q.k_scale, 0.0f);
    for (int d = 0; d < hd; ++d) {
      // The mean is over the page's bf16-rounded tokens.
      double mean = 0.0;
      for (int t = 0; t < page_size; ++t) mean += round_to_bf16(k[(t * 2 + h) * hd + d]);
      mean /= page_size;
      EXPECT_NEAR(q.k_mean[d], mean, 1e-5 * (1.0 + std::fabs(mean)));
    }
    for (int t = 0; t < page_size; ++t) {
      for (int d = 0; d < hd; ++d) {
        const float kb = round_to_bf16(k[(t * 2 + h) * hd + d]);
        const float vb = round_to_bf16(v[(t * 2 + h) * hd + d]);
        const float k_hat = static_cast<float>(q.k[t * hd + d]) * q.k_scale + q.k_mean[d];
        const float v_hat = fp8_e4m3_to_float(q.v[t * hd + d]) * q.v_scale[d];
        // INT8: half a step (plus fp32 rounding). FP8 e4m3: 2^-4 relative, or half the
        // subnormal step 2^-10 * scale (a bf16 scale rounded down saturates the channel's
        // maximum by at most 2^-8, well within that).
        ASSERT_LE(std::fabs(kb - k_hat), 0.5f * q.k_scale * 1.0001f + 1e-6f) << t << " " << d;
        ASSERT_LE(std::fabs(vb - v_hat),
                  std::max(std::fabs(vb) * 0.0625f, q.v_scale[d] * 0.0009766f) * 1.0001f)
            << t << " " << d;
        EXPECT_LE(std::abs(static_cast<int>(q.k[t * hd + d])), 127);
        if (t == 0) EXPECT_EQ(q.v_scale[d], round_to_bf16(q.v_scale[d]));
        k_err += std::fabs(kb - k_hat);
        k_ref += std::fabs(kb - q.k_mean[d]);
        v_err += std::fabs(vb - v_hat);
        v_ref += std::fabs(vb);
      }
    }
  }
  std::printf("[kv-cache] sealed page reconstruction: K rel-L1 (of k - mean) %.3e, V rel-L1 %.3e\n",
              k_err / k_ref, v_err / v_ref);
  EXPECT_LT(k_err / k_ref, 0.02);
  EXPECT_LT(v_err / v_ref, 0.03);
}

// INT8 V codes (int8 P.V): one scale per channel, max |v| / 127 rounded to bf16; every value within
// half a step, the channel's maximum at +-127 (or one step less where the bf16 scale rounded up).
TEST(KVCache, Int8ValueCodesReconstructVWithinHalfAStep) {
  const int page_size = 64, hd = 64;
  PagedKVCache cache(small_shape(4, page_size, hd), KVCacheDType::kInt8, KVValueCodes::kInt8);
  EXPECT_EQ(cache.v_codes(), KVValueCodes::kInt8);
  auto [k, v] = fill_page(cache, 0, 2, page_size, 33);
  ASSERT_TRUE(cache.is_sealed(0, 2));
  double err = 0.0, ref = 0.0;
  for (int h = 0; h < 2; ++h) {
    const QuantizedKVPageView q = cache.quantized(0, 2, h);
    EXPECT_EQ(q.v_codes, KVValueCodes::kInt8);
    for (int d = 0; d < hd; ++d) {
      float vmax = 0.0f;
      int cmax = 0;
      for (int t = 0; t < page_size; ++t) {
        const float vb = round_to_bf16(v[(t * 2 + h) * hd + d]);
        vmax = std::max(vmax, std::fabs(vb));
        const int code = static_cast<int8_t>(q.v[t * hd + d]);
        cmax = std::max(cmax, std::abs(code));
        EXPECT_EQ(v_code_value(q.v[t * hd + d], KVValueCodes::kInt8), static_cast<float>(code));
        const float v_hat = static_cast<float>(code) * q.v_scale[d];
        ASSERT_LE(std::fabs(vb - v_hat), 0.5f * q.v_scale[d] * 1.0001f + 1e-7f) << t << " " << d;
        err += std::fabs(vb - v_hat);
        ref += std::fabs(vb);
      }
      EXPECT_EQ(q.v_scale[d], round_to_bf16(vmax / 127.0f));
      EXPECT_GE(cmax, 126);
      EXPECT_LE(cmax, 127);
    }
  }
  std::printf("[kv-cache] INT8 V reconstruction: rel-L1 %.3e\n", err / ref);
  EXPECT_LT(err / ref, 0.01);
}

TEST(KVCache, SealingUsesTheSharedPageQuantizer) {
  const int page_size = 16, hd = 64;
  PagedKVCache cache(small_shape(2, page_size, hd), KVCacheDType::kInt8);
  fill_page(cache, 0, 1, page_size, 21);
  PagedKVCache floats(small_shape(2, page_size, hd), KVCacheDType::kFloat);
  for (int h = 0; h < 2; ++h) {
    // The cache's bf16 copy, quantized by page_quant, must give the stored bytes exactly.
    std::vector<float> kb(cache.k_float(0, 1, h), cache.k_float(0, 1, h) + page_size * hd);
    std::vector<float> vb(cache.v_float(0, 1, h), cache.v_float(0, 1, h) + page_size * hd);
    std::vector<int8_t> kc(page_size * hd);
    std::vector<uint8_t> vc(page_size * hd);
    std::vector<float> mean(hd), vs(hd);
    float ks = 0.0f;
    quantize_k_page(kb.data(), page_size, page_size, hd, kc.data(), mean.data(), &ks);
    quantize_v_page(vb.data(), page_size, page_size, hd, vc.data(), vs.data());
    const QuantizedKVPageView q = cache.quantized(0, 1, h);
    EXPECT_EQ(q.k_scale, ks);
    EXPECT_EQ(0, std::memcmp(q.k, kc.data(), kc.size()));
    EXPECT_EQ(0, std::memcmp(q.v, vc.data(), vc.size()));
    EXPECT_EQ(0, std::memcmp(q.k_mean, mean.data(), hd * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(q.v_scale, vs.data(), hd * sizeof(float)));
  }
}

TEST(PageQuant, PartialPagesUseOnlyValidTokensAndZeroPagesGiveZeroCodes) {
  const int page_size = 8, hd = 4;
  std::vector<float> k(page_size * hd), v(page_size * hd);
  for (int i = 0; i < page_size * hd; ++i) {
    k[i] = static_cast<float>(i % hd) + (i < 3 * hd ? 0.25f * static_cast<float>(i / hd) : 1000.0f);
    v[i] = i < 3 * hd ? static_cast<float>(i) - 5.0f : 1e6f;
  }
  std::vector<int8_t> kc(page_size * hd, 99);
  std::vector<uint8_t> vc(page_size * hd, 99);
  std::vector<float> mean(hd), vs(hd);
  float ks = 0.0f;
  quantize_k_page(k.data(), 3, page_size, hd, kc.data(), mean.data(), &ks);
  quantize_v_page(v.data(), 3, page_size, hd, vc.data(), vs.data());
  for (int d = 0; d < hd; ++d) EXPECT_FLOAT_EQ(mean[d], static_cast<float>(d) + 0.25f);
  EXPECT_FLOAT_EQ(ks, 0.25f / 127.0f);
  EXPECT_EQ(kc[0], -127);
  EXPECT_EQ(kc[2 * hd], 127);
  for (int i = 3 * hd; i < page_size * hd; ++i) {
    EXPECT_EQ(kc[i], 0);
    EXPECT_EQ(vc[i], 0);
  }
  EXPECT_EQ(vs[0], round_to_bf16(5.0f / 448.0f));  // channel 0: -5, -1, 3
  EXPECT_EQ(vc[0], float_to_fp8_e4m3(-448.0f));

  std::vector<float> zeros(page_size * hd, 0.0f);
  quantize_k_page(zeros.data(), page_size, page_size, hd, kc.data(), mean.data(), &ks);
  quantize_v_page(zeros.data(), page_size, page_size, hd, vc.data(), vs.data());
  EXPECT_EQ(ks, 0.0f);
  for (int i = 0; i < page_size * hd; ++i) {
    EXPECT_EQ(kc[i], 0);
    EXPECT_EQ(vc[i], 0);
  }
}

TEST(KVCache, BytesPerTokenModelsTheGpuLayout) {
  // Llama-3.1-8B: 32 layers, 8 KV heads, head_dim 128, pages of 64 tokens.
  KVCacheShape s;
  s.num_layers = 32;
  s.num_kv_heads = 8;
  s.head_dim = 128;
  s.page_size = 64;
  s.num_pages = 1;
  EXPECT_EQ(PagedKVCache(s, KVCacheDType::kFloat).bytes_per_token(), 131072u);  // bf16 K and V
  // int8 K + fp8 V (65536 B) + per page and head fp32 K mean, fp32 K scale, bf16 V scales over
  // 64 tokens: 1.91x fewer bytes than bf16.
  EXPECT_EQ(PagedKVCache(s, KVCacheDType::kInt8).bytes_per_token(), 65536u + (256u * 772u) / 64u);
  EXPECT_EQ(kv_cache_dtype_name(KVCacheDType::kFloat), "bf16");
  EXPECT_EQ(kv_cache_dtype_name(KVCacheDType::kInt8), "int8");
}

}  // namespace
}  // namespace sagellm
