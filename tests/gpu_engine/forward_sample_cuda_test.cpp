// Engine::forward_sample on the CUDA runner: the ids drawn on the device equal the CPU sampler's
// draws from the logits forward() returns for the same step (prefill, decode steps replayed from
// CUDA graphs, more rows than one logits chunk, tensor-parallel ranks), and the scheduler gives
// the same tokens whether it samples on the device or, for logprobs, on the host.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "common/fixtures.h"
#include "common/sampling_cases.h"
#include "core/cuda_device.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/sampling.h"
#include "engine/scheduler.h"

namespace sagellm {
namespace {

using testing::model_dir;

// stories260K, or the Llama-3.1-8B shape (a 128256-token vocabulary) cut to two layers of dummy
// weights (the draws only need its logits' shape) in a temporary directory.
struct Model {
  explicit Model(const std::string& name) {
    if (name != "llama-3.1-8b-shape") {
      dir = model_dir(name);
      return;
    }
    std::ifstream in(model_dir(name) / "config.json");
    nlohmann::json c = nlohmann::json::parse(in);
    c["num_hidden_layers"] = 2;
    dir = std::filesystem::temp_directory_path() /
          ("sagellm_forward_sample_8b_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json") << c.dump();
    dummy = true;
  }
  ~Model() {
    if (dummy) std::filesystem::remove_all(dir);
  }
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  EngineOptions options(int tp_size = 1) const {
    EngineOptions o;
    o.model_dir = dir;
    o.device = "cuda";
    o.kv_cache_tokens = 16384;
    o.page_size = 16;
    o.tp_size = tp_size;
    if (dummy) o.load_format = "dummy";
    return o;
  }

  std::filesystem::path dir;
  bool dummy = false;
};

// Runs `batch` through forward() and then forward_sample() (the second run writes the same K/V
// again, so both see the same logits; the flash backend's bf16 cache has no state that the first
// run changes) and compares every id with the CPU sampler's. Returns the number of draws.
int expect_same_draws(Engine& e, const ForwardBatch& batch, std::mt19937_64& rng) {
  const size_t vocab = static_cast<size_t>(e.config().vocab_size);
  const std::vector<float> logits = e.forward(batch);
  const size_t rows = logits.size() / vocab;
  std::vector<sampling::DrawParams> draws;
  for (size_t k = 0; k < rows; ++k) {
    draws.push_back(testing::random_draw(rng, static_cast<int>(vocab)));
  }
  const std::vector<int32_t> ids = e.forward_sample(batch, draws);
  EXPECT_EQ(ids.size(), rows);
  SamplingScratch scratch;
  int mismatches = 0;
  for (size_t k = 0; k < rows && k < ids.size(); ++k) {
    const int32_t want = sample_with_uniform(
        std::span<const float>(logits.data() + k * vocab, vocab), draws[k], scratch);
    if (ids[k] != want && ++mismatches <= 5) {
      ADD_FAILURE() << "row " << k << ": gpu " << ids[k] << " cpu " << want
                    << " T=" << draws[k].temperature << " top_k=" << draws[k].top_k
                    << " top_p=" << draws[k].top_p << " min_p=" << draws[k].min_p
                    << " u=" << draws[k].uniform;
    }
  }
  EXPECT_EQ(mismatches, 0);
  return static_cast<int>(rows);
}

struct Seq {
  AttentionSeq attention;
  std::vector<int32_t> tokens;
};

void grow(Engine& e, AttentionSeq& s) {
  while (static_cast<int64_t>(s.pages.size()) * e.page_size() < s.kv_len) {
    s.pages.push_back(*e.allocate_page());
  }
}

// Prefill of `n` random prompts of at least `min_len` tokens in one step (each request's last row,
// or every row), then
// `decode_steps` one-token steps of all of them (the first of each size runs directly, later ones
// replay a captured graph).
int prefill_and_decode(Engine& e, int n, int min_len, LogitsMode mode, int decode_steps,
                       std::mt19937_64& rng) {
  std::vector<AttentionSeq> seqs(static_cast<size_t>(n));
  ForwardBatch prefill;
  prefill.logits_mode = mode;
  for (AttentionSeq& s : seqs) {
    const int len = min_len + static_cast<int>(rng() % 140);
    s.q_start = static_cast<int>(prefill.tokens.size());
    s.q_len = len;
    s.kv_len = len;
    grow(e, s);
    for (int i = 0; i < len; ++i) prefill.tokens.push_back(3 + static_cast<int32_t>(rng() % 500));
    prefill.attention.seqs.push_back(s);
  }
  int draws = expect_same_draws(e, prefill, rng);
  for (int step = 0; step < decode_steps; ++step) {
    ForwardBatch d;
    for (AttentionSeq& s : seqs) {
      s.q_start = static_cast<int>(d.tokens.size());
      s.q_len = 1;
      s.kv_len += 1;
      grow(e, s);
      d.tokens.push_back(3 + static_cast<int32_t>(rng() % 500));
      d.attention.seqs.push_back(s);
    }
    draws += expect_same_draws(e, d, rng);
  }
  for (const AttentionSeq& s : seqs) {
    for (int p : s.pages) e.release_page(p);
  }
  return draws;
}

TEST(CudaForwardSample, DeviceDrawsEqualCpuDrawsOfTheSameLogits) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU present";
  std::mt19937_64 rng(21);
  for (const char* model : {"stories260K", "llama-3.1-8b-shape"}) {
    SCOPED_TRACE(model);
    const Model m(model);
    Engine e(m.options());
    int draws = prefill_and_decode(e, 37, 20, LogitsMode::kLastPerSeq, 6, rng);
    // Every row of two prompts: more rows than one logits chunk (256).
    draws += prefill_and_decode(e, 2, 150, LogitsMode::kAll, 0, rng);
    EXPECT_GE(e.cuda_graphs_captured(), 1u);
    std::printf("[ sampling ] %s: %d device draws compared\n", model, draws);
    ForwardBatch b;
    b.tokens = {1, 2};
    b.attention.seqs.push_back(AttentionSeq{0, 2, 2, {*e.allocate_page()}});
    EXPECT_THROW(e.forward_sample(b, std::vector<sampling::DrawParams>(2)), Error);
    e.release_page(b.attention.seqs[0].pages[0]);
  }
}

TEST(CudaForwardSample, TensorParallelRanksDrawOnGatheredLogits) {
  const int gpus = cuda_device_count();
  if (gpus < 2) GTEST_SKIP() << gpus << " GPU(s): --tp-size 2 needs at least 2";
  std::mt19937_64 rng(22);
  for (const char* model : {"stories260K", "llama-3.1-8b-shape"}) {
    SCOPED_TRACE(model);
    const Model m(model);
    EngineOptions o = m.options(2);
    o.kv_cache_tokens = 8192;
    Engine e(o);
    prefill_and_decode(e, 19, 20, LogitsMode::kLastPerSeq, 4, rng);
    prefill_and_decode(e, 2, 150, LogitsMode::kAll, 0, rng);
  }
}

struct Collected {
  std::vector<int32_t> tokens;
  bool finished = false;
};

// The same seeded requests twice: asking for logprobs makes every step sample on the host from
// the logits; without, the draws run on the device. A GPU step's logits do not depend on the run,
// and both use the requests' Samplers' uniforms, so the tokens are the same.
TEST(CudaForwardSample, SchedulerTokensDoNotDependOnWhereTheyAreDrawn) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU present";
  const Model m("stories260K");
  Engine e(m.options());
  std::mt19937 rng(23);
  std::vector<RequestSpec> specs;
  for (int i = 0; i < 12; ++i) {
    RequestSpec s;
    s.prompt.push_back(1);
    while (static_cast<int>(s.prompt.size()) < 5 + static_cast<int>(rng() % 50)) {
      s.prompt.push_back(3 + static_cast<int32_t>(rng() % 500));
    }
    s.sampling.temperature = i % 4 == 0 ? 0.0f : 0.6f + 0.1f * static_cast<float>(i % 7);
    s.sampling.top_k = i % 3 == 0 ? 40 : 0;
    s.sampling.top_p = i % 2 == 0 ? 0.9f : 1.0f;
    s.sampling.min_p = i % 5 == 0 ? 0.05f : 0.0f;
    s.sampling.seed = 1000 + i;
    s.sampling.max_tokens = 20 + static_cast<int>(rng() % 30);
    s.sampling.ignore_eos = true;
    specs.push_back(s);
  }
  auto run = [&](int top_logprobs) {
    Scheduler sched(e, SchedulerOptions{});
    std::vector<Collected> got(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      RequestSpec s = specs[i];
      s.top_logprobs = top_logprobs;
      Collected* out = &got[i];
      s.on_output = [out](const RequestOutput& o) {
        out->tokens.insert(out->tokens.end(), o.tokens.begin(), o.tokens.end());
        out->finished = out->finished || o.finished;
      };
      sched.submit(std::move(s));
    }
    sched.run_until_idle();
    return got;
  };
  const std::vector<Collected> host = run(0);
  const std::vector<Collected> device = run(-1);
  for (size_t i = 0; i < specs.size(); ++i) {
    ASSERT_TRUE(host[i].finished && device[i].finished) << "request " << i;
    EXPECT_EQ(device[i].tokens, host[i].tokens) << "request " << i;
    EXPECT_EQ(static_cast<int>(device[i].tokens.size()), specs[i].sampling.max_tokens);
  }
}

}  // namespace
}  // namespace sagellm
