// The 8-bit page format of SageAttention's paged cache, for one KV head of one page: the one
// function that produces it, used both when the cache seals a full page and when the sage backend
// quantizes a float page (a kFloat cache, or the partly filled tail of a kInt8 cache) on the fly.
// GPU kernels must produce the same codes up to the fp32 summation order of the mean.
//
// K (n valid tokens k[j][d], j < n):
//   mean[d]  = (sum over j = 0..n-1 of k[j][d], fp32, in order of j) / n      (IEEE division)
//   k'[j][d] = k[j][d] - mean[d]                                                (fp32)
//   scale    = max over j, d of |k'[j][d]| / 127  (0 when all are 0)
//   code     = clamp(round_half_away(k'[j][d] / scale), -127, 127)             (0 when scale == 0)
//   so k ~= code * scale + mean[d]. The mean takes the per-channel offsets (the outliers of K) out
//   before the one per-page scale is chosen, and the attention kernel adds q . mean back exactly.
// V (per channel d), in one of two encodings (KVValueCodes, a property of the cache):
// kFp8E4M3 (for FP8 and FP16 P.V):
//   scale[d] = bf16(max over j of |v[j][d]| / 448)   (0 when all are 0; rounded to nearest-even
//              bf16, the cache stores it in 2 bytes: the channel's maximum may then be up to 2^-8
//              past 448 and saturates to 448)
//   code     = fp8_e4m3_satfinite(v[j][d] / scale[d])   (+0 when scale[d] == 0)
//   so v ~= fp8_value(code) * scale[d].
// kInt8 (for INT8 P.V):
//   scale[d] = bf16(max over j of |v[j][d]| / 127)   (0 when all are 0)
//   code     = clamp(round_half_away(v[j][d] / scale[d]), -127, 127)  (stored as its byte)
//   so v ~= code * scale[d]. Same bytes as FP8, but 7 bits of uniform precision across the
//   channel's range instead of 3 mantissa bits: on passkey-4k the V rounding alone costs 18x less
//   mean KL divergence (BENCHMARKS.md, bench/numerics/sage_emulation.py).
// Rows j >= n are not read and their codes are set to 0, so a partly filled page quantizes only
// its valid tokens and stale slots never matter.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/fp8.h"

namespace sagellm {

enum class KVValueCodes { kFp8E4M3, kInt8 };

std::string_view kv_value_codes_name(KVValueCodes c);

// k: [n][head_dim] contiguous; codes: [page_size][head_dim]; mean: [head_dim].
void quantize_k_page(const float* k, int n, int page_size, int head_dim, int8_t* codes, float* mean,
                     float* scale);
// v: [n][head_dim] contiguous; codes: [page_size][head_dim]; scale: [head_dim].
void quantize_v_page(const float* v, int n, int page_size, int head_dim, uint8_t* codes,
                     float* scale, KVValueCodes encoding = KVValueCodes::kFp8E4M3);

// The value a stored V code stands for, before its channel scale (inline: attention reads every
// code of a page through it).
inline float v_code_value(uint8_t code, KVValueCodes encoding) {
  return encoding == KVValueCodes::kInt8 ? static_cast<float>(static_cast<int8_t>(code))
                                         : fp8_e4m3_to_float(code);
}

}  // namespace sagellm
