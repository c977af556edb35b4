#include "model/rope.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace sagellm {

std::vector<float> rope_inv_freq(const io::RopeConfig& rope, int head_dim) {
  SAGELLM_CHECK(head_dim > 0 && head_dim % 2 == 0, "rotary head_dim must be even (got {})",
                head_dim);
  const int half = head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  const float base = static_cast<float>(rope.theta);
  for (int i = 0; i < half; ++i) {
    // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), in float32.
    const float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float p =
        static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(expo)));
    inv[static_cast<size_t>(i)] = 1.0f / p;
  }
  if (rope.type == "linear") {
    for (float& f : inv) f = f / static_cast<float>(rope.factor);
  } else if (rope.type == "llama3") {
    const float factor = static_cast<float>(rope.factor);
    const float lo = static_cast<float>(rope.low_freq_factor);
    const float hi = static_cast<float>(rope.high_freq_factor);
    const float old_ctx = static_cast<float>(rope.original_max_position_embeddings);
    const float low_freq_wavelen = old_ctx / lo;
    const float high_freq_wavelen = old_ctx / hi;
    for (float& f : inv) {
      const float wavelen = 2.0f * std::numbers::pi_v<float> / f;
      float scaled = wavelen > low_freq_wavelen ? f / factor : f;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      if (medium) {
        const float smooth = (old_ctx / wavelen - lo) / (hi - lo);
        scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
      }
      f = scaled;
    }
  } else if (rope.type != "default") {
    fail("unsupported rope type '{}'", rope.type);
  }
  return inv;
}

Rope::Rope(const io::RopeConfig& rope, int head_dim)
    : head_dim_(head_dim), inv_freq_(rope_inv_freq(rope, head_dim)) {}

void Rope::angles(int64_t pos, float* cs) const {
  const int half = head_dim_ / 2;
  const float p = static_cast<float>(pos);
  for (int i = 0; i < half; ++i) {
    const float a = inv_freq_[static_cast<size_t>(i)] * p;  // rounded to fp32 like the reference
    cs[i] = static_cast<float>(std::cos(static_cast<double>(a)));
    cs[half + i] = static_cast<float>(std::sin(static_cast<double>(a)));
  }
}

void Rope::apply(float* x, int n_heads, const float* cs) const {
  const int half = head_dim_ / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + static_cast<size_t>(h) * head_dim_;
    for (int i = 0; i < half; ++i) {
      const float x1 = v[i];
      const float x2 = v[half + i];
      const float c = cs[i];
      const float s = cs[half + i];
      v[i] = x1 * c + (-x2) * s;
      v[half + i] = x2 * c + x1 * s;
    }
  }
}

}  // namespace sagellm
