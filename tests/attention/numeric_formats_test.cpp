// FP8 e4m3 and INT8 conversions, and the vectorized roundings and exp2 of the CPU kernels,
// checked against independent definitions.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "attention/cpu_kernels.h"
#include "attention/sage/sage_numerics.h"
#include "core/fp8.h"
#include "core/int8_quant.h"

namespace sagellm {
namespace {

using attention_cpu::Vec4;

bool is_fp8_nan(int c) { return (c & 0x7F) == 0x7F; }

// Independent decoder: value = (-1)^s * 2^(e-7) * (1 + m/8), subnormals 2^-6 * m/8.
double fp8_reference_value(int c) {
  const int s = c >> 7, e = (c >> 3) & 0xF, m = c & 7;
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -mag : mag;
}

// Independent encoder: nearest finite code by exhaustive search, ties to the even code
// (mantissa LSB 0), |x| beyond 448 saturating.
uint8_t fp8_reference_encode(float x) {
  if (std::isnan(x)) return std::signbit(x) ? 0xFF : 0x7F;
  int best = -1;
  double best_err = INFINITY;
  for (int c = 0; c < 256; ++c) {
    if (is_fp8_nan(c) || (std::signbit(x) != ((c & 0x80) != 0))) continue;
    const double err = std::fabs(fp8_reference_value(c) - static_cast<double>(x));
    if (err < best_err || (err == best_err && (c & 1) == 0)) {
      best = c;
      best_err = err;
    }
  }
  return static_cast<uint8_t>(best);
}

TEST(Fp8E4M3, DecodesEveryCode) {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const float v = fp8_e4m3_to_float(static_cast<uint8_t>(c));
    if (is_fp8_nan(c)) {
      EXPECT_TRUE(std::isnan(v)) << c;
      ++nans;
      continue;
    }
    EXPECT_EQ(static_cast<double>(v), fp8_reference_value(c)) << c;
  }
  EXPECT_EQ(nans, 2);
  EXPECT_EQ(fp8_e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x08), 0.015625f);     // smallest normal 2^-6
  EXPECT_EQ(fp8_e4m3_to_float(0x01), 0.001953125f);  // smallest subnormal 2^-9
  EXPECT_TRUE(std::signbit(fp8_e4m3_to_float(0x80)));
}

TEST(Fp8E4M3, RoundTripsAll254FiniteCodes) {
  for (int c = 0; c < 256; ++c) {
    if (is_fp8_nan(c)) continue;
    EXPECT_EQ(float_to_fp8_e4m3(fp8_e4m3_to_float(static_cast<uint8_t>(c))), c) << c;
  }
}

TEST(Fp8E4M3, TiesRoundToEvenAndNeighboursRoundToNearest) {
  // Every midpoint between two adjacent finite magnitudes, both signs.
  int ties = 0;
  for (int c = 0; c < 0x7E; ++c) {
    const float lo = fp8_e4m3_to_float(static_cast<uint8_t>(c));
    const float hi = fp8_e4m3_to_float(static_cast<uint8_t>(c + 1));
    const float mid = (lo + hi) / 2;  // exact: fp32 has many more bits
    const int even = (c & 1) == 0 ? c : c + 1;
    EXPECT_EQ(float_to_fp8_e4m3(mid), even) << "tie between codes " << c << " and " << c + 1;
    EXPECT_EQ(float_to_fp8_e4m3(-mid), even | 0x80);
    EXPECT_EQ(float_to_fp8_e4m3(std::nextafter(mid, 0.0f)), c);
    EXPECT_EQ(float_to_fp8_e4m3(std::nextafter(mid, 1000.0f)), c + 1);
    ++ties;
  }
  EXPECT_EQ(ties, 126);
  // Subnormal ties: 2^-10 (between 0 and 2^-9) goes to 0, 3 * 2^-10 to 2^-8 (code 2).
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(3.0f, -10)), 0x02);
  EXPECT_EQ(float_to_fp8_e4m3(1e-20f), 0x00);
  EXPECT_EQ(float_to_fp8_e4m3(-1e-20f), 0x80);
  EXPECT_EQ(float_to_fp8_e4m3(std::numeric_limits<float>::denorm_min()), 0x00);
}

TEST(Fp8E4M3, SaturatesLikeSatfinite) {
  for (float x : {448.0f, 449.0f, 464.0f, 465.0f, 480.0f, 1e6f, 3.4e38f, INFINITY}) {
    EXPECT_EQ(float_to_fp8_e4m3(x), 0x7E) << x;
    EXPECT_EQ(float_to_fp8_e4m3(-x), 0xFE) << x;
  }
  EXPECT_EQ(float_to_fp8_e4m3(NAN), 0x7F);
  EXPECT_EQ(float_to_fp8_e4m3(432.0f), 0x7E);  // tie between 416 (0x7D) and 448 (0x7E): even
  EXPECT_EQ(float_to_fp8_e4m3(431.9f), 0x7D);
}

TEST(Fp8E4M3, MatchesExhaustiveSearchEncoderOnRandomFloats) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> exp_dist(-14, 10);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  for (int i = 0; i < 20000; ++i) {
    float x = std::ldexp(mant(rng), exp_dist(rng));
    if (i & 1) x = -x;
    ASSERT_EQ(float_to_fp8_e4m3(x), fp8_reference_encode(x)) << x;
  }
}

TEST(Int8Quant, RoundsHalfAwayFromZeroAndClamps) {
  EXPECT_EQ(round_to_int8(0.5f), 1);
  EXPECT_EQ(round_to_int8(-0.5f), -1);
  EXPECT_EQ(round_to_int8(1.5f), 2);
  EXPECT_EQ(round_to_int8(2.5f), 3);  // ties to even would give 2
  EXPECT_EQ(round_to_int8(-2.5f), -3);
  EXPECT_EQ(round_to_int8(0.49999997f), 0);  // the "+0.5 then truncate" idiom gives 1 here
  EXPECT_EQ(round_to_int8(126.5f), 127);
  EXPECT_EQ(round_to_int8(127.4f), 127);
  EXPECT_EQ(round_to_int8(300.0f), 127);
  EXPECT_EQ(round_to_int8(-300.0f), -127);  // symmetric: -128 is never produced
  EXPECT_EQ(round_to_int8(NAN), 0);
  EXPECT_EQ(quantize_int8(5.0f, 0.0f), 0);
  EXPECT_EQ(quantize_int8(1.0f, int8_scale_for(2.0f)), 64);  // 63.5 rounds away
}

TEST(SageNumerics, QuantizeQBlockMapsTheMaxTo127) {
  std::vector<float> q = {0.5f, -2.0f, 1.0f, 0.25f, 0.0f, 1.5f};  // 3 rows x 2, stride 2
  std::vector<float> qs(6);
  std::vector<int8_t> codes(6);
  const float factor = sage::q_factor(0.5f);
  const float scale = sage::quantize_q_block(q.data(), 3, 2, 2, factor, qs.data(), codes.data());
  EXPECT_EQ(qs[1], -2.0f * factor);
  EXPECT_EQ(scale, std::fabs(qs[1]) / 127.0f);
  EXPECT_EQ(codes[1], -127);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(codes[i], round_to_int8(qs[i] / scale)) << i;
}

// The vector roundings of P must equal the scalar definitions for every P in [0, 1].
TEST(SageNumerics, VectorPRoundingsEqualScalarDefinitions) {
  auto check_p = [](float p) {
    const Vec4 v = attention_cpu::splat4(p);
    ASSERT_EQ(std::bit_cast<uint32_t>(sage::round_p_fp8(v)[0]),
              std::bit_cast<uint32_t>(sage::round_p_fp8(p)))
        << p;
    ASSERT_EQ(std::bit_cast<uint32_t>(sage::round_p_fp16(v)[0]),
              std::bit_cast<uint32_t>(sage::round_fp16(p)))
        << p;
  };
  // A strided sweep over every float in [0, 1] ...
  for (uint32_t u = 0; u <= 0x3F800000u; u += 101) check_p(std::bit_cast<float>(u));
  check_p(1.0f);
  // ... and every tie of the fp8 rounding (in the P * 448 domain) and of fp16 (in [0, 1]).
  for (int c = 0; c < 0x7E; ++c) {
    const float mid = (fp8_e4m3_to_float(static_cast<uint8_t>(c)) +
                       fp8_e4m3_to_float(static_cast<uint8_t>(c + 1))) /
                      2;
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 448.0f)}) {
      ASSERT_EQ(sage::round_fp8_nonnegative(attention_cpu::splat4(x))[0],
                fp8_e4m3_to_float(float_to_fp8_e4m3(x)))
          << x;
    }
  }
  for (uint16_t h = 0; h < 0x3C00; ++h) {
    const float mid = (fp16_to_float(h) + fp16_to_float(static_cast<uint16_t>(h + 1))) / 2;
    for (float p : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1.0f)}) check_p(p);
  }
}

TEST(CpuKernels, Exp2IsAccurateAndFlushesTiny) {
  EXPECT_EQ(attention_cpu::exp2_nonpositive(0.0f), 1.0f);
  EXPECT_EQ(attention_cpu::exp2_nonpositive(-1.0f), 0.5f);
  EXPECT_EQ(attention_cpu::exp2_nonpositive(-126.0f), std::ldexp(1.0f, -126));
  EXPECT_EQ(attention_cpu::exp2_nonpositive(-INFINITY), 0.0f);
  EXPECT_EQ(attention_cpu::exp2_nonpositive(-200.0f), 0.0f);
  double worst = 0.0;
  for (uint32_t u = 0x80000000u; u <= 0xC2FC0000u; u += 997) {  // -0 .. -126
    const float x = std::bit_cast<float>(u);
    const double exact = std::exp2(static_cast<double>(x));
    const double rel = std::fabs(attention_cpu::exp2_nonpositive(x) - exact) / exact;
    worst = std::max(worst, rel);
  }
  std::printf("[exp2] worst relative error %.3e (%.2f ulp)\n", worst, worst / std::ldexp(1.0, -24));
  EXPECT_LT(worst, 3.0 * std::ldexp(1.0, -24));
}

TEST(CpuKernels, MatmulSumsInSequentialOrder) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  const int rows = 8, depth = 37, cols = 16;
  std::vector<float> a(rows * depth), b(depth * cols), c(rows * cols);
  for (float& x : a) x = nd(rng);
  for (float& x : b) x = nd(rng);
  attention_cpu::matmul_sequential(a.data(), depth, b.data(), cols, depth, c.data(), cols, rows,
                                   cols);
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < cols; ++j) {
      volatile float acc = 0.0f;  // volatile: one rounding per operation, in order
      for (int d = 0; d < depth; ++d) {
        const float prod = a[r * depth + d] * b[d * cols + j];
        acc = acc + prod;
      }
      EXPECT_EQ(c[r * cols + j], acc);
    }
  }
}

}  // namespace
}  // namespace sagellm
