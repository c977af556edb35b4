// Engine::forward_sample on the CPU runner, and the scheduler that uses it: the ids are exactly
// forward's logits drawn by sample_with_uniform, and seeded requests give Engine::generate's
// tokens whether their steps draw in forward_sample or, for logprobs, with Sampler::sample.
#include <gtest/gtest.h>

#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "common/sampling_cases.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/sampling.h"
#include "engine/scheduler.h"

namespace sagellm {
namespace {

EngineOptions stories() {
  EngineOptions o;
  o.model_dir = testing::model_dir("stories260K");
  o.page_size = 16;
  return o;
}

TEST(ForwardSample, CpuRunnerDrawsForwardsLogitsWithTheGivenUniforms) {
  Engine engine(stories());
  const int vocab = engine.config().vocab_size;
  std::mt19937_64 rng(3);
  for (const LogitsMode mode : {LogitsMode::kLastPerSeq, LogitsMode::kAll}) {
    ForwardBatch batch;
    batch.logits_mode = mode;
    std::vector<std::vector<int>> pages(3);
    for (size_t i = 0; i < pages.size(); ++i) {
      const int len = 3 + static_cast<int>(rng() % 30);
      for (int p = 0; p * engine.page_size() < len; ++p)
        pages[i].push_back(*engine.allocate_page());
      batch.attention.seqs.push_back(
          AttentionSeq{static_cast<int>(batch.tokens.size()), len, len, pages[i]});
      batch.tokens.push_back(1);
      while (static_cast<int>(batch.tokens.size()) < batch.attention.seqs.back().q_start + len) {
        batch.tokens.push_back(static_cast<int32_t>(3 + rng() % 500));
      }
    }
    const size_t rows =
        mode == LogitsMode::kAll ? batch.tokens.size() : batch.attention.seqs.size();
    std::vector<sampling::DrawParams> draws;
    for (size_t k = 0; k < rows; ++k) draws.push_back(testing::random_draw(rng, vocab));

    // The step writes the same K/V again, so both calls see the same logits.
    const std::vector<float> logits = engine.forward(batch);
    const std::vector<int32_t> ids = engine.forward_sample(batch, draws);
    ASSERT_EQ(ids.size(), rows);
    SamplingScratch scratch;
    for (size_t k = 0; k < rows; ++k) {
      const std::span<const float> row(logits.data() + k * vocab, static_cast<size_t>(vocab));
      EXPECT_EQ(ids[k], sample_with_uniform(row, draws[k], scratch)) << "row " << k;
      EXPECT_GE(ids[k], 0);
    }
    draws.pop_back();
    EXPECT_THROW(engine.forward_sample(batch, draws), Error);
    for (const std::vector<int>& p : pages) {
      for (int page : p) engine.release_page(page);
    }
  }
}

struct Collected {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprobs> logprobs;
  bool finished = false;
};

RequestSpec spec_for(std::vector<int32_t> prompt, SamplingParams sp, Collected& out,
                     int top_logprobs) {
  RequestSpec s;
  s.prompt = std::move(prompt);
  s.sampling = std::move(sp);
  s.top_logprobs = top_logprobs;
  s.on_output = [&out](const RequestOutput& o) {
    out.tokens.insert(out.tokens.end(), o.tokens.begin(), o.tokens.end());
    out.logprobs.insert(out.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
    out.finished = out.finished || o.finished;
  };
  return s;
}

// Steps in which a request wants logprobs sample with Sampler::sample from the logits; the others
// draw in Engine::forward_sample. Each request's Sampler supplies its uniforms either way, so
// every request gets the tokens Engine::generate gives it alone.
TEST(ForwardSample, SchedulerWithAndWithoutLogprobsMatchesGenerate) {
  Engine engine(stories());
  std::mt19937 rng(5);
  struct Case {
    float temperature;
    int top_k;
    float top_p;
    float min_p;
    int top_logprobs;
  };
  const Case cases[] = {{0.9f, 0, 1.0f, 0.0f, -1}, {1.2f, 20, 1.0f, 0.0f, 2},
                        {0.7f, 0, 0.9f, 0.0f, -1}, {1.0f, 0, 1.0f, 0.05f, 0},
                        {0.0f, 0, 1.0f, 0.0f, -1}, {1.5f, 50, 0.95f, 0.02f, -1},
                        {1.1f, 0, 0.8f, 0.0f, -1}};
  std::vector<std::vector<int32_t>> prompts;
  std::vector<SamplingParams> params;
  std::vector<GenerationResult> want;
  for (size_t i = 0; i < std::size(cases); ++i) {
    std::vector<int32_t> p{1};
    const int len = 4 + static_cast<int>(rng() % 40);
    while (static_cast<int>(p.size()) < len) p.push_back(static_cast<int32_t>(3 + rng() % 509));
    SamplingParams s;
    s.temperature = cases[i].temperature;
    s.top_k = cases[i].top_k;
    s.top_p = cases[i].top_p;
    s.min_p = cases[i].min_p;
    s.seed = 100 + i;
    s.max_tokens = 12 + static_cast<int>(rng() % 20);
    s.ignore_eos = true;
    want.push_back(engine.generate({GenerationRequest{p, s}}).at(0));
    prompts.push_back(std::move(p));
    params.push_back(std::move(s));
  }
  SchedulerOptions so;
  so.chunked_prefill_size = 11;  // prompts take several steps, beside decoding requests
  Scheduler sched(engine, so);
  std::vector<Collected> got(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    sched.submit(spec_for(prompts[i], params[i], got[i], cases[i].top_logprobs));
    for (int s = 0; s < 3; ++s) sched.step();
  }
  sched.run_until_idle();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(got[i].finished) << "request " << i;
    EXPECT_EQ(got[i].tokens, want[i].tokens) << "request " << i;
    if (cases[i].top_logprobs >= 0) {
      ASSERT_EQ(got[i].logprobs.size(), got[i].tokens.size());
      for (size_t t = 0; t < got[i].tokens.size(); ++t) {
        EXPECT_EQ(got[i].logprobs[t].chosen.id, got[i].tokens[t]);
      }
    } else {
      EXPECT_TRUE(got[i].logprobs.empty());
    }
  }
}

}  // namespace
}  // namespace sagellm
