// Engine-level generation against the greedy continuations of ../shared/golden (transformers).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/fixtures.h"
#include "core/error.h"
#include "engine/engine.h"
#include "io/safetensors.h"

namespace sagellm {
namespace {

using testing::model_dir;
using testing::shared_dir;

nlohmann::json golden_json() {
  std::ifstream f(shared_dir() / "golden/stories260K/golden.json");
  return nlohmann::json::parse(f);
}

std::vector<int32_t> golden_ids(const std::string& prompt) {
  io::SafetensorsFile f(shared_dir() / "golden/stories260K/golden.safetensors");
  const io::TensorEntry* e = f.find(prompt + ".input_ids");
  std::vector<int32_t> v(static_cast<size_t>(e->numel()));
  std::memcpy(v.data(), e->data, e->nbytes);
  return v;
}

EngineOptions stories(const std::string& backend = "flash") {
  EngineOptions o;
  o.model_dir = model_dir("stories260K");
  o.attention_backend = backend;
  return o;
}

GenerationRequest greedy(std::vector<int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0.0f;
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

TEST(Generation, GreedyContinuationsMatchGolden) {
  Engine engine(stories());
  const nlohmann::json g = golden_json();
  for (const char* prompt : {"bos_only", "short", "medium", "long"}) {
    const std::vector<int32_t> want = g["prompts"][prompt]["greedy_32"];
    const auto out = engine.generate({greedy(golden_ids(prompt), 32)});
    EXPECT_EQ(out[0].tokens, want) << prompt;
    EXPECT_EQ(out[0].finish_reason, "length");
  }
}

TEST(Generation, BatchOfRequestsEqualsEachAlone) {
  for (const std::string backend : {"flash", "sage_attn"}) {
    Engine engine(stories(backend));
    std::vector<GenerationRequest> reqs;
    for (const char* p : {"bos_only", "short", "medium", "long"})
      reqs.push_back(greedy(golden_ids(p), 40));
    const auto together = engine.generate(reqs);
    for (size_t i = 0; i < reqs.size(); ++i) {
      const auto alone = engine.generate({reqs[i]});
      EXPECT_EQ(together[i].tokens, alone[0].tokens) << backend << " request " << i;
      EXPECT_EQ(together[i].text, alone[0].text);
    }
    // Every page went back to the allocator.
    EXPECT_EQ(engine.cache().num_free_pages(), engine.cache().shape().num_pages);
  }
}

TEST(Generation, SeededSamplingIsReproducible) {
  Engine engine(stories());
  GenerationRequest r;
  r.prompt = golden_ids("short");
  r.sampling.temperature = 0.9f;
  r.sampling.top_p = 0.95f;
  r.sampling.max_tokens = 48;
  r.sampling.seed = 1234;
  const auto a = engine.generate({r});
  const auto b = engine.generate({r});
  EXPECT_EQ(a[0].tokens, b[0].tokens);
  r.sampling.seed = 99;
  const auto c = engine.generate({r});
  EXPECT_NE(a[0].tokens, c[0].tokens);
}

TEST(Generation, StopStringsAndStopIds) {
  Engine engine(stories());
  const auto base = engine.generate({greedy(golden_ids("short"), 32)});
  ASSERT_GT(base[0].text.size(), 20u);
  // Stop at a word that the greedy text contains: the output is the text before it.
  const std::string stop = base[0].text.substr(10, 4);
  GenerationRequest r = greedy(golden_ids("short"), 32);
  r.sampling.stop = {stop};
  const auto out = engine.generate({r});
  EXPECT_EQ(out[0].finish_reason, "stop");
  EXPECT_EQ(out[0].text, base[0].text.substr(0, base[0].text.find(stop)));
  // A stop token id ends generation before that token.
  GenerationRequest s = greedy(golden_ids("short"), 32);
  s.sampling.stop_token_ids = {base[0].tokens[5]};
  const auto out2 = engine.generate({s});
  EXPECT_EQ(out2[0].finish_reason, "stop");
  const auto first = std::find(base[0].tokens.begin(), base[0].tokens.end(), base[0].tokens[5]);
  EXPECT_EQ(out2[0].tokens.size(), static_cast<size_t>(first - base[0].tokens.begin()));
}

TEST(Generation, StreamedPiecesConcatenateToText) {
  Engine engine(stories());
  std::string streamed;
  const auto out =
      engine.generate({greedy(golden_ids("medium"), 64)},
                      [&](size_t, const std::string& piece, int32_t) { streamed += piece; });
  EXPECT_EQ(streamed, out[0].text);
  EXPECT_EQ(out[0].text, engine.tokenizer().decode(out[0].tokens));
}

TEST(Generation, ContextLimitEndsWithLength) {
  EngineOptions o = stories();
  o.context_length = 40;
  Engine engine(o);
  const auto out = engine.generate({greedy(golden_ids("short"), 100)});
  EXPECT_EQ(out[0].finish_reason, "length");
  EXPECT_EQ(out[0].prompt_tokens + static_cast<int>(out[0].tokens.size()), 40);
  try {
    engine.generate({greedy(golden_ids("medium"), 4)});
    FAIL() << "a 64-token prompt must not fit a 40-token context";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than the context length 40"), std::string::npos)
        << e.what();
  }
}

TEST(Generation, FullCacheIsAClearError) {
  EngineOptions o = stories();
  o.kv_cache_tokens = 64;
  o.page_size = 16;
  Engine engine(o);
  try {
    engine.generate({greedy(golden_ids("medium"), 8), greedy(golden_ids("short"), 8)});
    FAIL() << "expected the cache to be full";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(engine.cache().num_free_pages(), engine.cache().shape().num_pages);
  // The engine keeps working afterwards.
  EXPECT_EQ(engine.generate({greedy(golden_ids("short"), 8)})[0].tokens.size(), 8u);
}

TEST(Generation, UnknownNamesAreRejected) {
  EngineOptions o = stories("nope");
  try {
    Engine e(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("flash, sage_attn"), std::string::npos) << e.what();
  }
  o = stories();
  o.kv_cache_dtype = "int4";
  EXPECT_THROW(Engine e(o), Error);
  o = stories();
  o.device = "tpu";
  EXPECT_THROW(Engine e(o), Error);
}

}  // namespace
}  // namespace sagellm
