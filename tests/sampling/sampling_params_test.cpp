// SamplingParams::validate: every invalid field is rejected with a message that names it.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "core/error.h"
#include "engine/sampling.h"

namespace sagellm {
namespace {

// Returns the validation message, or "" when the parameters are accepted.
std::string validation_error(const SamplingParams& p) {
  try {
    p.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SamplingParamsTest, DefaultsAndEdgeValuesAreValid) {
  SamplingParams p;
  EXPECT_EQ(validation_error(p), "");
  p.temperature = 0.0f;
  p.top_k = -1;
  p.top_p = 1.0f;
  p.min_p = 1.0f;
  p.max_tokens = 0;
  EXPECT_EQ(validation_error(p), "");
  p.top_k = 0;
  p.top_p = 1e-6f;
  p.min_p = 0.0f;
  p.stop = {"a", "\n\n"};
  p.stop_token_ids = {0, 2};
  EXPECT_EQ(validation_error(p), "");
}

TEST(SamplingParamsTest, RejectsNegativeTemperature) {
  SamplingParams p;
  p.temperature = -1.0f;
  EXPECT_EQ(validation_error(p), "temperature must be >= 0 (got -1)");
}

TEST(SamplingParamsTest, RejectsNonFiniteTemperature) {
  SamplingParams p;
  p.temperature = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NE(validation_error(p).find("temperature must be a finite number"), std::string::npos);
  p.temperature = std::numeric_limits<float>::infinity();
  EXPECT_EQ(validation_error(p), "temperature must be a finite number (got inf)");
}

TEST(SamplingParamsTest, RejectsTopPOutsideHalfOpenUnitInterval) {
  SamplingParams p;
  for (float bad : {0.0f, -0.5f, 1.5f, std::numeric_limits<float>::quiet_NaN()}) {
    p.top_p = bad;
    const std::string msg = validation_error(p);
    EXPECT_EQ(msg.rfind("top_p must be in (0, 1] (got ", 0), 0u) << msg;
  }
  p.top_p = 0.0f;
  EXPECT_EQ(validation_error(p), "top_p must be in (0, 1] (got 0)");
}

TEST(SamplingParamsTest, RejectsMinPOutsideUnitInterval) {
  SamplingParams p;
  p.min_p = -0.1f;
  EXPECT_EQ(validation_error(p), "min_p must be in [0, 1] (got -0.1)");
  p.min_p = 2.0f;
  EXPECT_EQ(validation_error(p), "min_p must be in [0, 1] (got 2)");
  p.min_p = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(validation_error(p).rfind("min_p must be in [0, 1]", 0), 0u);
}

TEST(SamplingParamsTest, RejectsNegativeMaxTokens) {
  SamplingParams p;
  p.max_tokens = -1;
  EXPECT_EQ(validation_error(p), "max_tokens must be >= 0 (got -1)");
}

TEST(SamplingParamsTest, RejectsTopKBelowMinusOne) {
  SamplingParams p;
  p.top_k = -2;
  EXPECT_EQ(validation_error(p), "top_k must be -1 (disabled) or >= 0 (got -2)");
}

TEST(SamplingParamsTest, RejectsEmptyStopString) {
  SamplingParams p;
  p.stop = {"ok", ""};
  EXPECT_EQ(validation_error(p), "stop[1] must be a non-empty string");
}

TEST(SamplingParamsTest, RejectsNegativeStopTokenId) {
  SamplingParams p;
  p.stop_token_ids = {5, -3};
  EXPECT_EQ(validation_error(p), "stop_token_ids[1] must be >= 0 (got -3)");
}

TEST(SamplingParamsTest, SamplerConstructorValidates) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_THROW(Sampler{p}, Error);
}

}  // namespace
}  // namespace sagellm
