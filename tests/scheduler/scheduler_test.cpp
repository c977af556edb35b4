// The continuous-batching scheduler on stories260K, stepped on the test's thread: its outputs
// equal Engine::generate's, whatever joins the batch, however prefill is chunked, whether
// prefixes come from the cache, and when KV pages run out (preemption by recompute).
#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <random>

#include "common/fixtures.h"

namespace sagellm {
namespace {

EngineOptions stories(const std::string& backend = "flash", int page_size = 16,
                      int64_t kv_tokens = 0) {
  EngineOptions o;
  o.model_dir = testing::model_dir("stories260K");
  o.attention_backend = backend;
  o.page_size = page_size;
  o.kv_cache_tokens = kv_tokens;
  return o;
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int len) {
  std::vector<int32_t> p{1};  // BOS
  while (static_cast<int>(p.size()) < len) p.push_back(static_cast<int32_t>(3 + rng() % 509));
  return p;
}

SamplingParams greedy(int max_tokens) {
  SamplingParams s;
  s.temperature = 0.0f;
  s.max_tokens = max_tokens;
  s.ignore_eos = true;
  return s;
}

struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  std::string finish_reason;
  int reports_after_finish = 0;
  int cached_tokens = 0;
  bool finished = false;
};

RequestSpec spec_for(std::vector<int32_t> prompt, SamplingParams sp, Collected& out,
                     int top_logprobs = -1) {
  RequestSpec s;
  s.prompt = std::move(prompt);
  s.sampling = std::move(sp);
  s.top_logprobs = top_logprobs;
  s.on_output = [&out](const RequestOutput& o) {
    if (out.finished) ++out.reports_after_finish;
    out.tokens.insert(out.tokens.end(), o.tokens.begin(), o.tokens.end());
    out.logprobs.insert(out.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
    out.text += o.text;
    if (o.finished) {
      out.finished = true;
      out.finish_reason = o.finish_reason;
      out.cached_tokens = o.cached_tokens;
    }
  };
  return s;
}

// What Engine::generate produces for each request alone.
std::vector<GenerationResult> reference(Engine& engine,
                                        const std::vector<std::vector<int32_t>>& prompts,
                                        const std::vector<SamplingParams>& params) {
  std::vector<GenerationResult> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    out.push_back(engine.generate({GenerationRequest{prompts[i], params[i]}}).at(0));
  }
  return out;
}

TEST(Scheduler, StaggeredArrivalsMatchGenerateAlone) {
  for (const std::string backend : {"flash", "sage_attn"}) {
    Engine engine(stories(backend));
    std::mt19937 rng(1);
    std::vector<std::vector<int32_t>> prompts;
    std::vector<SamplingParams> params;
    for (int i = 0; i < 6; ++i) {
      prompts.push_back(random_prompt(rng, 5 + static_cast<int>(rng() % 60)));
      params.push_back(greedy(10 + static_cast<int>(rng() % 30)));
    }
    params[2].temperature = 0.9f;  // a seeded sampled request among the greedy ones
    params[2].seed = 7;
    const auto want = reference(engine, prompts, params);

    SchedulerOptions so;
    // flash: prompts are prefilled over several steps. sage_attn quantizes Q in blocks of rows, so
    // a prompt chunked differently gets slightly different logits: it is compared unchunked.
    so.chunked_prefill_size = backend == "flash" ? 13 : 2048;
    Scheduler sched(engine, so);
    std::vector<Collected> got(prompts.size());
    // One request joins every few steps, while the earlier ones are mid-generation.
    for (size_t i = 0; i < prompts.size(); ++i) {
      sched.submit(spec_for(prompts[i], params[i], got[i]));
      for (int s = 0; s < 4; ++s) sched.step();
    }
    sched.run_until_idle();
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(got[i].tokens, want[i].tokens) << backend << " request " << i;
      EXPECT_EQ(got[i].text, want[i].text) << backend << " request " << i;
      EXPECT_EQ(got[i].finish_reason, "length");
      EXPECT_EQ(got[i].reports_after_finish, 0);
    }
    const SchedulerStats st = sched.stats();
    EXPECT_EQ(st.running, 0);
    EXPECT_EQ(st.pages_in_use, 0);
    EXPECT_EQ(st.generation_tokens, [&] {
      int64_t n = 0;
      for (const auto& w : want) n += static_cast<int64_t>(w.tokens.size());
      return n;
    }());
  }
}

TEST(Scheduler, PrefixCacheHitsGiveTheSameOutputs) {
  for (const std::string backend : {"flash", "sage_attn"}) {
    Engine engine(stories(backend));
    std::mt19937 rng(2);
    const std::vector<int32_t> shared = random_prompt(rng, 70);  // 4 full pages of 16
    std::vector<std::vector<int32_t>> prompts;
    std::vector<SamplingParams> params;
    for (int i = 0; i < 4; ++i) {
      std::vector<int32_t> p = shared;
      for (int k = 0; k < 5 + i; ++k) p.push_back(static_cast<int32_t>(3 + rng() % 509));
      prompts.push_back(p);
      params.push_back(greedy(20));
    }
    prompts.push_back(shared);  // a prompt that is entirely a cached prefix but its last page
    params.push_back(greedy(20));
    const auto want = reference(engine, prompts, params);

    Scheduler sched(engine, SchedulerOptions{});
    std::vector<Collected> got(prompts.size());
    sched.submit(spec_for(prompts[0], params[0], got[0]));
    sched.run_until_idle();  // its pages stay in the cache
    for (size_t i = 1; i < prompts.size(); ++i)
      sched.submit(spec_for(prompts[i], params[i], got[i]));
    sched.run_until_idle();
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(got[i].tokens, want[i].tokens) << backend << " request " << i;
    }
    EXPECT_EQ(got[0].cached_tokens, 0);
    for (size_t i = 1; i < prompts.size(); ++i) EXPECT_EQ(got[i].cached_tokens, 64) << i;
    const SchedulerStats st = sched.stats();
    EXPECT_EQ(st.cached_prompt_tokens, 64 * 4);
    EXPECT_EQ(st.pages_in_use, 0);
    EXPECT_GT(st.pages_cached, 0);
    EXPECT_EQ(st.pages_free + st.pages_cached, st.pages_total);
  }
}

TEST(Scheduler, RunningOutOfPagesPreemptsAndStillFinishesEverything) {
  // 24 pages of 16 tokens; 10 requests that each need up to 6 pages cannot all run at once.
  // flash recomputes a preempted request exactly; sage_attn's recomputed prefill quantizes Q in
  // other blocks than its decode steps did, so there only the lengths are compared.
  for (const std::string backend : {"flash", "sage_attn"}) {
    Engine engine(stories(backend, 16, 24 * 16));
    ASSERT_EQ(engine.num_pages(), 24);
    std::mt19937 rng(3);
    std::vector<std::vector<int32_t>> prompts;
    std::vector<SamplingParams> params;
    for (int i = 0; i < 10; ++i) {
      prompts.push_back(random_prompt(rng, 20 + static_cast<int>(rng() % 30)));
      params.push_back(greedy(40));
    }
    const auto want = reference(engine, prompts, params);
    for (const bool prefix_cache : {false, true}) {
      SchedulerOptions so;
      so.enable_prefix_cache = prefix_cache;
      Scheduler sched(engine, so);
      std::vector<Collected> got(prompts.size());
      for (size_t i = 0; i < prompts.size(); ++i) {
        sched.submit(spec_for(prompts[i], params[i], got[i]));
      }
      sched.run_until_idle();
      for (size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_EQ(got[i].finish_reason, "length") << i;
        EXPECT_EQ(got[i].tokens.size(), 40u) << i;
        if (backend == "flash") {
          EXPECT_EQ(got[i].tokens, want[i].tokens) << "request " << i;
          EXPECT_EQ(got[i].text, want[i].text) << "request " << i;
        }
      }
      const SchedulerStats st = sched.stats();
      EXPECT_GT(st.preemptions, 0) << backend;
      EXPECT_EQ(st.pages_in_use, 0);
      EXPECT_EQ(st.pages_free + st.pages_cached, st.pages_total);
    }
  }
}

TEST(Scheduler, CancelFreesPagesAtTheNextStep) {
  Engine engine(stories("flash", 16));
  Scheduler sched(engine, SchedulerOptions{});
  std::mt19937 rng(4);
  Collected a, b;
  const uint64_t id = sched.submit(spec_for(random_prompt(rng, 40), greedy(300), a));
  sched.submit(spec_for(random_prompt(rng, 10), greedy(5), b));
  for (int s = 0; s < 5; ++s) sched.step();
  EXPECT_GT(sched.stats().pages_in_use, 0);
  sched.cancel(id);
  sched.step();
  EXPECT_TRUE(a.finished);
  EXPECT_EQ(a.finish_reason, "abort");
  EXPECT_LT(a.tokens.size(), 300u);
  sched.run_until_idle();
  EXPECT_EQ(b.finish_reason, "length");
  EXPECT_EQ(b.tokens.size(), 5u);
  EXPECT_EQ(sched.stats().pages_in_use, 0);
  sched.cancel(id);  // finished: ignored
  EXPECT_FALSE(sched.step());
}

TEST(Scheduler, StopStringsEosMaxTokensZeroAndLogprobs) {
  Engine engine(stories());
  Scheduler sched(engine, SchedulerOptions{});
  const std::vector<int32_t> prompt = engine.tokenizer().encode("Once upon a time", true);
  Collected plain, stopped, zero, stop_id, lp;
  sched.submit(spec_for(prompt, greedy(40), plain));
  sched.run_until_idle();
  ASSERT_GT(plain.text.size(), 10u);
  // Stop at the first occurrence of a substring of the greedy text.
  const std::string stop = plain.text.substr(8, 3);
  SamplingParams s = greedy(40);
  s.stop = {stop};
  sched.submit(spec_for(prompt, s, stopped));
  sched.submit(spec_for(prompt, greedy(0), zero));
  // A stop token ends generation without being reported, like EOS.
  SamplingParams e = greedy(40);
  e.stop_token_ids = {plain.tokens[6]};
  sched.submit(spec_for(prompt, e, stop_id));
  sched.submit(spec_for(prompt, greedy(8), lp, /*top_logprobs=*/3));
  sched.run_until_idle();
  EXPECT_EQ(stopped.finish_reason, "stop");
  EXPECT_EQ(stopped.text, plain.text.substr(0, plain.text.find(stop)));
  EXPECT_EQ(zero.finish_reason, "length");
  EXPECT_TRUE(zero.tokens.empty());
  EXPECT_EQ(stop_id.finish_reason, "stop");
  const auto first = std::find(plain.tokens.begin(), plain.tokens.end(), plain.tokens[6]);
  EXPECT_EQ(stop_id.tokens, std::vector<int32_t>(plain.tokens.begin(), first));
  ASSERT_EQ(lp.logprobs.size(), 8u);
  for (size_t i = 0; i < lp.logprobs.size(); ++i) {
    const TokenLogprobs& t = lp.logprobs[i];
    ASSERT_EQ(t.top.size(), 3u);
    EXPECT_EQ(t.top[0].id, lp.tokens[i]);  // greedy picks the most likely
    EXPECT_EQ(t.chosen.id, lp.tokens[i]);
    EXPECT_FLOAT_EQ(t.chosen.logprob, t.top[0].logprob);
    EXPECT_LE(t.top[0].logprob, 0.0f);
    EXPECT_GE(t.top[0].logprob, t.top[1].logprob);
    EXPECT_GE(t.top[1].logprob, t.top[2].logprob);
    EXPECT_LT(std::exp(t.top[0].logprob) + std::exp(t.top[1].logprob), 1.0 + 1e-5);
  }
}

TEST(Scheduler, RejectsRequestsItCannotServe) {
  Engine engine(stories());
  Scheduler sched(engine, SchedulerOptions{});
  Collected c;
  EXPECT_THROW(sched.submit(spec_for({}, greedy(4), c)), Error);
  EXPECT_THROW(sched.submit(spec_for({1, 512}, greedy(4), c)), Error);
  EXPECT_THROW(sched.submit(spec_for(std::vector<int32_t>(512, 5), greedy(4), c)), Error);
  SamplingParams bad = greedy(4);
  bad.top_p = 0.0f;
  EXPECT_THROW(sched.submit(spec_for({1, 5}, bad, c)), Error);
  // The longest prompt that fits gets its one token.
  sched.submit(spec_for(std::vector<int32_t>(511, 5), greedy(4), c));
  sched.run_until_idle();
  EXPECT_EQ(c.tokens.size(), 1u);
  EXPECT_EQ(c.finish_reason, "length");
  sched.shutdown(std::chrono::milliseconds(0));
  EXPECT_THROW(sched.submit(spec_for({1, 5}, greedy(4), c)), SchedulerClosed);
}

TEST(Scheduler, BackgroundThreadAndShutdownAbortInFlight) {
  Engine engine(stories());
  Scheduler sched(engine, SchedulerOptions{});
  sched.start();
  Collected c;
  std::mutex mu;
  std::condition_variable cv;
  RequestSpec s = spec_for({1, 403, 407}, greedy(100000), c);
  auto inner = s.on_output;
  s.on_output = [&](const RequestOutput& o) {
    std::lock_guard lock(mu);
    inner(o);
    cv.notify_all();
  };
  sched.submit(std::move(s));
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return c.tokens.size() >= 3; });
  }
  sched.shutdown(std::chrono::milliseconds(0));
  std::lock_guard lock(mu);
  EXPECT_TRUE(c.finished);
  // Either aborted by the shutdown or ended at the context length first.
  EXPECT_TRUE(c.finish_reason == "abort" || c.finish_reason == "length") << c.finish_reason;
  EXPECT_EQ(sched.stats().running, 0);
}

}  // namespace
}  // namespace sagellm
