// Symmetric INT8 quantization as SageAttention uses it: code = clamp(round(x / scale), -127, 127)
// with rounding half away from zero (C's roundf, CUDA's roundf(); not rintf/__float2int_rn, which
// round ties to even). The division is IEEE (correctly rounded), as CUDA's '/' without
// -use_fast_math. A scale of 0 (an all-zero block) gives all-zero codes.
#pragma once

#include <cmath>
#include <cstdint>

namespace sagellm {

inline constexpr float kInt8Max = 127.0f;

// Round half away from zero and clamp to [-127, 127]; NaN maps to 0.
inline int8_t round_to_int8(float x) {
  const float r = std::round(x);
  if (!(r == r)) return 0;
  if (r > kInt8Max) return 127;
  if (r < -kInt8Max) return -127;
  return static_cast<int8_t>(r);
}

// The scale that maps max_abs to 127. Division rather than a reciprocal so that the GPU can
// reproduce it exactly with an IEEE division.
inline float int8_scale_for(float max_abs) { return max_abs / kInt8Max; }

inline int8_t quantize_int8(float x, float scale) {
  return scale > 0.0f ? round_to_int8(x / scale) : int8_t{0};
}

}  // namespace sagellm
