#include "kv_cache/page_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/fp8.h"
#include "core/int8_quant.h"

namespace sagellm {

void quantize_k_page(const float* k, int n, int page_size, int head_dim, int8_t* codes, float* mean,
                     float* scale) {
  std::fill(mean, mean + head_dim, 0.0f);
  for (int j = 0; j < n; ++j) {
    for (int d = 0; d < head_dim; ++d) mean[d] += k[j * head_dim + d];
  }
  const float count = static_cast<float>(std::max(n, 1));
  for (int d = 0; d < head_dim; ++d) mean[d] /= count;

  float max_abs = 0.0f;
  for (int j = 0; j < n; ++j) {
    for (int d = 0; d < head_dim; ++d) {
      max_abs = std::max(max_abs, std::fabs(k[j * head_dim + d] - mean[d]));
    }
  }
  const float s = int8_scale_for(max_abs);
  *scale = s;
  for (int j = 0; j < n; ++j) {
    for (int d = 0; d < head_dim; ++d) {
      codes[j * head_dim + d] = quantize_int8(k[j * head_dim + d] - mean[d], s);
    }
  }
  std::memset(codes + static_cast<size_t>(n) * head_dim, 0,
              static_cast<size_t>(page_size - n) * head_dim);
}

std::string_view kv_value_codes_name(KVValueCodes c) {
  return c == KVValueCodes::kInt8 ? "int8" : "fp8_e4m3";
}

void quantize_v_page(const float* v, int n, int page_size, int head_dim, uint8_t* codes,
                     float* scale, KVValueCodes encoding) {
  const bool int8 = encoding == KVValueCodes::kInt8;
  const float code_max = int8 ? kInt8Max : kFp8E4M3Max;
  for (int d = 0; d < head_dim; ++d) {
    float max_abs = 0.0f;
    for (int j = 0; j < n; ++j) max_abs = std::max(max_abs, std::fabs(v[j * head_dim + d]));
    scale[d] = round_to_bf16(max_abs / code_max);
  }
  for (int j = 0; j < n; ++j) {
    for (int d = 0; d < head_dim; ++d) {
      const float x = v[j * head_dim + d];
      if (int8) {
        codes[j * head_dim + d] = static_cast<uint8_t>(quantize_int8(x, scale[d]));
      } else {
        codes[j * head_dim + d] = scale[d] > 0.0f ? float_to_fp8_e4m3(x / scale[d]) : uint8_t{0};
      }
    }
  }
  std::memset(codes + static_cast<size_t>(n) * head_dim, 0,
              static_cast<size_t>(page_size - n) * head_dim);
}

}  // namespace sagellm
