// Bad input gives a sagellm::Error that says what is wrong, never a crash or a silent result.
#include "tokenizer_test_util.h"

namespace sagellm::testing {
namespace {

// The message of the Error that `fn` throws ("" when it throws none).
template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_MENTIONS(expr, ...)                                                          \
  do {                                                                                            \
    const std::string message = error_of([&] { (void)(expr); });                                  \
    EXPECT_FALSE(message.empty()) << #expr << " did not throw sagellm::Error";                    \
    for (const char* part : {__VA_ARGS__}) {                                                      \
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message; \
    }                                                                                             \
  } while (0)

TEST(TokenizerErrors, InvalidUtf8IsRejected) {
  const std::vector<std::string> bad = {
      "\xFF",                    // never valid
      "abc\x80",                 // lone continuation byte
      "\xC0\xAF",                // overlong '/'
      "\xE0\x80\xAF",            // overlong
      "\xED\xA0\x80",            // UTF-16 surrogate D800
      "\xF4\x90\x80\x80",        // above U+10FFFF
      "ok \xE4\xBD",             // truncated 3-byte character
      std::string("a\0\xFE", 3)  // NUL is fine, FE is not
  };
  for (const std::string& s : bad) {
    EXPECT_FALSE(is_valid_utf8(s));
    EXPECT_ERROR_MENTIONS(llama3().encode(s), "UTF-8");
    EXPECT_ERROR_MENTIONS(llama2().encode(s), "UTF-8");
  }
  EXPECT_ERROR_MENTIONS(llama3().encode("abc\x80"), "offset 3");
  for (const std::string s : {"", "plain", "\xC2\xA0", "\xE4\xBD\xA0\xE5\xA5\xBD",
                              "\xF0\x9F\xA6\x99", "\xF4\x8F\xBF\xBF", "\xEF\xBF\xBD"}) {
    EXPECT_TRUE(is_valid_utf8(s)) << s;
  }
  EXPECT_TRUE(is_valid_utf8(std::string("a\0b", 3)));
}

// stories260K's tokenizer.json (small) with one change applied.
std::string mutated(const std::function<void(nlohmann::json&)>& change) {
  nlohmann::json j = read_json(model_dir("stories260K") / "tokenizer.json");
  change(j);
  return j.dump();
}

TEST(TokenizerErrors, MalformedFiles) {
  ScratchDir dir;
  auto load = [&](const std::string& content) {
    return Tokenizer::from_file(dir.write("tokenizer.json", content));
  };
  EXPECT_ERROR_MENTIONS(Tokenizer::from_file(dir.path() / "missing.json"), "missing.json",
                        "does not exist");
  EXPECT_ERROR_MENTIONS(load("{\"model\": "), "tokenizer.json", "malformed JSON");
  EXPECT_ERROR_MENTIONS(load("[1, 2]"), "tokenizer.json", "JSON object");
  EXPECT_ERROR_MENTIONS(load("{}"), "tokenizer.json", "'model'");
  EXPECT_ERROR_MENTIONS(load("{\"model\": {\"type\": \"BPE\", \"vocab\": 7}}"), "model.vocab",
                        "object");
  EXPECT_ERROR_MENTIONS(load("{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}"), "'merges'");
  EXPECT_ERROR_MENTIONS(load(mutated([](auto& j) { j["model"]["vocab"]["x"] = "seven"; })),
                        "model.vocab.x", "integer");
  EXPECT_ERROR_MENTIONS(load(mutated([](auto& j) {
                          j["model"]["merges"][3] = {"\xE2\x96\x81t", "zzz"};
                        })),
                        "model.merges[3]", "zzz", "not in the vocabulary");
  EXPECT_ERROR_MENTIONS(load(mutated([](auto& j) { j["model"]["merges"][0] = "a b c"; })),
                        "model.merges[0]");
  EXPECT_ERROR_MENTIONS(load(mutated([](auto& j) { j["model"]["merges"][0] = 5; })),
                        "model.merges[0]");
  EXPECT_ERROR_MENTIONS(load(mutated([](auto& j) { j["added_tokens"][0].erase("content"); })),
                        "added_tokens[0]", "'content'");
  EXPECT_ERROR_MENTIONS(load(mutated([](auto& j) { j["version"] = "2.0"; })), "version");
  EXPECT_ERROR_MENTIONS(
      load(mutated([](auto& j) { j["normalizer"]["normalizers"][0].erase("prepend"); })),
      "normalizer.normalizers[0]", "'prepend'");
  EXPECT_ERROR_MENTIONS(load(mutated([](auto& j) {
                          j["pre_tokenizer"] = {{"type", "Split"},
                                                {"pattern", {{"Regex", "(unclosed"}}},
                                                {"behavior", "Isolated"},
                                                {"invert", false}};
                        })),
                        "pre_tokenizer.pattern", "cannot compile regex");
  EXPECT_ERROR_MENTIONS(load(mutated([](auto& j) {
                          j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<nope>";
                        })),
                        "post_processor", "<nope>");
}

TEST(TokenizerErrors, UnsupportedComponentsAreNamed) {
  ScratchDir dir;
  auto load = [&](const std::function<void(nlohmann::json&)>& change) {
    return Tokenizer::from_file(dir.write("tokenizer.json", mutated(change)));
  };
  EXPECT_ERROR_MENTIONS(load([](auto& j) { j["model"]["type"] = "Unigram"; }), "Unigram",
                        "not supported");
  EXPECT_ERROR_MENTIONS(load([](auto& j) { j["model"]["type"] = "WordPiece"; }), "WordPiece");
  EXPECT_ERROR_MENTIONS(load([](auto& j) { j["model"]["dropout"] = 0.1; }), "dropout");
  EXPECT_ERROR_MENTIONS(load([](auto& j) {
                          j["normalizer"] = {{"type", "NFKC"}};
                        }),
                        "NFKC", "normalizer", "not supported");
  EXPECT_ERROR_MENTIONS(load([](auto& j) {
                          j["normalizer"]["normalizers"][1] = {{"type", "Lowercase"}};
                        }),
                        "Lowercase", "normalizer.normalizers[1]");
  EXPECT_ERROR_MENTIONS(load([](auto& j) {
                          j["pre_tokenizer"] = {{"type", "Whitespace"}};
                        }),
                        "Whitespace", "pre_tokenizer");
  EXPECT_ERROR_MENTIONS(load([](auto& j) {
                          j["decoder"]["decoders"][2] = {{"type", "CTC"}};
                        }),
                        "CTC", "decoder.decoders[2]");
  EXPECT_ERROR_MENTIONS(load([](auto& j) {
                          j["post_processor"] = {{"type", "BertProcessing"},
                                                 {"sep", {"</s>", 2}},
                                                 {"cls", {"<s>", 1}}};
                        }),
                        "BertProcessing", "post_processor");
  EXPECT_ERROR_MENTIONS(load([](auto& j) {
                          j["truncation"] = {{"max_length", 8}};
                        }),
                        "truncation", "not supported");
  EXPECT_ERROR_MENTIONS(load([](auto& j) { j["padding"] = {{"length", 8}}; }), "padding");
  EXPECT_ERROR_MENTIONS(load([](auto& j) {
                          j["pre_tokenizer"] = {{"type", "Split"}};
                        }),
                        "pre_tokenizer", "'pattern'");
}

TEST(TokenizerErrors, MissingModelDirectoryFiles) {
  ScratchDir dir;
  EXPECT_ERROR_MENTIONS(Tokenizer::from_model_dir(dir.path()), "tokenizer.json");
  dir.write("tokenizer.json", read_file_bytes(model_dir("stories260K") / "tokenizer.json"));
  dir.write("tokenizer_config.json", "{oops");
  EXPECT_ERROR_MENTIONS(Tokenizer::from_model_dir(dir.path()), "tokenizer_config.json",
                        "malformed JSON");
}

}  // namespace
}  // namespace sagellm::testing
