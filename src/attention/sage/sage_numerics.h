// sage_attn numerics: the specification that the CPU twin (sage_cpu.cpp) implements and that
// every GPU kernel of this backend must reproduce up to the order of fp32 additions, the fusing of
// a multiply and an add into one FMA, and exp2 to within its rounding error (the CPU uses
// cpu_kernels.h's exp2, ~1.5 ulp, results below 2^-126 flushed to 0, as ex2.approx.ftz). All
// arithmetic is IEEE fp32 with round-to-nearest-even unless said otherwise.
//
// Per request, per query head h (KV head h / group), per layer:
//
// 1. Q. c = sm_scale * log2(e) (one fp32 product, log2(e) rounded to fp32); q'[i][d] = q[i][d] * c.
//    Each new token of each head is its own block (kQueryBlockRows = 1 in cpu_plan.h), so no
//    statistic ever mixes tokens, let alone requests. Per block and head:
//    q_scale = max |q'| / 127, q8 = clamp(round_half_away(q' / q_scale), +-127) (all 0 if
//    q_scale == 0); division, not a reciprocal (core/int8_quant.h).
//    One scale per token rather than per 16-token block (upstream's per-warp blocks): a row's
//    codes then use the whole INT8 range whatever its neighbours' magnitudes. Measured on the CPU
//    twin (stories260K, 400 KB of WikiText-2, ctx 512, mean KLD against the fp32 flash path):
//    fp16 P.V 4.36e-3 -> 3.71e-3 on a bf16 cache, 5.94e-3 -> 5.35e-3 on the 8-bit cache; fp8 P.V
//    on the 8-bit cache 6.03e-3 -> 5.39e-3. It costs nothing in memory (Q is not cached) and one
//    scale load per row in the kernels, which read per-row scales anyway.
// 2. K, per page of the request (kv_cache/page_quant.h): k8, k_mean[d], k_scale. A sealed page of
//    the 8-bit cache is used as stored; any other page (a float cache, or the bf16 tail of the
//    8-bit cache) is quantized on the fly by the same function over its valid tokens only
//    (min(page_size, kv_len - first token of the page)). So a page's statistics include keys that
//    the causal mask hides from some rows of the same page, exactly as a sealed page does.
// 3. Scores (base 2), for key j of the page:
//      s = float(sum_d q8[d] * k8[j][d]) * (q_scale * k_scale) + qm,
//      qm = sum_d q'[d] * k_mean[d]   (fp32, unquantized q': the smoothing is undone exactly).
//    The integer sum is exact (int32 on the GPU; fp32 on the CPU, exact as |sum| <= 127^2 *
//    head_dim < 2^24 for head_dim <= 1024). (q_scale * k_scale) is one fp32 product.
//    The Hopper prefill kernel evaluates qm as c * sum_d q[d] * k_mean[d] on the tensor cores
//    (k_mean as the exact sum of three bf16 parts, so every product is exact; fp32 sums) and
//    P_j = exp2(s_j - m_new) of step 4 as exp2(fma(float(sum), q_scale * k_scale, qm - m_new))
//    (fp8 mode: the factor 448 as + log2(448) in the exponent): the same values up to the
//    rounding of a product and a sum per row and page and exp2's error, the order-of-operations
//    differences this specification allows.
//    The split-KV kernel (decode) sums qm per lane over a few head dims and then over the lanes
//    in a fixed shuffle tree: another order of the same fp32 sum.
// 4. Online softmax over the request's pages in order; the running max is updated once per page,
//    the unit of the K and V scales: m_new = max(m, max over visible keys of the page of s),
//    alpha = exp2(m - m_new) (0 on the first page), P_j = exp2(s_j - m_new) in [0, 1].
//    Masked keys (bottom-right causal mask; slots past kv_len) get no P and no share of any sum;
//    a page with no visible key for a row leaves the row's state unchanged.
// 5. P.V with two-level accumulation. Per page, per row, with p_j the P.V operand:
//    fp8 mode:  p_j = fp8_value(fp8_e4m3(P_j * 448)); v = fp8_value(page V code) (a float page is
//               quantized on the fly as in 2); f[d] = v_scale[d].
//    fp16 mode: p_j = fp16(P_j). A sealed 8-bit page: v = fp8_value(code), exact in fp16, and
//               f[d] = v_scale[d] -- the stored value exactly, the scale applied in fp32 after the
//               product, rather than fp16(fp8 * scale), which would round a second time and lose
//               channels whose scale is below fp16's normal range; it is also what the fp8 kernel
//               does, so both modes share one epilogue. A float page: v = fp16(v), f[d] = 1.
//    int8 mode: V pages hold INT8 codes (page_quant.h, KVValueCodes::kInt8; a float page is
//               quantized on the fly so), v = code, f[d] = v_scale[d]. P is not rounded against
//               the running max but against the row's own max over the page's visible keys,
//               pm = max_j s_j (so every page's largest P is 255 however far below m_new it is):
//               p_j = round_p_u8(exp2(s_j - pm)) = round-to-nearest-even(exp2(s_j - pm) * 255),
//               an integer in [0, 255] (UINT8), and beta = exp2(pm - m_new) scales the page:
//               acc[d] = acc[d] * alpha + partial[d] * (f[d] * beta); l = l * alpha +
//               (sum_j p_j) * beta. partial is an exact integer (int32 on the GPU; |partial| <=
//               255 * 127 * 64 < 2^24, so exact in fp32 too). The P.V product is then INT8 x
//               UINT8 at the FP8 rate of the tensor cores (any sm_80+ GPU has it), and its error
//               is 7 bits of uniform precision in P and V where FP8 has 3 mantissa bits: on
//               passkey-4k the emulation (bench/numerics/sage_emulation.py) puts int8 mode at
//               1.7e-3 mean KLD against 4.7e-3 for fp8 mode and 3.6e-3 for fp16 mode.
//    partial[d] = sum_j p_j * v[j][d] in fp32 (every product is exact in fp32);
//    acc[d] = acc[d] * alpha + partial[d] * f[d];  l = l * alpha + sum_j p_j (fp8 and fp16).
//    In fp8 mode acc and l both carry P's factor 448, in int8 mode 255, which cancels in acc / l.
// 6. out = acc / l.
//
// The denominator sums the quantized P (the weights that actually multiply V), not the fp32 P:
// the output is then an exactly normalized average of the V values used. Measured against fp64
// attention (tests/attention/row_sum_test.cpp; random normal inputs, head_dim 64/128, causal
// prefill, decode over 1000 keys and non-causal, with and without K offsets, float cache), mean
// rel-L1 quantized-P vs fp32-P: fp8 3.472e-2 vs 3.484e-2 (quantized better in 6 of 8 cases);
// fp16 1.337e-2 vs 1.337e-2 (equal to 4 digits). So quantized-P: never worse, better in fp8.
//
// Accuracy (tests/attention/accuracy_test.cpp, rel-L1 vs fp64, random normal +- K offsets):
// fp16 P.V on a float cache <= 0.012; any 8-bit V (an 8-bit cache, or fp8 P.V) costs ~0.024 by
// itself (3 mantissa bits), fp8 P ~0.021 more: fp8 P.V 0.029-0.037, within 5% of the floor of
// FP8-rounding P and V in fp64 with nothing else quantized.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "attention/cpu_kernels.h"
#include "core/dtype.h"
#include "core/fp8.h"
#include "core/int8_quant.h"

namespace sagellm::sage {

inline constexpr float kLog2e = 1.4426950408889634f;

// The factor folded into q before quantization (scores become base-2 logits).
inline float q_factor(float sm_scale) { return sm_scale * kLog2e; }

// Quantizes `rows` rows of one head: q'[r][d] = q[r * q_stride + d] * factor into q_scaled
// [rows][head_dim], codes into codes [rows][head_dim]; returns the block's scale.
inline float quantize_q_block(const float* q, int rows, int q_stride, int head_dim, float factor,
                              float* q_scaled, int8_t* codes) {
  float max_abs = 0.0f;
  for (int r = 0; r < rows; ++r) {
    for (int d = 0; d < head_dim; ++d) {
      const float x = q[static_cast<long>(r) * q_stride + d] * factor;
      q_scaled[r * head_dim + d] = x;
      max_abs = max_abs < std::fabs(x) ? std::fabs(x) : max_abs;
    }
  }
  const float scale = int8_scale_for(max_abs);
  for (int i = 0; i < rows * head_dim; ++i) codes[i] = quantize_int8(q_scaled[i], scale);
  return scale;
}

inline constexpr float kPScaleFp8 = kFp8E4M3Max;  // P in [0, 1] is encoded as FP8 of P * 448

inline constexpr float kPScaleU8 = 255.0f;  // int8 mode: P in [0, 1] is encoded as P * 255

// int8 mode's P code: round to nearest even of p * 255 with one rounding (the product and the
// addition of 1.5 * 2^23, whose ulp is 1, fused, as the GPU's FMA does).
inline float round_p_u8(float p) {
  constexpr float kMagic = 12582912.0f;
  return std::fma(p, kPScaleU8, kMagic) - kMagic;
}

// The definitions: the value of FP8 e4m3(P * 448), and fp16 rounding.
inline float round_p_fp8(float p) { return fp8_e4m3_to_float(float_to_fp8_e4m3(p * kPScaleFp8)); }
inline float round_fp16(float x) { return fp16_to_float(float_to_fp16(x)); }

// The same roundings, four lanes at a time, for P in [0, 1] (tested equal to the scalar
// definitions). Round to nearest even on the float bits: keep 4 significant bits (fp8) or 11
// (fp16); below the smallest normal (2^-6 resp. 2^-14) round to a multiple of the subnormal
// quantum (2^-9 resp. 2^-24) by adding and subtracting 1.5 * quantum * 2^23.
// x in [0, 448] to the nearest FP8 e4m3 value (ties to even).
inline attention_cpu::Vec4 round_fp8_nonnegative(attention_cpu::Vec4 x) {
  using attention_cpu::Vec4;
  using attention_cpu::Vec4u;
  Vec4u u;
  std::memcpy(&u, &x, sizeof u);
  u = (u + 0x7FFFFu + ((u >> 20) & 1u)) & 0xFFF00000u;
  Vec4 normal;
  std::memcpy(&normal, &u, sizeof normal);
  const Vec4 sub = (x + 24576.0f) - 24576.0f;
  return x < 0.015625f ? sub : normal;
}

inline attention_cpu::Vec4 round_p_fp8(attention_cpu::Vec4 p) {
  return round_fp8_nonnegative(p * kPScaleFp8);
}

inline attention_cpu::Vec4 round_p_fp16(attention_cpu::Vec4 p) {
  using attention_cpu::Vec4;
  using attention_cpu::Vec4u;
  Vec4u u;
  std::memcpy(&u, &p, sizeof u);
  u = (u + 0xFFFu + ((u >> 13) & 1u)) & 0xFFFFE000u;
  Vec4 normal;
  std::memcpy(&normal, &u, sizeof normal);
  const Vec4 sub = (p + 0.75f) - 0.75f;
  return p < 6.103515625e-05f ? sub : normal;
}

}  // namespace sagellm::sage
