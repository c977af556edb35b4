// Every endpoint over loopback: health through the lifecycle, models, completions and chat (whole
// and streamed), tokenize/detokenize, metrics, the API key, prefix-cache hits, and the
// bench-serving client against the server.
#include <gtest/gtest.h>

#include <algorithm>

#include "server/bench_serving.h"
#include "server_test_util.h"

namespace sagellm {
namespace {

using testing::eventually;
using testing::http_get;
using testing::http_post;
using testing::http_stream;
using testing::json;
using testing::LiveServer;

class ChatModelCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    std::filesystem::remove_all(std::filesystem::temp_directory_path() /
                                ("sagellm_chat_model_" + std::to_string(getpid())));
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new ChatModelCleanup);

EngineOptions stories() { return testing::engine_options(testing::model_dir("stories260K")); }

TEST(ServerLifecycle, HealthIs503WhileLoadingThen200ThenRefusesAfterShutdown) {
  std::unique_ptr<Engine> engine;  // outlives the server
  server::ServerOptions so;
  so.port = 0;
  server::ApiServer srv(so);
  const int port = srv.listen();
  EXPECT_EQ(http_get(port, "/health").status, 503);
  const auto early = http_post(port, "/v1/completions", R"({"prompt": "Hi"})");
  EXPECT_EQ(early.status, 503);
  EXPECT_TRUE(early.j["error"].contains("message"));
  EXPECT_EQ(http_get(port, "/metrics").status, 200);  // scrapable while loading

  engine = std::make_unique<Engine>(stories());
  srv.attach(*engine);
  EXPECT_EQ(http_get(port, "/health").status, 200);
  EXPECT_EQ(http_post(port, "/v1/completions", R"({"prompt": "Hi", "max_tokens": 2})").status, 200);
  srv.shutdown(std::chrono::milliseconds(100));
  EXPECT_NE(http_get(port, "/health").status, 200);  // 503 or no answer once stopped
}

TEST(ServerEndpoints, ModelsListsIdAndRoot) {
  LiveServer s(stories());
  const auto r = http_get(s.port, "/v1/models");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["object"], "list");
  ASSERT_EQ(r.j["data"].size(), 1u);
  EXPECT_EQ(r.j["data"][0]["id"], "stories");
  EXPECT_EQ(r.j["data"][0]["root"], testing::model_dir("stories260K").string());
  EXPECT_EQ(r.j["data"][0]["max_model_len"], 512);
}

TEST(ServerEndpoints, CompletionEqualsEngineGenerate) {
  LiveServer s(stories());
  const std::string prompt = "Once upon a time, there was a";
  GenerationRequest g;
  g.prompt = s.engine->tokenizer().encode(prompt, true);
  g.sampling.temperature = 0;
  g.sampling.max_tokens = 40;
  const GenerationResult want = s.engine->generate({g}).at(0);

  const auto r =
      http_post(s.port, "/v1/completions",
                json({{"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}}).dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["object"], "text_completion");
  EXPECT_EQ(r.j["choices"][0]["text"], want.text);
  EXPECT_EQ(r.j["choices"][0]["finish_reason"], want.finish_reason);
  EXPECT_EQ(r.j["usage"]["prompt_tokens"], g.prompt.size());
  EXPECT_EQ(r.j["usage"]["completion_tokens"], want.tokens.size());
  EXPECT_EQ(r.j["usage"]["total_tokens"], g.prompt.size() + want.tokens.size());

  // Token ids as the prompt give the same.
  const auto ids =
      http_post(s.port, "/v1/completions",
                json({{"prompt", g.prompt}, {"max_tokens", 40}, {"temperature", 0}}).dump());
  ASSERT_EQ(ids.status, 200) << ids.body;
  EXPECT_EQ(ids.j["choices"][0]["text"], want.text);
}

TEST(ServerEndpoints, StreamedTextEqualsNonStreamedForTheSameSeed) {
  LiveServer s(testing::engine_options(testing::chat_model_dir()));
  const json completion = {{"prompt", "The little dog"},
                           {"max_tokens", 48},
                           {"temperature", 0.8},
                           {"top_p", 0.95},
                           {"top_k", 40},
                           {"seed", 1234},
                           {"logprobs", 2}};
  const json chat = {{"messages",
                      {{{"role", "system"}, {"content", "Tell a story."}},
                       {{"role", "user"}, {"content", "A cat and a ball."}}}},
                     {"max_tokens", 48},
                     {"temperature", 0.7},
                     {"min_p", 0.05},
                     {"seed", 99},
                     {"logprobs", true},
                     {"top_logprobs", 3}};
  for (const auto& [path, body] :
       {std::pair{"/v1/completions", completion}, std::pair{"/v1/chat/completions", chat}}) {
    const auto whole = http_post(s.port, path, body.dump());
    ASSERT_EQ(whole.status, 200) << whole.body;
    json sb = body;
    sb["stream"] = true;
    const auto streamed = http_stream(s.port, path, sb);
    ASSERT_EQ(streamed.status, 200);
    EXPECT_TRUE(streamed.done) << streamed.raw;
    EXPECT_FALSE(streamed.malformed) << streamed.raw;
    const json& choice = whole.j["choices"][0];
    const std::string text = path == std::string("/v1/chat/completions")
                                 ? choice["message"]["content"].get<std::string>()
                                 : choice["text"].get<std::string>();
    EXPECT_FALSE(text.empty());
    EXPECT_EQ(streamed.text(), text) << path;
    // Usage rides on the last chunk, with the finish reason.
    const json& last = streamed.last();
    // (The second request of a prompt may hit the prefix cache: only the counts must agree.)
    EXPECT_EQ(last["usage"]["prompt_tokens"], whole.j["usage"]["prompt_tokens"]) << path;
    EXPECT_EQ(last["usage"]["completion_tokens"], whole.j["usage"]["completion_tokens"]) << path;
    EXPECT_EQ(last["choices"][0]["finish_reason"], choice["finish_reason"]);
    // One logprob entry per generated token, in both forms.
    const int n = whole.j["usage"]["completion_tokens"];
    size_t streamed_lps = 0;
    for (const json& e : streamed.events) {
      const json& lp = e["choices"][0]["logprobs"];
      if (lp.is_null()) continue;
      streamed_lps += lp.contains("content") ? lp["content"].size() : lp["tokens"].size();
    }
    EXPECT_EQ(streamed_lps, static_cast<size_t>(n)) << path;
    if (path == std::string("/v1/chat/completions")) {
      EXPECT_EQ(streamed.events[0]["object"], "chat.completion.chunk");
      EXPECT_EQ(streamed.events[0]["choices"][0]["delta"]["role"], "assistant");
      ASSERT_EQ(choice["logprobs"]["content"].size(), static_cast<size_t>(n));
      const json& first = choice["logprobs"]["content"][0];
      EXPECT_EQ(first["top_logprobs"].size(), 3u);
      EXPECT_LE(first["logprob"].get<double>(), 0.0);
      EXPECT_TRUE(first["bytes"].is_array());
    } else {
      ASSERT_EQ(choice["logprobs"]["tokens"].size(), static_cast<size_t>(n));
      EXPECT_EQ(choice["logprobs"]["top_logprobs"][0].size(), 2u);
    }
  }
}

TEST(ServerEndpoints, TokenizeAndDetokenizeRoundTrip) {
  LiveServer s(stories());
  const auto t = http_post(s.port, "/tokenize", R"({"prompt": "Hello world, said Lily."})");
  ASSERT_EQ(t.status, 200) << t.body;
  const std::vector<int32_t> ids = t.j["tokens"];
  EXPECT_EQ(ids, s.engine->tokenizer().encode("Hello world, said Lily.", true));
  EXPECT_EQ(t.j["count"], ids.size());
  EXPECT_EQ(t.j["max_model_len"], 512);
  const auto d =
      http_post(s.port, "/detokenize",
                json({{"tokens", std::vector<int32_t>(ids.begin() + 1, ids.end())}}).dump());
  ASSERT_EQ(d.status, 200) << d.body;
  EXPECT_EQ(d.j["prompt"], "Hello world, said Lily.");
  EXPECT_EQ(http_post(s.port, "/detokenize", R"({"tokens": [1, 100000]})").status, 400);
}

TEST(ServerEndpoints, MetricsCountTokensAndExposeHistograms) {
  LiveServer s(stories());
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(http_post(s.port, "/v1/completions",
                        R"({"prompt": "Once", "max_tokens": 7, "ignore_eos": true})")
                  .status,
              200);
  }
  const size_t prompt_tokens = s.engine->tokenizer().encode("Once", true).size();
  const std::string prompt_total = fmt::format("sagellm:prompt_tokens_total {}", 3 * prompt_tokens);
  const std::vector<std::string> needles = {
      "sagellm:time_to_first_token_seconds_count 3",
      "sagellm:inter_token_latency_seconds_count 18",
      "sagellm:e2e_request_latency_seconds_count 3",
      "sagellm:queue_time_seconds_bucket{le=\"+Inf\"} 3",
      "sagellm:generation_tokens_total 21",
      prompt_total,
      "sagellm:num_running_reqs 0",
      "sagellm:num_queue_reqs 0",
      "sagellm:token_usage 0",
      "sagellm:request_success_total{finish_reason=\"length\"} 3"};
  // The gauges come from the scheduler's end-of-step snapshot, which may be published just after
  // the last reply went out.
  testing::HttpReply m;
  eventually([&] {
    m = http_get(s.port, "/metrics");
    return std::all_of(needles.begin(), needles.end(),
                       [&](const std::string& n) { return m.body.find(n) != std::string::npos; });
  });
  ASSERT_EQ(m.status, 200);
  for (const std::string& needle : needles) {
    EXPECT_NE(m.body.find(needle), std::string::npos) << needle << "\n" << m.body;
  }
}

TEST(ServerEndpoints, ApiKeyIsRequiredWhenSet) {
  server::ServerOptions so;
  so.api_key = "sk-test";
  LiveServer s(stories(), so);
  const std::string body = R"({"prompt": "Hi", "max_tokens": 2})";
  const auto none = http_post(s.port, "/v1/completions", body);
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.j["error"]["code"], "invalid_api_key");
  EXPECT_EQ(http_post(s.port, "/v1/completions", body, {{"Authorization", "Bearer nope"}}).status,
            401);
  EXPECT_EQ(http_get(s.port, "/v1/models").status, 401);
  EXPECT_EQ(
      http_post(s.port, "/v1/completions", body, {{"Authorization", "Bearer sk-test"}}).status,
      200);
  EXPECT_EQ(http_get(s.port, "/health").status, 200);
}

TEST(ServerEndpoints, PrefixCacheHitsAreMeasuredAndChangeNothing) {
  const std::string prompt =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "park with her friends. One day, she saw a big red ball under a tree. She wanted to play "
      "with it, so she ran to the tree and picked it up. Her friend Tom came to play too.";
  const json body = {{"prompt", prompt}, {"max_tokens", 30}, {"temperature", 0}};
  std::string with_cache;
  {
    LiveServer s(stories());
    const auto first = http_post(s.port, "/v1/completions", body.dump());
    const auto second = http_post(s.port, "/v1/completions", body.dump());
    ASSERT_EQ(first.status, 200);
    ASSERT_EQ(second.status, 200);
    const int prompt_tokens = first.j["usage"]["prompt_tokens"];
    ASSERT_GT(prompt_tokens, 48);
    EXPECT_EQ(first.j["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    // Whole 16-token pages of the prompt, leaving at least one token to compute.
    EXPECT_EQ(second.j["usage"]["prompt_tokens_details"]["cached_tokens"],
              (prompt_tokens - 1) / 16 * 16);
    EXPECT_EQ(first.j["choices"][0]["text"], second.j["choices"][0]["text"]);
    with_cache = second.j["choices"][0]["text"];
    const std::string hits =
        fmt::format("sagellm:prefix_cache_hit_tokens_total {}", (prompt_tokens - 1) / 16 * 16);
    testing::HttpReply m;
    eventually([&] {  // counters are published at the end of each scheduler step
      m = http_get(s.port, "/metrics");
      return m.body.find(hits) != std::string::npos;
    });
    EXPECT_NE(m.body.find(hits), std::string::npos) << m.body;
  }
  server::ServerOptions so;
  so.scheduler.enable_prefix_cache = false;
  LiveServer s(stories(), so);
  http_post(s.port, "/v1/completions", body.dump());
  const auto again = http_post(s.port, "/v1/completions", body.dump());
  EXPECT_EQ(again.j["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_EQ(again.j["choices"][0]["text"], with_cache);
}

TEST(ServerEndpoints, BenchServingReportsThroughputAndLatencies) {
  LiveServer s(stories());
  server::BenchServingOptions o;
  o.port = s.port;
  o.num_prompts = 12;
  o.max_concurrency = 4;
  o.random_input_len = 24;
  o.random_output_len = 10;
  o.request_rate = 200;
  const json r = server::run_bench_serving(o);
  EXPECT_EQ(r["completed"], 12) << r.dump();
  EXPECT_EQ(r["failed"], 0);
  EXPECT_EQ(r["total_output_tokens"], 120);
  EXPECT_EQ(r["total_input_tokens"], 12 * 24);
  EXPECT_GT(r["output_throughput"].get<double>(), 0.0);
  for (const char* k : {"mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms",
                        "median_itl_ms", "p99_itl_ms", "mean_e2e_latency_ms"}) {
    ASSERT_TRUE(r.contains(k)) << k;
    EXPECT_GT(r[k].get<double>(), 0.0) << k;
  }
  EXPECT_LE(r["median_ttft_ms"].get<double>(), r["p99_ttft_ms"].get<double>());
  EXPECT_NE(server::format_bench_serving(r).find("Output token throughput"), std::string::npos);
  EXPECT_TRUE(eventually([&] { return s.srv->scheduler()->stats().running == 0; }));
}

}  // namespace
}  // namespace sagellm
