// KL divergence and perplexity statistics against closed forms and numpy.
#include "eval/kl_divergence.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/error.h"

namespace sagellm::eval {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> random_logits(size_t vocab, std::mt19937_64& rng, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(vocab);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST(LogSoftmaxTest, NormalizesAndHandlesMaskedTokens) {
  const std::vector<float> logits = {1000.0f, 999.0f, -kInf, 998.0f};  // needs max subtraction
  const std::vector<double> lp = log_softmax(logits);
  const double z = 1.0 + std::exp(-1.0) + std::exp(-2.0);
  EXPECT_NEAR(lp[0], -std::log(z), 1e-14);
  EXPECT_NEAR(lp[1], -1.0 - std::log(z), 1e-14);
  EXPECT_EQ(lp[2], -std::numeric_limits<double>::infinity());
  EXPECT_NEAR(lp[3], -2.0 - std::log(z), 1e-14);
}

TEST(LogSoftmaxTest, RejectsBadLogits) {
  EXPECT_THROW(log_softmax(std::vector<float>{}), Error);
  EXPECT_THROW(log_softmax(std::vector<float>{-kInf, -kInf}), Error);
  EXPECT_THROW(log_softmax(std::vector<float>{0.0f, std::nanf("")}), Error);
  EXPECT_THROW(log_softmax(std::vector<float>{0.0f, kInf}), Error);
}

TEST(CompareTokenTest, IdenticalLogitsGiveExactlyZero) {
  std::mt19937_64 rng(5);
  std::vector<TokenComparison> tokens;
  for (int t = 0; t < 50; ++t) {
    const std::vector<float> logits = random_logits(512, rng, 3.0f);
    const TokenComparison c = compare_token(logits, logits, t % 512);
    EXPECT_EQ(c.kld, 0.0);
    EXPECT_TRUE(c.same_top1);
    EXPECT_EQ(c.delta_p, 0.0);
    EXPECT_EQ(c.nll_base, c.nll_test);
    tokens.push_back(c);
  }
  const KLDSummary s = summarize_kld(tokens);
  EXPECT_EQ(s.n, 50u);
  EXPECT_EQ(s.kld.mean, 0.0);
  EXPECT_EQ(s.kld.max, 0.0);
  EXPECT_EQ(s.same_top1, 1.0);
  EXPECT_EQ(s.same_top1_stderr, 0.0);
  EXPECT_EQ(s.rms_delta_p, 0.0);
  EXPECT_EQ(s.ppl_base, s.ppl_test);
  EXPECT_EQ(s.ln_ppl_ratio, 0.0);
}

// Two tokens: p = sigmoid(x1 - x0) for the second token, KL in closed form.
TEST(CompareTokenTest, TwoTokenKlMatchesClosedForm) {
  const struct {
    float b0, b1, t0, t1;
  } cases[] = {{0.0f, 1.0f, 0.5f, -0.25f}, {2.0f, -3.0f, -1.0f, 4.0f}, {0.0f, 0.0f, 0.0f, 0.1f}};
  for (const auto& c : cases) {
    const double p = 1.0 / (1.0 + std::exp(static_cast<double>(c.b1) - c.b0));  // p(token 0)
    const double q = 1.0 / (1.0 + std::exp(static_cast<double>(c.t1) - c.t0));
    const double want = p * std::log(p / q) + (1 - p) * std::log((1 - p) / (1 - q));
    const TokenComparison r =
        compare_token(std::vector<float>{c.b0, c.b1}, std::vector<float>{c.t0, c.t1}, 1);
    EXPECT_NEAR(r.kld, want, 1e-12);
    EXPECT_NEAR(r.delta_p, (1 - q) - (1 - p), 1e-15);
    EXPECT_NEAR(r.nll_base, -std::log(1 - p), 1e-12);
    EXPECT_NEAR(r.nll_test, -std::log(1 - q), 1e-12);
    EXPECT_EQ(r.same_top1, (p >= 0.5) == (q >= 0.5)) << p << " " << q;
  }
}

TEST(CompareTokenTest, ZeroProbabilityTokens) {
  // base puts no mass on token 1: KL = log(1 / 0.5) from token 0 alone.
  const TokenComparison a =
      compare_token(std::vector<float>{0.0f, -kInf}, std::vector<float>{0.0f, 0.0f}, 0);
  EXPECT_NEAR(a.kld, std::log(2.0), 1e-15);
  // test puts no mass where base does: infinite divergence.
  const TokenComparison b =
      compare_token(std::vector<float>{0.0f, 0.0f}, std::vector<float>{0.0f, -kInf}, 0);
  EXPECT_EQ(b.kld, std::numeric_limits<double>::infinity());
}

TEST(CompareTokenTest, RejectsMismatchedInputs) {
  const std::vector<float> a = {0.0f, 1.0f, 2.0f};
  EXPECT_THROW(compare_token(a, std::vector<float>{0.0f, 1.0f}, 0), Error);
  EXPECT_THROW(compare_token(a, a, 3), Error);
  EXPECT_THROW(compare_token(a, a, -1), Error);
}

TEST(CompareTokenTest, KlIsNonNegativeOnRandomLogits) {
  std::mt19937_64 rng(77);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  for (int t = 0; t < 300; ++t) {
    const std::vector<float> base = random_logits(1000, rng, 4.0f);
    std::vector<float> test = base;
    // From nearly identical (as two attention backends are) to unrelated.
    const float scale = t < 100 ? 1e-5f : (t < 200 ? 0.05f : 3.0f);
    for (float& x : test) x += scale * noise(rng);
    const TokenComparison c = compare_token(base, test, t);
    EXPECT_GE(c.kld, 0.0) << "scale " << scale;
    EXPECT_TRUE(std::isfinite(c.kld));
    if (scale >= 0.05f) {
      EXPECT_GT(c.kld, 0.0);
    }
  }
}

// Nearly identical distributions, as two attention backends produce: the naive sum of
// p (log p - log q) loses digits to cancellation here. The expected value was computed with mpmath
// at 50 digits from the same float32 logits (generated from raw mt19937_64 bits, which the C++
// standard fixes, so the data are identical everywhere).
TEST(CompareTokenTest, NearlyIdenticalDistributionsAreAccurate) {
  std::mt19937_64 rng(8);
  auto uniform = [&] { return static_cast<double>(rng() >> 11) * 0x1.0p-53; };
  std::vector<float> base(4096), test(4096);
  for (float& x : base) x = static_cast<float>(6.0 * uniform() - 3.0);
  for (size_t i = 0; i < base.size(); ++i) {
    test[i] = static_cast<float>(static_cast<double>(base[i]) + 1e-3 * (2.0 * uniform() - 1.0));
  }
  ASSERT_EQ(base[1], 2.5056381f);  // the generated data are the ones the oracle saw
  ASSERT_EQ(test[2], 2.174868f);
  const double want = 1.671937651514710898e-7;
  const TokenComparison c = compare_token(base, test, 0);
  EXPECT_NEAR(c.kld, want, 1e-12 * want);
}

TEST(SummarizeTest, QuantilesInterpolateLinearly) {
  const ValueStats s = summarize({5.0, 1.0, 4.0, 2.0, 3.0});
  EXPECT_DOUBLE_EQ(s.mean, 3.0);
  EXPECT_DOUBLE_EQ(s.stderr_mean, std::sqrt(2.5 / 5.0));  // sample variance 2.5
  EXPECT_DOUBLE_EQ(s.median, 3.0);
  EXPECT_DOUBLE_EQ(s.p01, 1.04);
  EXPECT_DOUBLE_EQ(s.p10, 1.4);
  EXPECT_DOUBLE_EQ(s.p90, 4.6);
  EXPECT_DOUBLE_EQ(s.p999, 4.996);
  EXPECT_EQ(s.min, 1.0);
  EXPECT_EQ(s.max, 5.0);
  const ValueStats one = summarize({7.0});
  EXPECT_EQ(one.mean, 7.0);
  EXPECT_EQ(one.stderr_mean, 0.0);
  EXPECT_EQ(one.p999, 7.0);
  EXPECT_EQ(one.p01, 7.0);
}

TEST(SummarizeTest, EmptyInputGivesZeros) {
  const ValueStats v = summarize({});
  EXPECT_EQ(v.mean, 0.0);
  EXPECT_EQ(v.max, 0.0);
  const KLDSummary k = summarize_kld({});
  EXPECT_EQ(k.n, 0u);
  EXPECT_EQ(k.kld.mean, 0.0);
  EXPECT_EQ(k.ppl_base, 0.0);
  const PerplexityStats p = summarize_nll({});
  EXPECT_EQ(p.n, 0u);
  EXPECT_EQ(p.ppl, 0.0);
  EXPECT_THROW(summarize({1.0, std::nan("")}), Error);
}

TEST(SummarizeNllTest, MatchesNumpy) {
  const std::vector<double> nll = {2.5, 0.25, 1.75, 3.0, 0.5, 1.0, 4.25};
  const PerplexityStats s = summarize_nll(nll);
  // numpy: m = nll.mean(); se = nll.std(ddof=1) / sqrt(n); exp(m); exp(m) * se
  EXPECT_EQ(s.n, 7u);
  EXPECT_NEAR(s.mean_nll, 1.8928571428571428, 1e-15);
  EXPECT_NEAR(s.nll_stderr, 0.54787778566685, 1e-14);
  EXPECT_NEAR(s.ppl, 6.638308206569923, 1e-13);
  EXPECT_NEAR(s.ppl_stderr, 3.6369816007896074, 1e-13);
}

TEST(SummarizeNllTest, UniformLogitsHavePerplexityV) {
  for (int vocab : {2, 512, 128256}) {
    const std::vector<float> logits(static_cast<size_t>(vocab), 3.7f);
    std::vector<TokenComparison> tokens;
    std::vector<double> nll;
    for (int t = 0; t < 5; ++t) {
      tokens.push_back(compare_token(logits, logits, (t * 7919) % vocab));
      nll.push_back(tokens.back().nll_base);
    }
    const double v = vocab;
    EXPECT_NEAR(summarize_nll(nll).ppl, v, 1e-9 * v);
    EXPECT_NEAR(summarize_nll(nll).ppl_stderr, 0.0, 1e-9);
    EXPECT_NEAR(summarize_kld(tokens).ppl_base, v, 1e-9 * v);
    EXPECT_NEAR(summarize_kld(tokens).ppl_test, v, 1e-9 * v);
  }
}

// 12 tokens over a vocabulary of 6; expected values computed with numpy (float64 log-softmax of
// these float32 logits, naive KL sum, np.quantile with its default linear method, std(ddof=1)).
TEST(SummarizeKldTest, MatchesNumpy) {
  const std::vector<float> base = {
      2.058f,  3.284f,  2.293f,  -1.946f, -2.786f, 0.134f,  1.723f,  1.018f,  3.621f,
      1.502f,  1.280f,  -1.463f, -2.215f, 2.969f,  0.098f,  1.623f,  -2.753f, -0.873f,
      -2.582f, -1.551f, 1.806f,  -2.961f, -1.068f, 0.328f,  -1.337f, -0.505f, -0.444f,
      0.836f,  -0.863f, 0.545f,  0.114f,  0.849f,  0.450f,  3.315f,  -1.327f, 2.398f,
      -0.805f, -1.916f, 2.422f,  -0.879f, -0.775f, -2.777f, -4.196f, 1.269f,  -2.331f,
      1.557f,  3.696f,  -0.230f, -2.253f, 0.788f,  1.523f,  -0.524f, 0.035f,  2.671f,
      2.531f,  1.420f,  -1.733f, -0.107f, 1.206f,  -0.424f, -1.220f, -1.531f, -1.264f,
      -1.343f, -0.902f, 2.291f,  -1.601f, 1.774f,  0.835f,  0.279f,  -1.655f, -0.913f};
  const std::vector<float> test = {
      4.426f,  3.403f,  2.939f,  -1.150f, -1.519f, -0.151f, 0.991f,  0.946f,  3.308f,
      2.451f,  1.508f,  -1.176f, -2.041f, 4.443f,  -0.553f, 1.049f,  -1.691f, -1.001f,
      -2.149f, -2.426f, 1.834f,  -2.443f, -2.661f, -0.506f, -0.829f, 2.194f,  0.111f,
      0.765f,  -1.877f, 1.015f,  -2.888f, 0.790f,  0.054f,  2.692f,  1.457f,  -0.570f,
      -0.832f, -1.833f, 2.983f,  -2.801f, -1.335f, -4.572f, -4.349f, 1.504f,  -2.134f,
      1.319f,  3.919f,  -0.017f, -1.767f, 0.818f,  -0.616f, -1.502f, 0.450f,  1.579f,
      1.573f,  1.556f,  -1.788f, 0.966f,  1.820f,  -0.946f, -1.083f, -4.962f, -2.221f,
      -1.520f, -3.767f, 1.904f,  -1.299f, 3.016f,  1.319f,  2.540f,  0.179f,  -2.874f};
  const int32_t actual[12] = {5, 0, 3, 4, 5, 0, 5, 3, 1, 1, 1, 2};
  const double want_kld[12] = {0.4624719330623413,  0.10288939510052639, 0.26607446584410105,
                               0.08202182511779521, 0.5690412928790235,  0.566452363485963,
                               0.07685097938027621, 0.0081900441438587,  0.24486790776187178,
                               0.26404930667351845, 0.10318718442079755, 0.24207158541335955};
  const size_t vocab = 6;
  std::vector<TokenComparison> tokens;
  for (size_t t = 0; t < 12; ++t) {
    tokens.push_back(compare_token(std::span<const float>(base).subspan(t * vocab, vocab),
                                   std::span<const float>(test).subspan(t * vocab, vocab),
                                   actual[t]));
    EXPECT_NEAR(tokens.back().kld, want_kld[t], 1e-14) << "token " << t;
  }
  const KLDSummary s = summarize_kld(tokens);
  const double tol = 1e-13;
  EXPECT_EQ(s.n, 12u);
  EXPECT_NEAR(s.kld.mean, 0.2490140236069527, tol);
  EXPECT_NEAR(s.kld.stderr_mean, 0.055559953236726994, tol);
  EXPECT_NEAR(s.kld.median, 0.24346974658761567, tol);
  EXPECT_NEAR(s.kld.p01, 0.015742747019864625, tol);
  EXPECT_NEAR(s.kld.p05, 0.045953558523888334, tol);
  EXPECT_NEAR(s.kld.p10, 0.07736806395402811, tol);
  EXPECT_NEAR(s.kld.p90, 0.5560543204436008, tol);
  EXPECT_NEAR(s.kld.p95, 0.5676173817128402, tol);
  EXPECT_NEAR(s.kld.p99, 0.5687565106457868, tol);
  EXPECT_NEAR(s.kld.p999, 0.5690128146556999, tol);
  EXPECT_NEAR(s.kld.min, 0.008190044143858698, tol);
  EXPECT_NEAR(s.kld.max, 0.5690412928790235, tol);
  EXPECT_NEAR(s.delta_p.mean, -0.031456196940363904, tol);
  EXPECT_NEAR(s.delta_p.stderr_mean, 0.02328187240014308, tol);
  EXPECT_NEAR(s.delta_p.median, -0.02780519117835291, tol);
  EXPECT_NEAR(s.delta_p.p01, -0.15729202376420376, tol);
  EXPECT_NEAR(s.delta_p.p99, 0.13114795837430754, tol);
  EXPECT_NEAR(s.delta_p.min, -0.16116741270289325, tol);
  EXPECT_NEAR(s.delta_p.max, 0.1398718661549639, tol);
  EXPECT_DOUBLE_EQ(s.same_top1, 0.75);
  EXPECT_NEAR(s.same_top1_stderr, 0.13055824196677338, tol);
  EXPECT_NEAR(s.rms_delta_p, 0.08337861676097141, tol);
  EXPECT_NEAR(s.ppl_base, 15.3977841053899, 1e-11);
  EXPECT_NEAR(s.ppl_test, 47.287221628664966, 1e-11);
  EXPECT_NEAR(s.ln_ppl_ratio, 1.12201649335091, tol);
  EXPECT_NEAR(s.ln_ppl_ratio_stderr, 0.3289189322901614, tol);
}

}  // namespace
}  // namespace sagellm::eval
