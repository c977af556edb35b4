// A bounded fuzz test of the request parser over a generated corpus: valid requests mutated by
// byte flips, insertions, deletions, truncations, splices and JSON-aware value swaps (seeded, a
// fixed number of inputs). Every input must either parse into a request that passes the sampling
// checks or be refused with a 4xx ApiError; nothing else may escape and nothing may crash.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "server/request_parser.h"

namespace sagellm {
namespace {

using nlohmann::json;

const std::vector<std::string> kSeeds = {
    R"({"model": "m", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.7,
        "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7, "stop": ["\n", "The end"],
        "stream": true, "stream_options": {"include_usage": true}, "logprobs": 3,
        "ignore_eos": false, "n": 1})",
    R"({"prompt": [1, 403, 407, 9], "max_tokens": 4, "stop_token_ids": [2, 13]})",
    R"({"prompt": ["one prompt"], "stop": "x", "seed": -3})",
    R"({"model": "m", "messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi \u00e9\u4e16"}, {"role": "assistant", "content": null},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "max_completion_tokens": 32, "logprobs": true, "top_logprobs": 5, "temperature": 0})",
    R"({"prompt": "Hello", "add_special_tokens": false})",
    R"({"tokens": [1, 2, 3]})",
};

// Values of every type, to put where a field's value was.
const std::vector<json> kValues = {nullptr,
                                   true,
                                   false,
                                   0,
                                   -1,
                                   1,
                                   2.5,
                                   -1e300,
                                   1e300,
                                   4294967297ull,
                                   "",
                                   "text",
                                   json::array(),
                                   json::array({1, "a"}),
                                   json::object(),
                                   json::array({json::object({{"role", 5}})})};

std::string mutate_bytes(std::string s, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    const size_t pos = s.empty() ? 0 : rng() % s.size();
    switch (rng() % 6) {
      case 0:  // flip a byte to anything, invalid UTF-8 included
        if (!s.empty()) s[pos] = static_cast<char>(rng() & 0xFF);
        break;
      case 1:  // insert a structural character
        s.insert(pos, 1, "{}[]\",:\\0-e.tfn"[rng() % 16]);
        break;
      case 2:  // delete a run
        if (!s.empty()) s.erase(pos, 1 + rng() % 8);
        break;
      case 3:  // truncate
        s.resize(pos);
        break;
      case 4:  // duplicate a slice somewhere else
        if (!s.empty()) {
          const size_t len = 1 + rng() % std::min<size_t>(32, s.size() - pos);
          s.insert(rng() % (s.size() + 1), s.substr(pos, len));
        }
        break;
      default:  // a deep or long run
        s.insert(pos, std::string(1 + rng() % 200, "[{9\""[rng() % 4]));
        break;
    }
  }
  return s;
}

std::string mutate_json(const std::string& seed, std::mt19937_64& rng) {
  json j = json::parse(seed);
  // Replace or drop a field, or a field of a nested object/array element.
  std::vector<json*> objects{&j};
  for (auto& [k, v] : j.items()) {
    if (v.is_object()) objects.push_back(&v);
    if (v.is_array()) {
      for (auto& x : v) {
        if (x.is_object()) objects.push_back(&x);
      }
    }
  }
  json& target = *objects[rng() % objects.size()];
  if (target.empty()) return j.dump();
  auto it = target.begin();
  std::advance(it, static_cast<std::ptrdiff_t>(rng() % target.size()));
  if (rng() % 4 == 0) {
    target.erase(it);
  } else {
    *it = kValues[rng() % kValues.size()];
  }
  return j.dump();
}

// Runs every parser over `body`; returns how many accepted it.
int parse_all(const std::string& body) {
  int accepted = 0;
  auto attempt = [&](auto parse) {
    try {
      parse();
      ++accepted;
    } catch (const server::ApiError& e) {
      EXPECT_GE(e.status(), 400) << body;
      EXPECT_LT(e.status(), 500) << body;
      EXPECT_GT(std::string(e.what()).size(), 0u);
    }
    // Any other exception escapes and fails the test with the input in the log.
  };
  attempt([&] {
    const auto r = server::parse_completion_request(body);
    r.sampling.validate();
    EXPECT_TRUE(r.prompt_text.has_value() != r.prompt_ids.has_value()) << body;
    EXPECT_LE(r.top_logprobs, 20);
  });
  attempt([&] {
    const auto r = server::parse_chat_request(body);
    r.sampling.validate();
    EXPECT_FALSE(r.messages.empty()) << body;
    for (const ChatMessage& m : r.messages) EXPECT_TRUE(is_valid_utf8(m.content));
  });
  attempt([&] { server::parse_tokenize_request(body); });
  attempt([&] { server::parse_detokenize_request(body); });
  return accepted;
}

TEST(RequestParserFuzz, SeedsParse) {
  for (const std::string& seed : kSeeds) EXPECT_GE(parse_all(seed), 1) << seed;
  EXPECT_NO_THROW(server::parse_completion_request(kSeeds[0]));
  EXPECT_NO_THROW(server::parse_chat_request(kSeeds[3]));
  EXPECT_NO_THROW(server::parse_detokenize_request(kSeeds[5]));
}

TEST(RequestParserFuzz, MutatedRequestsAreParsedOrRefusedCleanly) {
  constexpr int kInputs = 30000;
  std::mt19937_64 rng(20261125);
  int accepted = 0, refused = 0;
  for (int i = 0; i < kInputs; ++i) {
    const std::string& seed = kSeeds[rng() % kSeeds.size()];
    std::string body = seed;
    switch (rng() % 3) {
      case 0:
        body = mutate_bytes(seed, rng);
        break;
      case 1:
        body = mutate_json(seed, rng);
        break;
      default:
        body = mutate_bytes(mutate_json(seed, rng), rng);
        break;
    }
    const int n = parse_all(body);
    if (n > 0) {
      ++accepted;
    } else {
      ++refused;
    }
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << "input " << i << ": " << body;
      return;
    }
  }
  // The corpus exercises both outcomes heavily, so neither path is left untested.
  EXPECT_GT(accepted, kInputs / 10);
  EXPECT_GT(refused, kInputs / 10);
}

}  // namespace
}  // namespace sagellm
