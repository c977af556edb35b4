// cuBLASLt GEMM C = A · W^T (+ C) against an fp64 reference on the same bf16 inputs.
//
// Per-element bound: products of two bf16 numbers are exact in fp32, so the only fp32 error is
// in the k-term accumulation: at most k * 2^-24 * sum|a*w| with round to nearest (Higham's
// gamma_k). Tensor cores align each block of products to its largest exponent and truncate
// (Fasi, Higham, Mikaitis and Pranesh, 2021), which can reach about 2.25 k * 2^-24 * sum|a*w|;
// we allow 4k * 2^-24 * sum|a*w|, plus 2 * 2^-24 * (|A·W^T| + |C|) for adding C and for the
// result: that is e32. A bf16 output adds the final rounding (gpu_test_util.h).
//
// The worst case is loose for large k, so the typical error is checked as well: the relative
// RMS error of an fp32 output must stay below 2^-12 (fp32 accumulation gives ~1e-5 here; a bf16
// rounding anywhere in the chain gives ~1e-3), that of a bf16 output below 2^-8 (its rounding
// alone gives ~1e-3). A wrong transpose, stride or dtype is off by O(1) in both.
#include "kernels/cuda/gemm.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "io/model_config.h"
#include "kernels/cuda/ops.h"
#include "model/rope.h"

namespace sagellm {
namespace {

using testing::bf16;
using testing::expect_error;
class GemmGpu : public testing::GpuTest {};

struct GemmCase {
  int m, n, k;
  DType out = DType::kBF16;
  bool accumulate = false;
  int64_t lda = 0;  // 0: dense
  int64_t ldc = 0;
  size_t a_offset = 0;  // elements; odd offsets leave the matrices 2-byte aligned only
  size_t w_offset = 0;
  size_t c_offset = 0;
};

std::string name_of(const GemmCase& c) {
  std::string s = fmt::format("gemm m={} n={} k={} {}", c.m, c.n, c.k, dtype_name(c.out));
  if (c.accumulate) s += " +C";
  if (c.lda) s += fmt::format(" lda={}", c.lda);
  if (c.ldc) s += fmt::format(" ldc={}", c.ldc);
  if (c.a_offset + c.w_offset + c.c_offset) s += " misaligned";
  return s;
}

struct GemmData {
  std::vector<float> a;   // [m][lda]
  std::vector<float> w;   // [n][k]
  std::vector<float> c0;  // [m][ldc], bf16-valued (also when the output is fp32)
};

// Returns C as floats ([m][ldc], padding included).
std::vector<float> run_gpu(gpu::Gemm& gemm, const GemmCase& c, const GemmData& d) {
  const int64_t ldc = c.ldc ? c.ldc : c.n;
  auto pad_bf16 = [](const std::vector<float>& v, size_t offset) {
    std::vector<bf16> p(offset, testing::to_bf16(9.0f));
    const std::vector<bf16> b = testing::to_bf16(v);
    p.insert(p.end(), b.begin(), b.end());
    return testing::upload(p);
  };
  auto d_a = pad_bf16(d.a, c.a_offset);
  auto d_w = pad_bf16(d.w, c.w_offset);
  gpu::GemmArgs args;
  args.a = d_a.data() + c.a_offset;
  args.w = d_w.data() + c.w_offset;
  args.c_dtype = c.out;
  args.m = c.m;
  args.n = c.n;
  args.k = c.k;
  args.lda = c.lda;
  args.ldc = c.ldc;
  args.accumulate = c.accumulate;
  const size_t c_elems = size_t(c.m) * ldc;
  if (c.out == DType::kBF16) {
    auto d_c = pad_bf16(d.c0, c.c_offset);
    args.c = d_c.data() + c.c_offset;
    gemm.run(args, nullptr);
    const std::vector<bf16> out = testing::download(d_c);
    return testing::to_float(
        std::vector<bf16>(out.begin() + c.c_offset, out.begin() + c.c_offset + c_elems));
  }
  std::vector<float> c0 = d.c0;
  c0.insert(c0.begin(), c.c_offset, 9.0f);
  auto d_c = testing::upload(c0);
  args.c = d_c.data() + c.c_offset;
  gemm.run(args, nullptr);
  const std::vector<float> out = testing::download(d_c);
  return std::vector<float>(out.begin() + c.c_offset, out.begin() + c.c_offset + c_elems);
}

GemmData make_data(const GemmCase& c, uint64_t seed) {
  const int64_t lda = c.lda ? c.lda : c.k;
  const int64_t ldc = c.ldc ? c.ldc : c.n;
  GemmData d;
  d.a = testing::random_bf16_values(size_t(c.m) * lda, seed, 1.0f);
  d.w = testing::random_bf16_values(size_t(c.n) * c.k, seed + 1, 0.05f);
  d.c0 = testing::random_bf16_values(size_t(c.m) * ldc, seed + 2, 2.0f);
  return d;
}

void check_gemm(gpu::Gemm& gemm, const GemmCase& c, uint64_t seed) {
  const std::string what = name_of(c);
  SCOPED_TRACE(what);
  const int64_t lda = c.lda ? c.lda : c.k;
  const int64_t ldc = c.ldc ? c.ldc : c.n;
  const GemmData d = make_data(c, seed);
  const std::vector<float> got_all = run_gpu(gemm, c, d);

  std::vector<float> got;
  std::vector<double> ref;
  std::vector<double> bound;
  size_t padding_changed = 0;
  for (int i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float g = got_all[size_t(i) * ldc + j];
      const float c0 = d.c0[size_t(i) * ldc + j];
      if (j >= c.n) {
        if (g != c0) ++padding_changed;
        continue;
      }
      double s = 0.0;
      double abs_s = 0.0;
      for (int p = 0; p < c.k; ++p) {
        const double prod = double(d.a[size_t(i) * lda + p]) * double(d.w[size_t(j) * c.k + p]);
        s += prod;
        abs_s += std::fabs(prod);
      }
      const double add = c.accumulate ? c0 : 0.0;
      const double r = s + add;
      const double e32 = 4.0 * c.k * testing::kF32Unit * abs_s +
                         2.0 * testing::kF32Unit * (std::fabs(s) + std::fabs(add));
      got.push_back(g);
      ref.push_back(r);
      // Accumulating into a bf16 C, cuBLASLt may round A·W^T to bf16 before adding C (seen on
      // the H200: errors up to 2^-9 |A·W^T| where the sum cancels). That is the rounding a bf16
      // residual add has anyway, so it is allowed: one more bf16 rounding of each operand.
      const double operand_rounding =
          c.accumulate && c.out == DType::kBF16
              ? testing::kBf16RoundingError * (std::fabs(s) + std::fabs(add))
              : 0.0;
      bound.push_back(c.out == DType::kBF16 ? testing::bf16_output_bound(r, e32) + operand_rounding
                                            : e32 + 1e-30);
    }
  }
  testing::expect_within_bounds(what, testing::compare(got, ref, bound), got, ref);
  double err2 = 0.0;
  double ref2 = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    err2 += (got[i] - ref[i]) * (got[i] - ref[i]);
    ref2 += ref[i] * ref[i];
  }
  const double rms_rel = std::sqrt(err2 / ref2);
  const double rms_limit = c.out == DType::kF32 ? 1.0 / 4096.0 : 1.0 / 256.0;
  std::printf("[   error  ] %s: relative RMS error %.3g (limit %.3g)\n", what.c_str(), rms_rel,
              rms_limit);
  EXPECT_LT(rms_rel, rms_limit) << what;
  EXPECT_EQ(padding_changed, 0u) << "C was written outside its n columns";
}

TEST_F(GemmGpu, DecodeShapes) {
  gpu::Gemm gemm;
  check_gemm(gemm, {1, 4096, 4096}, 51);                      // one token through a projection
  check_gemm(gemm, {1, 32000, 64, DType::kF32}, 52);          // LM head to fp32 logits
  check_gemm(gemm, {1, 3, 5}, 53);                            // tiny
  check_gemm(gemm, {1, 4096, 1024, DType::kBF16, true}, 54);  // o_proj into the residual
}

// M <= 4 runs the GEMV kernel (gemv.cuh); the same bounds hold, and cuBLASLt on the same cases
// (set_small_m_kernel(false)) is checked alongside.
TEST_F(GemmGpu, SmallMGemvShapes) {
  for (bool gemv : {true, false}) {
    gpu::Gemm gemm;
    gemm.set_small_m_kernel(gemv);
    check_gemm(gemm, {1, 14336 * 2, 4096}, 91);                         // gate/up of an 8B layer
    check_gemm(gemm, {2, 4096, 14336}, 92);                             // down
    check_gemm(gemm, {3, 1001, 4104, DType::kF32}, 93);                 // k not a multiple of 256
    check_gemm(gemm, {4, 130, 520, DType::kF32, false, 528, 140}, 94);  // strided A and C
    check_gemm(gemm, {3, 7, 8}, 95);                                    // fewer rows than a CTA
    check_gemm(gemm, {4, 128256, 64, DType::kF32}, 96);                 // LM head of a small model
    check_gemm(gemm, {2, 12288, 1000}, 98);  // two warps per row group (gemv_split)
    check_gemm(gemm, {1, 40000, 256}, 99);   // one warp per row group
  }
}

TEST_F(GemmGpu, SmallMRowsDoNotDependOnM) {
  gpu::Gemm gemm;
  const GemmCase big{4, 4096, 4096, DType::kF32};
  const GemmData d = make_data(big, 97);
  const std::vector<float> all = run_gpu(gemm, big, d);
  for (int m : {1, 2, 3}) {
    GemmCase c = big;
    c.m = m;
    GemmData part = d;
    part.a.resize(size_t(m) * 4096);
    part.c0.resize(size_t(m) * 4096);
    const std::vector<float> got = run_gpu(gemm, c, part);
    EXPECT_EQ(got, std::vector<float>(all.begin(), all.begin() + long(m) * 4096)) << m;
  }
}

// linear_swiglu against the two steps it fuses (the projection into [gate | up], then
// gpu::silu_mul), bit for bit: on the GEMV path (m <= 4, each split of gemv_split) and on the
// GEMM path (m > 4, or the GEMV kernel off).
TEST_F(GemmGpu, SwiGluEqualsProjectionThenSiluMul) {
  struct Case {
    int m, inter, k;
    bool gemv;
  };
  for (const Case& c : {Case{1, 14336, 4096, true}, Case{3, 1000, 520, true},
                        Case{4, 6000, 256, true}, Case{2, 9000, 64, true}, Case{1, 17000, 64, true},
                        Case{6, 300, 128, true}, Case{2, 500, 256, false}}) {
    SCOPED_TRACE(fmt::format("m {} inter {} k {} gemv {}", c.m, c.inter, c.k, c.gemv));
    gpu::Gemm gemm;
    gemm.set_small_m_kernel(c.gemv);
    const auto d_a =
        testing::upload(testing::to_bf16(testing::random_bf16_values(size_t(c.m) * c.k, 101)));
    const auto d_w = testing::upload(
        testing::to_bf16(testing::random_bf16_values(size_t(2) * c.inter * c.k, 102, 0.05f)));
    DeviceBuffer<bf16> gate_up(size_t(c.m) * 2 * c.inter);
    DeviceBuffer<bf16> want(size_t(c.m) * c.inter);
    DeviceBuffer<bf16> got(size_t(c.m) * c.inter);
    gemm.linear(d_a.data(), d_w.data(), gate_up.data(), c.m, 2 * c.inter, c.k, nullptr);
    gpu::silu_mul(gate_up.data(), want.data(), c.m, c.inter, nullptr);
    gemm.linear_swiglu(d_a.data(), d_w.data(), gate_up.data(), got.data(), c.m, c.inter, c.k,
                       nullptr);
    std::vector<uint16_t> want_bits, got_bits;
    for (bf16 b : testing::download(want)) want_bits.push_back(testing::bits_of(b));
    for (bf16 b : testing::download(got)) got_bits.push_back(testing::bits_of(b));
    EXPECT_EQ(got_bits, want_bits);
    size_t nonzero = 0;
    for (uint16_t b : want_bits) nonzero += (b & 0x7fff) != 0;
    EXPECT_GT(nonzero, want_bits.size() / 2) << "a degenerate case";
  }
}

// linear_rope_kv_write against the three steps it fuses (the QKV projection, RoPE, the KV-cache
// write), bit for bit: the rotated q and k and the plain v in qkv, and both caches, on the GEMV
// path (m <= 4, each split of gemv_split, head dims with an odd half) and on the GEMM path; rows
// with a padding page or a page outside the pool are not cached.
TEST_F(GemmGpu, QkvRopeKvWriteEqualsProjectionThenRopeKvWrite) {
  struct Case {
    int m, q_heads, kv_heads, head_dim, k;
    bool gemv;
  };
  for (const Case& c : {Case{1, 32, 8, 128, 1024, true}, Case{4, 8, 2, 64, 512, true},
                        Case{3, 64, 8, 128, 256, true}, Case{2, 160, 16, 128, 64, true},
                        Case{2, 3, 1, 10, 64, true}, Case{1, 8, 4, 8, 64, true},
                        Case{6, 4, 2, 64, 128, true}, Case{2, 8, 2, 64, 256, false}}) {
    SCOPED_TRACE(fmt::format("m {} heads {}/{} head_dim {} k {} gemv {}", c.m, c.q_heads,
                             c.kv_heads, c.head_dim, c.k, c.gemv));
    const int n = (c.q_heads + 2 * c.kv_heads) * c.head_dim;
    const int page_size = 16, num_pages = 3;
    gpu::Gemm gemm;
    gemm.set_small_m_kernel(c.gemv);
    const auto d_a =
        testing::upload(testing::to_bf16(testing::random_bf16_values(size_t(c.m) * c.k, 111)));
    const auto d_w =
        testing::upload(testing::to_bf16(testing::random_bf16_values(size_t(n) * c.k, 112, 0.05f)));
    const size_t cache_elems = size_t(num_pages) * c.kv_heads * page_size * c.head_dim;
    const std::vector<bf16> k_init =
        testing::to_bf16(testing::random_bf16_values(cache_elems, 113, 50.0f));
    const std::vector<bf16> v_init =
        testing::to_bf16(testing::random_bf16_values(cache_elems, 114, 50.0f));
    std::mt19937_64 rng(115);
    std::uniform_int_distribution<int32_t> pos_dist(0, 131071);
    std::vector<int32_t> positions(c.m), pages(c.m), slots(c.m);
    for (int t = 0; t < c.m; ++t) {
      positions[t] = pos_dist(rng);
      pages[t] = t == 1 ? -1 : t == 3 ? num_pages : t % num_pages;
      slots[t] = (5 * t + 2) % page_size;
    }
    io::RopeConfig rope;
    rope.theta = 500000.0;
    const auto d_inv = testing::upload(rope_inv_freq(rope, c.head_dim));
    const auto d_pos = testing::upload(positions);
    const auto d_pages = testing::upload(pages);
    const auto d_slots = testing::upload(slots);
    struct Out {
      std::vector<uint16_t> qkv, k, v;
    };
    const auto bits = [](const std::vector<bf16>& v) {
      std::vector<uint16_t> b;
      for (bf16 x : v) b.push_back(testing::bits_of(x));
      return b;
    };
    const auto run = [&](bool fused) {
      DeviceBuffer<bf16> qkv(size_t(c.m) * n);
      auto d_k = testing::upload(k_init);
      auto d_v = testing::upload(v_init);
      gpu::RopeParams rp;
      rp.q = qkv.data();
      rp.q_heads = c.q_heads;
      rp.q_row_stride = n;
      rp.k = qkv.data() + int64_t(c.q_heads) * c.head_dim;
      rp.k_heads = c.kv_heads;
      rp.k_row_stride = n;
      rp.rows = c.m;
      rp.head_dim = c.head_dim;
      rp.inv_freq = d_inv.data();
      rp.positions = d_pos.data();
      gpu::KVCacheWriteParams kw;
      kw.k = rp.k;
      kw.k_row_stride = n;
      kw.v = rp.k + int64_t(c.kv_heads) * c.head_dim;
      kw.v_row_stride = n;
      kw.k_cache = d_k.data();
      kw.v_cache = d_v.data();
      kw.pages = d_pages.data();
      kw.slots = d_slots.data();
      kw.rows = c.m;
      kw.kv_heads = c.kv_heads;
      kw.head_dim = c.head_dim;
      kw.page_size = page_size;
      kw.num_pages = num_pages;
      if (fused) {
        gemm.linear_rope_kv_write(d_a.data(), d_w.data(), qkv.data(), c.m, c.k, rp, kw, nullptr);
      } else {
        gemm.linear(d_a.data(), d_w.data(), qkv.data(), c.m, n, c.k, nullptr);
        gpu::rope(rp, nullptr);
        gpu::kv_cache_write(kw, nullptr);
      }
      return Out{bits(testing::download(qkv)), bits(testing::download(d_k)),
                 bits(testing::download(d_v))};
    };
    const Out want = run(false);
    const Out got = run(true);
    EXPECT_EQ(got.qkv, want.qkv);
    EXPECT_EQ(got.k, want.k);
    EXPECT_EQ(got.v, want.v);
    EXPECT_NE(want.k, bits(k_init)) << "the case cached nothing";
    EXPECT_NE(want.v, bits(v_init)) << "the case cached nothing";
  }
}

TEST_F(GemmGpu, PrefillAndOddShapes) {
  gpu::Gemm gemm;
  check_gemm(gemm, {128, 256, 512}, 61);
  check_gemm(gemm, {7, 129, 67}, 62);
  check_gemm(gemm, {257, 96, 130, DType::kF32}, 63);
  check_gemm(gemm, {33, 77, 1000, DType::kF32, true}, 64);
  check_gemm(gemm, {16, 1024, 4096}, 65);
  check_gemm(gemm, {300, 64, 64, DType::kBF16, true}, 66);
}

TEST_F(GemmGpu, StridesAndMisalignedPointers) {
  gpu::Gemm gemm;
  check_gemm(gemm, {9, 40, 64, DType::kBF16, false, 80, 48}, 71);
  check_gemm(gemm, {5, 33, 31, DType::kF32, true, 37, 35}, 72);
  check_gemm(gemm, {12, 64, 128, DType::kBF16, false, 0, 0, 1, 0, 0}, 73);
  check_gemm(gemm, {12, 64, 128, DType::kBF16, true, 0, 0, 0, 3, 5}, 74);
  check_gemm(gemm, {3, 50, 200, DType::kF32, false, 0, 0, 1, 1, 1}, 75);
}

TEST_F(GemmGpu, IsDeterministicAndCachesPlans) {
  gpu::Gemm gemm;
  EXPECT_EQ(gemm.workspace_bytes(), size_t{32} << 20);
  for (const GemmCase& c : {GemmCase{1, 4096, 4096}, GemmCase{128, 256, 512, DType::kF32}}) {
    const GemmData d = make_data(c, 81);
    const std::vector<float> first = run_gpu(gemm, c, d);
    const size_t plans = gemm.cached_plans();
    const std::vector<float> second = run_gpu(gemm, c, d);
    EXPECT_EQ(gemm.cached_plans(), plans) << "the second call must reuse the plan";
    EXPECT_EQ(first, second) << name_of(c);
  }
}

TEST_F(GemmGpu, ZeroRowsIsANoOpAndBadShapesThrow) {
  gpu::Gemm gemm;
  gpu::GemmArgs args;
  args.n = 8;
  args.k = 8;
  EXPECT_NO_THROW(gemm.run(args, nullptr));  // m = 0
  EXPECT_EQ(gemm.cached_plans(), 0u);
  args.m = 1;
  args.k = 0;
  expect_error([&] { gemm.run(args, nullptr); }, {"gemm: bad shape"});
  args.k = 8;
  args.lda = 4;
  expect_error([&] { gemm.run(args, nullptr); }, {"leading dimensions"});
  args.lda = 0;
  args.c_dtype = DType::kI8;
  expect_error([&] { gemm.run(args, nullptr); }, {"must be BF16 or F32"});
  args.c_dtype = DType::kF32;
  expect_error([&] { gemm.run(args, nullptr); }, {"null pointer"});
}

}  // namespace
}  // namespace sagellm
