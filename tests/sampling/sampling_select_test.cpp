// The GPU sampler's definition (kernels/cuda/sampling_select.h) run on the host: its integer
// pieces against independent oracles, its radix selection against a full sort, and its whole row
// algorithm (the kernel's control flow, with a sequential Ops in place of the CTA) against the CPU
// sampler.
#include "kernels/cuda/sampling_select.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "common/sampling_cases.h"
#include "core/error.h"
#include "engine/sampling.h"

namespace sagellm {
namespace {

using sampling::u128;
constexpr float kInf = std::numeric_limits<float>::infinity();

// Ops for sampling::sample_row over one host row, built the way the kernel builds them: one
// histogram per pass, and the bucket scan split into 32 lanes of 8 buckets.
class HostRowOps {
 public:
  explicit HostRowOps(std::span<const float> row) : row_(row) {}

  sampling::RowStats stats() const {
    sampling::RowStats s;
    for (size_t i = 0; i < row_.size(); ++i) sampling::observe(s, row_[i], static_cast<int>(i));
    return s;
  }

  void histogram(const sampling::Filter& f, const sampling::KeyPrefix& prefix, int shift,
                 bool mass) {
    measure_.fill(0);
    count_.fill(0);
    max_key_.fill(0);
    for (size_t i = 0; i < row_.size(); ++i) {
      uint64_t key = 0, m = 0;
      if (!sampling::keep(f, prefix, row_[i], static_cast<int32_t>(i), mass, key, m)) continue;
      const int b = sampling::bucket_of(key, shift);
      measure_[b] += m;
      ++count_[b];
      max_key_[b] = std::max(max_key_[b], key);
    }
    ++passes;
  }

  sampling::Pick pick(const sampling::Target& t, bool first, u128 need) const {
    constexpr int kPerLane = sampling::kBuckets / 32;
    std::array<u128, 32> inclusive{};
    u128 running = 0;
    for (int lane = 0; lane < 32; ++lane) {
      for (int j = lane * kPerLane; j < (lane + 1) * kPerLane; ++j) running += measure_[j];
      inclusive[lane] = running;
    }
    const u128 total = running;
    sampling::Pick p;
    p.need = first ? sampling::target_need(t, total) : need;
    if (!(p.need >= 1 && p.need <= total)) return p;
    for (int lane = 0; lane < 32; ++lane) {
      u128 before = lane == 0 ? 0 : inclusive[lane - 1];
      if (!(before < p.need && p.need <= inclusive[lane])) continue;
      const int begin = lane * kPerLane;
      const int j = sampling::first_reaching([&](int b) { return measure_[b]; }, begin,
                                             begin + kPerLane, p.need, before);
      p.bucket = j;
      p.before = before;
      p.count = count_[j];
      p.max_key = max_key_[j];
    }
    return p;
  }

  int passes = 0;

 private:
  std::span<const float> row_;
  std::array<u128, sampling::kBuckets> measure_{};
  std::array<uint32_t, sampling::kBuckets> count_{};
  std::array<uint64_t, sampling::kBuckets> max_key_{};
};

TEST(SamplingSelect, RankKeyIsLogitDescendingThenIdAscending) {
  std::mt19937_64 rng(1);
  const float specials[] = {0.0f, 1.0f, -1.0f, kInf, -kInf, 1e-45f, -1e-45f, 3.4e38f, -3.4e38f};
  std::vector<std::pair<float, int32_t>> c;
  for (int i = 0; i < 4000; ++i) {
    float v = i < 9 * 8 ? specials[i % 9] : std::normal_distribution<float>(0.0f, 3.0f)(rng);
    if (i % 5 == 0) v = std::round(v);                                   // ties
    c.emplace_back(v + 0.0f, static_cast<int32_t>(rng() % (1u << 24)));  // zeros as +0
  }
  for (size_t a = 0; a < c.size(); ++a) {
    const size_t b = rng() % c.size();
    const auto [va, ia] = c[a];
    const auto [vb, ib] = c[b];
    const bool before = va > vb || (va == vb && ia < ib);
    const uint64_t ka = sampling::rank_key(va, ia), kb = sampling::rank_key(vb, ib);
    if (ia != ib || va != vb)
      EXPECT_EQ(ka > kb, before) << va << "#" << ia << " " << vb << "#" << ib;
    EXPECT_EQ(sampling::key_id(ka), ia);
    EXPECT_EQ(sampling::float_bits(sampling::key_value(ka)), sampling::float_bits(va));
    // The top byte of ~id is all ones for ids below 2^24: no pass needs to look at it.
    EXPECT_EQ((ka >> 24) & 0xFFu, 0xFFu);
  }
  // -0 and +0 are different keys; candidate() makes every zero +0 so that they tie.
  float value = 1.0f;
  EXPECT_TRUE(sampling::candidate(-0.0f, false, value));
  EXPECT_EQ(sampling::float_bits(value), 0u);
}

TEST(SamplingSelect, DrawNeedIsFloorOfUTimesTotalPlusOne) {
  std::mt19937_64 rng(2);
  for (int i = 0; i < 20000; ++i) {
    // Oracle: u = k / 2^53, so floor(u * total) = (k * total) >> 53 when k * total fits 128 bits.
    const int total_bits = 1 + static_cast<int>(rng() % 88);
    const int k_bits = std::min(53, 127 - total_bits);
    u128 total = (static_cast<u128>(rng()) << 64 | rng()) >> (128 - total_bits);
    if (total == 0) total = 1;
    const uint64_t k = rng() >> (64 - k_bits);
    const double u = static_cast<double>(k) * 0x1.0p-53;
    ASSERT_EQ(static_cast<double>(k), std::ldexp(u, 53));  // exact
    const u128 want = ((static_cast<u128>(k) * total) >> 53) + 1;
    ASSERT_TRUE(sampling::draw_need(total, u) == want) << i;
  }
  const u128 big = (static_cast<u128>(1) << 87) + 12345;
  EXPECT_TRUE(sampling::draw_need(big, 0.0) == 1);
  EXPECT_TRUE(sampling::draw_need(7, 1.0 - 0x1.0p-53) == 7);  // floor(7 - tiny) + 1
  EXPECT_TRUE(sampling::draw_need(big, 0.5) == big / 2 + 1);
  EXPECT_TRUE(sampling::draw_need(7, 1.0) == 7);       // clamped
  EXPECT_TRUE(sampling::draw_need(7, -0.5) == 1);      // clamped
  EXPECT_TRUE(sampling::draw_need(7, 4.9e-324) == 1);  // a subnormal u
  EXPECT_TRUE(sampling::draw_need(u128{1} << 87, 0x1.0p-80) == (u128{1} << 7) + 1);
}

TEST(SamplingSelect, TopPNeedIsCeilOfTopPTimesTotal) {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 20000; ++i) {
    const int total_bits = 1 + static_cast<int>(rng() % 88);
    u128 total = (static_cast<u128>(rng()) << 64 | rng()) >> (128 - total_bits);
    if (total == 0) total = 1;
    // p = m / 2^s with m a 24-bit integer and s in [24, 100]: ceil(m * total / 2^s) directly.
    const uint64_t m = (rng() >> 40) | (uint64_t{1} << 23);
    const int s = 24 + static_cast<int>(rng() % 77);
    const float p = std::ldexp(static_cast<float>(m), -s);
    ASSERT_GT(p, 0.0f);
    const u128 product = static_cast<u128>(m) * total;
    u128 want = product >> s;
    if ((product & ((static_cast<u128>(1) << s) - 1)) != 0) ++want;
    if (want == 0) want = 1;
    ASSERT_TRUE(sampling::top_p_need(total, p) == want) << i;
  }
  EXPECT_TRUE(sampling::top_p_need(10, 0.3f) == 4);   // 0.3f is a little above 0.3: 3.0000001
  EXPECT_TRUE(sampling::top_p_need(10, 0.25f) == 3);  // exactly 2.5
  EXPECT_TRUE(sampling::top_p_need(8, 0.25f) == 2);   // exactly 2: inclusive
  EXPECT_TRUE(sampling::top_p_need(1000, 1e-45f) == 1);
  EXPECT_TRUE(sampling::top_p_need(1000, 1.0f) == 1000);
}

TEST(SamplingSelect, MulShiftCoversEveryShift) {
  std::mt19937_64 rng(4);
  for (int s = 0; s < 200; ++s) {
    // x * 2^j / 2^s for a power of two m = 2^j: a plain shift of x.
    const u128 x = (static_cast<u128>(rng() >> 40) << 64) | rng();
    const int j = static_cast<int>(rng() % 64);
    const sampling::Quotient q = sampling::mul_shift(x, uint64_t{1} << j, s);
    const int net = s - j;
    u128 want = 0;
    bool inexact = false;
    if (net <= 0) {
      want = x << -net;
    } else if (net < 128) {
      want = x >> net;
      inexact = (x & ((static_cast<u128>(1) << net) - 1)) != 0;
    } else {
      inexact = x != 0;
    }
    if (net >= -40) {  // the quotient fits
      EXPECT_TRUE(q.q == want) << "s " << s << " j " << j;
      EXPECT_EQ(q.inexact, inexact) << "s " << s << " j " << j;
    }
  }
}

// select_key must find exactly the first token, in a full sort's rank order, at which the running
// count or fixed-point mass of the kept tokens reaches the threshold: integer arithmetic, no
// tolerance.
TEST(SamplingSelect, RadixSelectionMatchesFullSort) {
  std::mt19937_64 rng(5);
  int checked = 0;
  for (int trial = 0; trial < 600; ++trial) {
    const int vocab =
        trial % 7 == 0 ? 1 + static_cast<int>(rng() % 5) : 1 + static_cast<int>(rng() % 3000);
    const auto kind = static_cast<testing::LogitsKind>(trial % 5);  // never all masked
    const std::vector<float> row = testing::sampling_row(kind, vocab, rng);
    HostRowOps ops(row);
    const sampling::RowStats s = ops.stats();
    sampling::Filter f;
    f.inf_mode = s.inf_count > 0;
    const uint64_t top_key = f.inf_mode
                                 ? sampling::rank_key(0.0f, static_cast<int32_t>(s.inf_min_id))
                                 : s.finite_max_key;
    f.top = sampling::key_value(top_key);
    f.temperature = testing::uniform_real(rng, 0.1, 3.0);
    if (trial % 3 == 1) f.min_p = testing::uniform_real(rng, 0.0, 0.3);

    // The kept tokens in rank order, by a full sort.
    struct Kept {
      uint64_t key, mass;
    };
    std::vector<Kept> kept;
    for (int i = 0; i < vocab; ++i) {
      uint64_t key = 0, mass = 0;
      if (sampling::keep(f, {}, row[i], i, true, key, mass)) kept.push_back({key, mass});
    }
    ASSERT_FALSE(kept.empty());
    std::sort(kept.begin(), kept.end(), [](const Kept& a, const Kept& b) { return a.key > b.key; });
    // A lower bound on the key, as top-k or top-p leaves one.
    if (trial % 4 == 2) {
      f.min_key = kept[rng() % kept.size()].key;
      while (kept.back().key < f.min_key) kept.pop_back();
    }
    u128 total = 0;
    for (const Kept& k : kept) total += k.mass;

    sampling::Target t;
    switch (trial % 3) {
      case 0:
        t.kind = sampling::Target::kCount;
        t.k = 1 + static_cast<uint32_t>(rng() % kept.size());
        break;
      case 1:
        t.kind = sampling::Target::kTopP;
        t.top_p = static_cast<float>(testing::uniform_real(rng, 1e-3, 1.0));
        break;
      default:
        t.kind = sampling::Target::kDraw;
        t.u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
        break;
    }
    const bool by_count = t.kind == sampling::Target::kCount;
    const u128 need = sampling::target_need(t, by_count ? kept.size() : total);
    u128 running = 0;
    uint64_t want = 0;
    for (const Kept& k : kept) {
      running += by_count ? 1 : k.mass;
      if (running >= need) {
        want = k.key;
        break;
      }
    }
    bool found = false;
    const uint64_t got = sampling::select_key(ops, f, t, found);
    ASSERT_TRUE(found) << "trial " << trial;
    ASSERT_EQ(got, want) << "trial " << trial << " kind " << kind_name(kind) << " vocab " << vocab
                         << " target " << t.kind;
    ++checked;
  }
  EXPECT_EQ(checked, 600);
}

// The kernel's row algorithm against the CPU sampler, for the same uniforms. They may differ only
// when a uniform lands within ~1e-12 of a boundary (sampling_select.h), which these seeded draws
// do not.
TEST(SamplingSelect, RowAlgorithmMatchesCpuSampler) {
  std::mt19937_64 rng(6);
  const int vocabs[] = {1, 2, 3, 5, 17, 64, 255, 1000, 4099, 32000, 131075};
  SamplingScratch scratch;
  int draws = 0, mismatches = 0, no_token = 0;
  long passes = 0;
  for (int vocab : vocabs) {
    const int rows = vocab > 10000 ? 24 : 300;
    for (int r = 0; r < rows; ++r) {
      const auto kind = static_cast<testing::LogitsKind>(
          r % 16 == 15 ? static_cast<int>(testing::LogitsKind::kAllMasked) : r % 5);
      const std::vector<float> row = testing::sampling_row(kind, vocab, rng);
      const sampling::DrawParams d = testing::random_draw(rng, vocab);
      const int32_t want = sample_with_uniform(row, d, scratch);
      HostRowOps ops(row);
      const int32_t got = sampling::sample_row(ops, d);
      ++draws;
      passes += ops.passes;
      no_token += want < 0 ? 1 : 0;
      if (got != want) {
        ++mismatches;
        ADD_FAILURE() << "vocab " << vocab << " row " << r << " (" << kind_name(kind)
                      << ") T=" << d.temperature << " k=" << d.top_k << " p=" << d.top_p
                      << " min_p=" << d.min_p << " u=" << d.uniform << ": got " << got << " want "
                      << want;
      }
    }
  }
  std::printf("[ sampling ] %d draws, %d mismatches, %d rows without a token, %.2f passes/draw\n",
              draws, mismatches, no_token, static_cast<double>(passes) / draws);
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(no_token, 0);
}

// Rows of 40000 weights of exactly 1 (equal logits, or any logits at T = 1e30) with u = 0.999:
// in double 0.999 * 40000 rounds to 39960, a partial sum, so the CPU's strict crossing takes rank
// 39960, while the exact product is 3.6e-14 below 39960 and the kernel's definition takes rank
// 39959. testing::draw_within_rounding must excuse exactly such pairs and no others.
TEST(SamplingSelect, BoundaryDrawsAreDetectedExactly) {
  const int vocab = 40000;
  std::mt19937_64 rng(9);
  const std::vector<float> normal = testing::sampling_row(testing::LogitsKind::kNormal, vocab, rng);
  const std::vector<float> all_equal(vocab, -2.5f);
  SamplingScratch scratch;
  struct Case {
    const std::vector<float>* row;
    float temperature;
  };
  for (const Case& c : {Case{&all_equal, 1.0f}, Case{&normal, 1e30f}}) {
    const sampling::DrawParams d{c.temperature, 0, 1.0f, 0.0f, 0.999};
    const int32_t cpu = sample_with_uniform(*c.row, d, scratch);
    HostRowOps ops(*c.row);
    const int32_t exact = sampling::sample_row(ops, d);
    EXPECT_NE(cpu, exact) << "T=" << c.temperature;
    EXPECT_TRUE(testing::draw_within_rounding(*c.row, d, exact, cpu)) << "T=" << c.temperature;
    EXPECT_TRUE(testing::draw_within_rounding(*c.row, d, cpu, exact)) << "T=" << c.temperature;
    // A token one further away is two boundaries off, the farther a whole weight (1/40000) away.
    const int32_t other = c.row == &all_equal ? cpu + 1 : exact == 0 ? 1 : 0;
    EXPECT_FALSE(testing::draw_within_rounding(*c.row, d, exact, other)) << "T=" << c.temperature;
  }
  // Ordinary draws of a normal row: a token next to the CPU's is not excused.
  for (double u : {0.1, 0.37, 0.8}) {
    const sampling::DrawParams d{1.0f, 0, 1.0f, 0.0f, u};
    const int32_t cpu = sample_with_uniform(normal, d, scratch);
    HostRowOps ops(normal);
    EXPECT_EQ(sampling::sample_row(ops, d), cpu);
    EXPECT_FALSE(testing::draw_within_rounding(normal, d, cpu, cpu == 0 ? 1 : cpu - 1));
  }
}

// Sampler::next_uniform + sample_with_uniform is Sampler::sample, draw for draw.
TEST(SamplingSelect, NextUniformThenSampleWithUniformIsSample) {
  std::mt19937_64 rng(7);
  const std::vector<float> row = testing::sampling_row(testing::LogitsKind::kNormal, 5000, rng);
  SamplingScratch scratch;
  for (float temperature : {0.0f, 0.7f, 1.3f}) {
    SamplingParams p;
    p.temperature = temperature;
    p.top_k = 200;
    p.top_p = 0.9f;
    p.min_p = 0.01f;
    p.seed = 99;
    Sampler a(p), b(p);
    for (int i = 0; i < 300; ++i) {
      const int32_t want = a.sample(row);
      ASSERT_EQ(sample_with_uniform(row, draw_params(b.params(), b.next_uniform()), scratch), want);
    }
    // Both generators are at the same point.
    EXPECT_EQ(a.next_uniform(), b.next_uniform());
  }
  // Nothing drawable: -1, and the error the sampler raises.
  const std::vector<float> masked = {-kInf, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_EQ(sample_with_uniform(masked, draw_params(SamplingParams{}, 0.5), scratch), -1);
  sampling::DrawParams greedy;
  EXPECT_EQ(sample_with_uniform(masked, greedy, scratch), -1);
  EXPECT_THROW(fail_no_token(0.0f, 2), Error);
  EXPECT_THROW(fail_no_token(1.0f, 2), Error);
}

}  // namespace
}  // namespace sagellm
