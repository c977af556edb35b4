// Rotary position embedding in Hugging Face's rotate-half layout, with linear and llama3 scaling.
#pragma once

#include <cstdint>
#include <vector>

#include "io/model_config.h"

namespace sagellm {

// Inverse frequencies, computed in float32 exactly as transformers computes them (pow, division
// and the llama3 wavelength blend all in fp32), so positions far out (8K+) match the reference.
std::vector<float> rope_inv_freq(const io::RopeConfig& rope, int head_dim);

class Rope {
 public:
  Rope(const io::RopeConfig& rope, int head_dim);
  int head_dim() const { return head_dim_; }
  // cos/sin of angle fp32(inv_freq[i] * pos) for i < head_dim/2, written to cs[0..half) (cos)
  // and cs[half..head_dim) (sin).
  void angles(int64_t pos, float* cs) const;
  // Rotates `n_heads` heads of x ([n_heads][head_dim]) in place with the table from angles().
  void apply(float* x, int n_heads, const float* cs) const;

 private:
  int head_dim_;
  std::vector<float> inv_freq_;
};

}  // namespace sagellm
