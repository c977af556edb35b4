// Shared helpers of the GPU kernel tests: skipping without a GPU, seeded bf16 data, and error
// statistics against per-element bounds derived from the number formats.
//
// Tolerances. A kernel reads bf16 inputs (exact in fp32), computes in fp32 and rounds to bf16
// once. Its CPU twin computes the same formula in fp32 on the same values. So, per element,
//   |gpu - ref| <= e32 + 2^-8 * (|ref| + e32) + 2^-134
// where e32 bounds the difference between the two fp32 evaluations (reordered sums, library
// exp/sin/cos accurate to a few ulp: derived per kernel in its test), 2^-8 is the largest
// relative error of rounding to nearest bf16 (8 significant bits), and 2^-134 half the smallest
// bf16 subnormal step. This is at most about one bf16 ulp: a wrong formula, index or rounding
// mode breaks it by orders of magnitude.
#pragma once

#include <cuda_bf16.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "core/cuda_device.h"
#include "core/device_buffer.h"
#include "core/dtype.h"
#include "core/error.h"

namespace sagellm::testing {

using bf16 = __nv_bfloat16;
static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16>);

constexpr double kBf16RoundingError = 1.0 / 256.0;                // 2^-8
constexpr double kF32Unit = 1.0 / 16777216.0;                     // 2^-24
constexpr double kBf16SubnormalHalfStep = 4.484155085839415e-41;  // 2^-134

// Tests that need a device derive from this; without one they are skipped, not failed.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU";
  }
};

inline bf16 to_bf16(float f) { return std::bit_cast<bf16>(float_to_bf16(f)); }
inline float to_float(bf16 b) { return bf16_to_float(std::bit_cast<uint16_t>(b)); }
inline uint16_t bits_of(bf16 b) { return std::bit_cast<uint16_t>(b); }

// Seeded normal(mean, stddev) values, rounded to bf16 (so they are exactly representable in
// both formats); an exact zero is redrawn so no input is ever zero.
inline std::vector<float> random_bf16_values(size_t n, uint64_t seed, float stddev = 1.0f,
                                             float mean = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) {
    do {
      x = round_to_bf16(dist(rng));
    } while (x == 0.0f);
  }
  return v;
}

inline std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  std::transform(v.begin(), v.end(), out.begin(), [](float f) { return to_bf16(f); });
  return out;
}

inline std::vector<float> to_float(const std::vector<bf16>& v) {
  std::vector<float> out(v.size());
  std::transform(v.begin(), v.end(), out.begin(), [](bf16 b) { return to_float(b); });
  return out;
}

template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& host) {
  return DeviceBuffer<T>::from_host(host);
}

template <typename T>
std::vector<T> download(const DeviceBuffer<T>& buf) {
  SAGELLM_CUDA_CHECK(cudaDeviceSynchronize());
  return buf.to_host();
}

// The per-element bound of the header comment, for an fp32 disagreement e32.
inline double bf16_output_bound(double ref, double e32) {
  return e32 + kBf16RoundingError * (std::fabs(ref) + e32) + kBf16SubnormalHalfStep;
}

struct ErrorStats {
  size_t n = 0;
  size_t over_bound = 0;  // elements whose error exceeds their bound
  size_t worst = 0;       // index of the largest error / bound
  double max_abs = 0.0;
  double max_rel = 0.0;      // |got - ref| / |ref| over elements with ref != 0
  double worst_ratio = 0.0;  // largest |got - ref| / bound
};

inline ErrorStats compare(const std::vector<float>& got, const std::vector<double>& ref,
                          const std::vector<double>& bound) {
  ErrorStats s;
  s.n = got.size();
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!(err <= bound[i])) ++s.over_bound;  // NaN counts as over
    s.max_abs = std::max(s.max_abs, err);
    if (ref[i] != 0.0) s.max_rel = std::max(s.max_rel, err / std::fabs(ref[i]));
    const double ratio = std::isnan(err) ? INFINITY : err / bound[i];
    if (ratio > s.worst_ratio) {
      s.worst_ratio = ratio;
      s.worst = i;
    }
  }
  return s;
}

// Prints the statistics (visible in the test log) and fails the test if any bound is broken.
inline void expect_within_bounds(const std::string& what, const ErrorStats& s,
                                 const std::vector<float>& got, const std::vector<double>& ref) {
  std::printf("[   error  ] %s: n=%zu max abs %.3g, max rel %.3g, worst error/bound %.3g\n",
              what.c_str(), s.n, s.max_abs, s.max_rel, s.worst_ratio);
  ::testing::Test::RecordProperty(what + ".max_abs", fmt::format("{:.3g}", s.max_abs));
  ::testing::Test::RecordProperty(what + ".max_rel", fmt::format("{:.3g}", s.max_rel));
  EXPECT_EQ(s.over_bound, 0u) << what << ": " << s.over_bound << " of " << s.n
                              << " elements exceed their bound; worst at " << s.worst << ": got "
                              << (s.n ? got[s.worst] : 0.0f) << ", want "
                              << (s.n ? ref[s.worst] : 0.0);
}

// Runs `fn` and checks that it throws sagellm::Error whose message contains every `parts`.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected sagellm::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) {
      EXPECT_NE(msg.find(p), std::string::npos) << "message '" << msg << "' lacks '" << p << "'";
    }
  }
}

}  // namespace sagellm::testing
