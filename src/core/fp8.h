// FP8 e4m3 (OCP "E4M3FN": 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no infinities,
// S.1111.111 is NaN, largest finite value 448, smallest subnormal 2^-9) and exact conversions.
//
// Encoding matches CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3): round to nearest,
// ties to even; magnitudes beyond 448 (infinities included) saturate to +-448; NaN gives the NaN
// code 0x7F (0xFF when negative). Every FP8 value is exactly representable in fp16 and fp32, so
// decoding is exact, and a product of two decoded FP8 values is exact in fp32 (4 significant bits
// each, exponents within 2^-18 .. 2^18).
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace sagellm {

inline constexpr float kFp8E4M3Max = 448.0f;

constexpr float fp8_e4m3_to_float_slow(uint8_t code) {
  const bool negative = (code & 0x80) != 0;
  const int exp = (code >> 3) & 0xF;
  const int mant = code & 0x7;
  float v = 0.0f;
  if (exp == 0xF && mant == 0x7) {
    v = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    v = static_cast<float>(mant) / 512.0f;  // subnormal: mant * 2^-9
  } else {
    v = static_cast<float>(8 + mant) / 8.0f;
    for (int e = exp; e > 7; --e) v *= 2.0f;
    for (int e = exp; e < 7; ++e) v /= 2.0f;
  }
  return negative ? -v : v;
}

namespace detail {
inline constexpr std::array<float, 256> kFp8E4M3Table = [] {
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c) t[c] = fp8_e4m3_to_float_slow(static_cast<uint8_t>(c));
  return t;
}();
}  // namespace detail

inline float fp8_e4m3_to_float(uint8_t code) { return detail::kFp8E4M3Table[code]; }

inline uint8_t float_to_fp8_e4m3(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  if (std::isnan(f)) return static_cast<uint8_t>(sign | 0x7F);
  const float a = std::fabs(f);
  if (a >= kFp8E4M3Max) return static_cast<uint8_t>(sign | 0x7E);  // SATFINITE
  if (a < 0.015625f) {
    // Below the smallest normal (2^-6) the quantum is 2^-9: scaling by 512 is exact and
    // nearbyint rounds ties to even (default rounding mode). A result of 8 is the code of 2^-6.
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f)));
  }
  // Normal: keep 3 of the 23 mantissa bits, ties to even; a carry into the exponent is correct.
  uint32_t v = std::bit_cast<uint32_t>(a);
  v += 0x7FFFFu + ((v >> 20) & 1u);
  const uint32_t exp = (v >> 23) - 127u + 7u;  // >= 1 here, <= 15 since a < 448
  return static_cast<uint8_t>(sign | (exp << 3) | ((v >> 20) & 0x7u));
}

}  // namespace sagellm
