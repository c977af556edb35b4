// The server under load and misbehaving clients: 200 concurrent streams, KV-cache exhaustion,
// a client that disconnects mid-stream, a shutdown with streams in flight, and bad requests.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <random>

#include "server_test_util.h"

namespace sagellm {
namespace {

using testing::eventually;
using testing::http_get;
using testing::http_post;
using testing::http_stream;
using testing::json;
using testing::LiveServer;
using testing::RawClient;

EngineOptions stories(int64_t kv_tokens = 0) {
  return testing::engine_options(testing::model_dir("stories260K"), 16, kv_tokens);
}

// A slower model (hidden 384, 4 layers, 4096 context), so a long generation is still running
// when the client goes away.
EngineOptions passkey() { return testing::engine_options(testing::model_dir("passkey-4k"), 64); }

const std::vector<std::string> kPrompts = {"Once upon a time", "The dog ran",
                                           "Lily and Tom went to the park", "One day, a bird",
                                           "Sam had a red ball. He"};

TEST(ServerLoad, TwoHundredConcurrentStreamsLoseAndDuplicateNothing) {
  LiveServer s(stories());
  // Reference texts: the greedy continuation of each prompt cut at each length, from the engine.
  constexpr int kMaxLen = 24;
  std::map<std::pair<size_t, int>, std::string> want;
  for (size_t p = 0; p < kPrompts.size(); ++p) {
    for (int n = 1; n <= kMaxLen; ++n) {
      GenerationRequest g;
      g.prompt = s.engine->tokenizer().encode(kPrompts[p], true);
      g.sampling.temperature = 0;
      g.sampling.max_tokens = n;
      g.sampling.ignore_eos = true;
      want[{p, n}] = s.engine->generate({g}).at(0).text;
    }
  }
  constexpr int kClients = 200;
  std::mt19937 rng(5);
  std::vector<std::pair<size_t, int>> jobs;
  jobs.reserve(kClients);
  for (int i = 0; i < kClients; ++i) {
    jobs.emplace_back(rng() % kPrompts.size(), 1 + static_cast<int>(rng() % kMaxLen));
  }
  std::vector<testing::SseReply> replies(kClients);
  std::vector<std::thread> threads;
  threads.reserve(kClients);
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      const json body = {{"prompt", kPrompts[jobs[static_cast<size_t>(i)].first]},
                         {"max_tokens", jobs[static_cast<size_t>(i)].second},
                         {"temperature", 0},
                         {"ignore_eos", true},
                         {"logprobs", 0},
                         {"stream", true}};
      replies[static_cast<size_t>(i)] = http_stream(s.port, "/v1/completions", body);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    const testing::SseReply& r = replies[static_cast<size_t>(i)];
    const auto [p, n] = jobs[static_cast<size_t>(i)];
    ASSERT_EQ(r.status, 200) << i << ": " << r.error;
    EXPECT_TRUE(r.done) << i;
    EXPECT_FALSE(r.malformed) << i;
    EXPECT_EQ(r.last()["usage"]["completion_tokens"], n) << i;
    EXPECT_EQ(r.last()["choices"][0]["finish_reason"], "length") << i;
    // Each token exactly once: one logprob entry per token, and the text is the reference.
    size_t tokens = 0;
    for (const json& e : r.events) {
      if (!e["choices"][0]["logprobs"].is_null()) {
        tokens += e["choices"][0]["logprobs"]["tokens"].size();
      }
    }
    EXPECT_EQ(tokens, static_cast<size_t>(n)) << i;
    EXPECT_EQ(r.text(), want[std::make_pair(p, n)]) << i;
  }
  // Stats are published at the end of each scheduler step, which may come after the last reply.
  EXPECT_TRUE(eventually([&] {
    const SchedulerStats st = s.srv->scheduler()->stats();
    return st.running == 0 && st.pages_in_use == 0;
  })) << s.srv->scheduler()->stats().pages_in_use;
}

TEST(ServerLoad, KvCacheExhaustionQueuesAndPreemptsInsteadOfFailing) {
  server::ServerOptions so;
  so.scheduler.enable_prefix_cache = false;
  LiveServer s(stories(/*kv_tokens=*/16 * 16), so);  // 16 pages of 16 tokens
  ASSERT_EQ(s.engine->num_pages(), 16);
  std::vector<testing::HttpReply> replies(12);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < replies.size(); ++i) {
    threads.emplace_back([&, i] {
      // ~10 prompt tokens + 70 generated: 5 pages each, so at most 3 fit at once.
      const json body = {{"prompt", kPrompts[i % kPrompts.size()] + " and " + std::to_string(i)},
                         {"max_tokens", 70},
                         {"temperature", 0},
                         {"ignore_eos", true}};
      replies[i] = http_post(s.port, "/v1/completions", body.dump());
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < replies.size(); ++i) {
    ASSERT_EQ(replies[i].status, 200) << replies[i].body;
    EXPECT_EQ(replies[i].j["usage"]["completion_tokens"], 70);
  }
  EXPECT_GT(s.srv->scheduler()->stats().preemptions, 0);
  // Stats are published at the end of each scheduler step, which may come after the last reply.
  EXPECT_TRUE(eventually([&] {
    const SchedulerStats st = s.srv->scheduler()->stats();
    return st.pages_free == st.pages_total;
  })) << s.srv->scheduler()->stats().pages_free;
  // A prompt larger than the whole cache is refused up front rather than queued forever.
  const auto big =
      http_post(s.port, "/v1/completions",
                json({{"prompt", std::vector<int>(300, 5)}, {"max_tokens", 1}}).dump());
  EXPECT_EQ(big.status, 400) << big.body;
}

TEST(ServerLoad, DisconnectMidStreamFreesItsPages) {
  LiveServer s(passkey());
  RawClient c(s.port);
  ASSERT_TRUE(c.connected());
  c.send_post("/v1/completions", json({{"prompt", "The pass key is"},
                                       {"max_tokens", 4000},
                                       {"ignore_eos", true},
                                       {"temperature", 0},
                                       {"stream", true}})
                                     .dump());
  const std::string head = c.read_until("data: {", 5);
  ASSERT_NE(head.find("200 OK"), std::string::npos) << head;
  EXPECT_GT(s.srv->scheduler()->stats().pages_in_use, 0);
  c.close();
  ASSERT_TRUE(eventually([&] {
    const SchedulerStats st = s.srv->scheduler()->stats();
    return st.running == 0 && st.pages_in_use == 0;
  })) << "pages in use: "
      << s.srv->scheduler()->stats().pages_in_use;
  const auto m = http_get(s.port, "/metrics");
  EXPECT_NE(m.body.find("sagellm:request_success_total{finish_reason=\"abort\"} 1"),
            std::string::npos)
      << m.body;
  // Far fewer tokens than asked for were generated.
  EXPECT_LT(s.srv->scheduler()->stats().generation_tokens, 3000);
  EXPECT_EQ(http_post(s.port, "/v1/completions", R"({"prompt": "Hi", "max_tokens": 3})").status,
            200);
}

TEST(ServerLoad, ShutdownEndsInFlightStreamsCleanly) {
  LiveServer s(passkey());
  // Several streams, so that some are between two writes when the server stops: each must
  // still end with its final event and [DONE].
  constexpr int kStreams = 4;
  std::vector<testing::SseReply> replies(kStreams);
  std::vector<std::thread> clients;
  clients.reserve(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    clients.emplace_back([&, i] {
      replies[i] = http_stream(s.port, "/v1/completions",
                               {{"prompt", "The pass key is"},
                                {"max_tokens", 4000},
                                {"ignore_eos", true},
                                {"stream", true}});
    });
  }
  ASSERT_TRUE(eventually([&] {
    const SchedulerStats st = s.srv->scheduler()->stats();
    return st.running == kStreams && st.generation_tokens > 5 * kStreams;
  }));
  s.srv->shutdown(std::chrono::milliseconds(0));
  for (std::thread& c : clients) c.join();
  for (const testing::SseReply& reply : replies) {
    ASSERT_EQ(reply.status, 200) << reply.error;
    EXPECT_TRUE(reply.done) << reply.raw.substr(0, 500);
    EXPECT_FALSE(reply.malformed);
    EXPECT_EQ(reply.last()["choices"][0]["finish_reason"], "abort");
    EXPECT_LT(reply.last()["usage"]["completion_tokens"].get<int>(), 4000);
  }
}

struct BadCase {
  const char* name;
  const char* path;
  std::string body;
  int status;
  const char* param;  // expected error.param, or nullptr for null
};

TEST(ServerErrors, BadRequestsGetOpenAIErrorsAndTheServerKeepsServing) {
  server::ServerOptions so;
  so.max_request_bytes = 64 * 1024;
  LiveServer s(stories(), so);
  const std::vector<BadCase> cases = {
      {"malformed json", "/v1/completions", R"({"prompt": "Hi", )", 400, nullptr},
      {"not an object", "/v1/completions", R"(["Hi"])", 400, nullptr},
      {"empty body", "/v1/completions", "", 400, nullptr},
      {"prompt missing", "/v1/completions", R"({"max_tokens": 3})", 400, "prompt"},
      {"prompt wrong type", "/v1/completions", R"({"prompt": 5})", 400, "prompt"},
      {"max_tokens string", "/v1/completions", R"({"prompt": "Hi", "max_tokens": "3"})", 400,
       "max_tokens"},
      {"max_tokens fraction", "/v1/completions", R"({"prompt": "Hi", "max_tokens": 2.5})", 400,
       "max_tokens"},
      {"negative max_tokens", "/v1/completions", R"({"prompt": "Hi", "max_tokens": -1})", 400,
       "max_tokens"},
      {"temperature wrong type", "/v1/completions", R"({"prompt": "Hi", "temperature": "hot"})",
       400, "temperature"},
      {"negative temperature", "/v1/completions", R"({"prompt": "Hi", "temperature": -1})", 400,
       nullptr},
      {"top_p out of range", "/v1/completions", R"({"prompt": "Hi", "top_p": 1.5})", 400, nullptr},
      {"stream not bool", "/v1/completions", R"({"prompt": "Hi", "stream": "yes"})", 400, "stream"},
      {"stop wrong type", "/v1/completions", R"({"prompt": "Hi", "stop": [1]})", 400, "stop"},
      {"n=2", "/v1/completions", R"({"prompt": "Hi", "n": 2})", 400, "n"},
      {"logprobs too many", "/v1/completions", R"({"prompt": "Hi", "logprobs": 50})", 400,
       "logprobs"},
      {"token id out of vocab", "/v1/completions", R"({"prompt": [1, 99999]})", 400, "prompt"},
      {"negative token id", "/v1/completions", R"({"prompt": [1, -4]})", 400, "prompt[1]"},
      {"two prompts", "/v1/completions", R"({"prompt": ["a", "b"]})", 400, "prompt"},
      {"prompt too long", "/v1/completions", json({{"prompt", std::vector<int>(600, 5)}}).dump(),
       400, "prompt"},
      {"invalid utf-8", "/v1/completions", std::string("{\"prompt\": \"caf\xc3\x28\"}"), 400,
       nullptr},
      {"lone surrogate escape", "/v1/completions", R"({"prompt": "\ud800"})", 400, nullptr},
      {"deep nesting", "/v1/completions", std::string(100, '[') + std::string(100, ']'), 400,
       nullptr},
      {"oversized body", "/v1/completions", json({{"prompt", std::string(100 * 1024, 'a')}}).dump(),
       413, nullptr},
      {"messages missing", "/v1/chat/completions", R"({"model": "x"})", 400, "messages"},
      {"messages empty", "/v1/chat/completions", R"({"messages": []})", 400, "messages"},
      {"bad role", "/v1/chat/completions", R"({"messages": [{"role": "wizard", "content": "hi"}]})",
       400, "messages[0].role"},
      {"content wrong type", "/v1/chat/completions",
       R"({"messages": [{"role": "user", "content": 7}]})", 400, "messages[0].content"},
      {"top_logprobs without logprobs", "/v1/chat/completions",
       R"({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2})", 400,
       "top_logprobs"},
      {"roles do not alternate", "/v1/chat/completions",
       R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})", 400,
       "messages"},
      {"tokenize without prompt", "/tokenize", R"({"text": 1})", 400, "prompt"},
      {"detokenize wrong type", "/detokenize", R"({"tokens": "1,2"})", 400, "tokens"},
      {"unknown path", "/v1/engines", "{}", 404, nullptr},
  };
  const std::string good = R"({"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0})";
  const auto reference = http_post(s.port, "/v1/completions", good);
  ASSERT_EQ(reference.status, 200);
  for (const BadCase& c : cases) {
    const auto r = http_post(s.port, c.path, c.body);
    EXPECT_EQ(r.status, c.status) << c.name << ": " << r.body;
    ASSERT_FALSE(r.j.is_discarded()) << c.name << ": " << r.body;
    ASSERT_TRUE(r.j.contains("error")) << c.name;
    const json& e = r.j["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << c.name;
    EXPECT_TRUE(e["type"].is_string()) << c.name;
    EXPECT_TRUE(e.contains("param") && e.contains("code")) << c.name;
    if (c.param != nullptr) {
      EXPECT_EQ(e["param"], c.param) << c.name << ": " << r.body;
    }
    // Whatever came before, the server still answers a good request the same way.
    const auto ok = http_post(s.port, "/v1/completions", good);
    ASSERT_EQ(ok.status, 200) << "after " << c.name;
    EXPECT_EQ(ok.j["choices"][0]["text"], reference.j["choices"][0]["text"]) << c.name;
  }
  // Unknown fields are ignored; nulls read as absent.
  const auto extra = http_post(
      s.port, "/v1/completions",
      R"({"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, "frobnicate": {"x": [1]},
          "user": "me", "top_p": null, "stop": null})");
  ASSERT_EQ(extra.status, 200) << extra.body;
  EXPECT_EQ(extra.j["choices"][0]["text"], reference.j["choices"][0]["text"]);
  // The prompt-too-long error says so in OpenAI's words.
  const auto too_long =
      http_post(s.port, "/v1/completions", json({{"prompt", std::vector<int>(600, 5)}}).dump());
  EXPECT_EQ(too_long.j["error"]["code"], "context_length_exceeded");
}

}  // namespace
}  // namespace sagellm
