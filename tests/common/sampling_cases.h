// Seeded sampling cases shared by the CPU tests of the GPU sampling definition
// (tests/sampling/sampling_select_test.cpp) and the GPU kernel test
// (tests/gpu_kernels/sampling_test.cpp): logits rows of several shapes and random draw
// parameters, with every filter sometimes off and the edges (top_k above the vocabulary, tiny
// top_p, min_p 1, u = 0) included.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "kernels/cuda/sampling_select.h"

namespace sagellm::testing {

enum class LogitsKind {
  kNormal,     // normal, random scale
  kPeaked,     // a few tokens far above the rest
  kTies,       // values from a small set, both zeros among them: many exact ties
  kPosInf,     // some +inf (they take all the mass), some NaN and -inf
  kMasked,     // most logits -inf or NaN
  kAllMasked,  // nothing can be drawn
  kKinds,
};

inline const char* kind_name(LogitsKind k) {
  switch (k) {
    case LogitsKind::kNormal:
      return "normal";
    case LogitsKind::kPeaked:
      return "peaked";
    case LogitsKind::kTies:
      return "ties";
    case LogitsKind::kPosInf:
      return "+inf";
    case LogitsKind::kMasked:
      return "masked";
    case LogitsKind::kAllMasked:
      return "all-masked";
    case LogitsKind::kKinds:
      break;
  }
  return "?";
}

inline double uniform_real(std::mt19937_64& rng, double lo, double hi) {
  return lo + (hi - lo) * static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

inline int uniform_int(std::mt19937_64& rng, int lo, int hi) {  // [lo, hi]
  return lo + static_cast<int>(rng() % static_cast<uint64_t>(hi - lo + 1));
}

inline std::vector<float> sampling_row(LogitsKind kind, int vocab, std::mt19937_64& rng) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> row(static_cast<size_t>(vocab));
  std::normal_distribution<float> normal(0.0f, static_cast<float>(uniform_real(rng, 0.5, 4.0)));
  for (float& v : row) v = normal(rng);
  auto some = [&](int n, float value) {
    for (int i = 0; i < n; ++i) row[rng() % row.size()] = value;
  };
  switch (kind) {
    case LogitsKind::kNormal:
      break;
    case LogitsKind::kPeaked:
      for (int i = uniform_int(rng, 1, 3); i > 0; --i) {
        row[rng() % row.size()] = static_cast<float>(uniform_real(rng, 12.0, 40.0));
      }
      break;
    case LogitsKind::kTies: {
      const float values[] = {-3.0f, -1.0f, -0.0f, 0.0f, 0.5f, 2.0f, 2.0f, 4.25f};
      for (float& v : row) v = values[rng() % 8];
      break;
    }
    case LogitsKind::kPosInf:
      some(uniform_int(rng, 1, 3), kInf);
      some(vocab / 8, kNaN);
      some(vocab / 8, -kInf);
      break;
    case LogitsKind::kMasked:
      for (float& v : row) {
        if (rng() % 8 != 0) v = rng() % 2 ? -kInf : kNaN;
      }
      row[rng() % row.size()] = normal(rng);  // at least one finite logit
      break;
    case LogitsKind::kAllMasked:
      for (float& v : row) v = rng() % 3 ? -kInf : kNaN;
      break;
    case LogitsKind::kKinds:
      break;
  }
  return row;
}

inline sampling::DrawParams random_draw(std::mt19937_64& rng, int vocab) {
  sampling::DrawParams d;
  const int t = uniform_int(rng, 0, 99);
  bool huge_temperature = false;
  if (t < 15) {
    d.temperature = 0.0f;
  } else if (t < 20) {
    d.temperature = static_cast<float>(std::exp(uniform_real(rng, std::log(1e-4), std::log(1e-2))));
  } else if (t < 23) {
    d.temperature = static_cast<float>(std::exp(uniform_real(rng, std::log(1e3), std::log(1e30))));
    huge_temperature = true;
  } else {
    d.temperature = static_cast<float>(uniform_real(rng, 0.2, 2.0));
  }
  const int k = uniform_int(rng, 0, 99);
  if (k < 30) {
    d.top_k = 0;
  } else if (k < 40) {
    d.top_k = -1;
  } else if (k < 50) {
    d.top_k = 1;
  } else if (k < 60) {
    d.top_k = vocab + uniform_int(rng, 0, 100);
  } else {
    d.top_k = uniform_int(rng, 1, std::min(vocab, 3000));
  }
  const int p = uniform_int(rng, 0, 99);
  if (p < 35) {
    d.top_p = 1.0f;
  } else if (p < 45) {
    d.top_p = 1e-6f;
  } else {
    d.top_p = static_cast<float>(uniform_real(rng, 0.05, 1.0));
  }
  const int m = uniform_int(rng, 0, 99);
  if (m < 40) {
    d.min_p = 0.0f;
  } else if (m < 50 && !huge_temperature) {
    // With a huge temperature every weight is within an ulp or two of 1, where the host's and the
    // device's exp may round differently; min_p 1 would then depend on that last bit.
    d.min_p = 1.0f;
  } else {
    d.min_p = static_cast<float>(uniform_real(rng, 0.0, 0.5));
  }
  // Not u just below 1: the far tail of a distribution is made of tokens whose boundaries are all
  // within rounding distance of the total, where the CPU's double sums and the GPU's exact ones
  // may pick different tail tokens (sampling_select.h).
  d.uniform = uniform_int(rng, 0, 99) < 3 ? 0.0 : static_cast<double>(rng() >> 11) * 0x1.0p-53;
  return d;
}

// Whether two samplers that drew different tokens `a` and `b` from `row` with the same parameters
// and uniform are both within rounding distance of the draw's boundary, so that neither is wrong:
// the tokens kept after the filters are rebuilt with the GPU definition's exact fixed-point masses
// (sampling_select.h), and every running mass at a boundary between a and b in rank order must lie
// within the rounding bound of the exact target u * total. The bound: the CPU's sequential double
// sums of n weights (its total, its running masses) and its product u * total are each off by at
// most (n + 1) * 2^-53 of the total, a device exp by an ulp per weight, and truncation to fixed
// point by n units of 2^-63; (n + 2) * 2^-51 of the total covers all of them with room to spare.
// A draw this close to a boundary happens by chance with probability about n * 1e-11 (or by
// construction, e.g. u = 0.999 with a total of exactly 40000, where u * total rounds in double to
// the partial sum 39960 while the exact product is 3.6e-14 below it).
inline bool draw_within_rounding(std::span<const float> row, const sampling::DrawParams& d,
                                 int32_t a, int32_t b) {
  using sampling::u128;
  if (a < 0 || b < 0 || !(d.temperature > 0.0f) || !(d.uniform > 0.0 && d.uniform < 1.0)) {
    return false;
  }
  bool inf_mode = false;
  for (float v : row) inf_mode = inf_mode || v == std::numeric_limits<float>::infinity();
  std::vector<std::pair<uint64_t, int32_t>> kept;  // rank key, id
  for (size_t i = 0; i < row.size(); ++i) {
    float value;
    if (sampling::candidate(row[i], inf_mode, value)) {
      kept.emplace_back(sampling::rank_key(value, static_cast<int32_t>(i)),
                        static_cast<int32_t>(i));
    }
  }
  if (kept.empty()) return false;
  std::sort(kept.begin(), kept.end(),
            [](const auto& x, const auto& y) { return x.first > y.first; });
  if (d.top_k > 0 && static_cast<size_t>(d.top_k) < kept.size()) kept.resize(d.top_k);
  const double top = sampling::key_value(kept.front().first);
  auto weight = [&](uint64_t key) {
    return sampling::weight(sampling::key_value(key), top, d.temperature);
  };
  auto total_of = [&] {
    u128 t = 0;
    for (const auto& k : kept) t += sampling::fixed_mass(weight(k.first));
    return t;
  };
  if (d.top_p < 1.0f) {
    const u128 need = sampling::top_p_need(total_of(), d.top_p);
    u128 running = 0;
    for (size_t i = 0; i < kept.size(); ++i) {
      running += sampling::fixed_mass(weight(kept[i].first));
      if (running >= need) {
        kept.resize(i + 1);
        break;
      }
    }
  }
  if (d.min_p > 0.0f) {
    const double min_p = d.min_p < 1.0f ? d.min_p : 1.0;
    std::erase_if(kept, [&](const auto& k) { return !(weight(k.first) >= min_p); });
  }
  const u128 total = total_of();
  const u128 target = sampling::draw_need(total, d.uniform) - 1;  // floor(u * total)
  const u128 n = kept.size();
  const u128 bound = (total >> 51) * (n + 2) + n + 1;
  size_t pa = kept.size(), pb = kept.size();
  for (size_t i = 0; i < kept.size(); ++i) {
    if (kept[i].second == a) pa = i;
    if (kept[i].second == b) pb = i;
  }
  if (pa == kept.size() || pb == kept.size()) return false;
  const size_t lo = std::min(pa, pb), hi = std::max(pa, pb);
  u128 running = 0;
  for (size_t i = 0; i < hi; ++i) {
    running += sampling::fixed_mass(weight(kept[i].first));
    // The running mass through token i is the boundary between tokens i and i + 1.
    if (i >= lo && (running > target ? running - target : target - running) > bound) return false;
  }
  return true;
}

}  // namespace sagellm::testing
