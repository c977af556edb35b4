// Components that the shipped tokenizers do not all exercise (Metaspace, added-token flags),
// UTF-8 helpers and the Oniguruma-compatible regex layer. Expected ids come from HF tokenizers
// 0.23 run on the same configurations.
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace sagellm::testing {
namespace {

using Ids = std::vector<int32_t>;

struct Case {
  std::string text;
  Ids ids;
  std::string decoded;          // decode(ids)
  std::string decoded_skipped;  // decode(ids, skip_special_tokens)
};

// stories260K's tokenizer.json with `change` applied, loaded through a scratch file.
Tokenizer variant(const std::function<void(nlohmann::json&)>& change) {
  nlohmann::json j = read_json(model_dir("stories260K") / "tokenizer.json");
  change(j);
  ScratchDir dir;
  return Tokenizer::from_file(dir.write("tokenizer.json", j.dump()));
}

std::function<void(nlohmann::json&)> metaspace(const std::string& scheme, bool split) {
  return [=](nlohmann::json& j) {
    const nlohmann::json m = {{"type", "Metaspace"},
                              {"replacement", "\xE2\x96\x81"},
                              {"prepend_scheme", scheme},
                              {"split", split}};
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = m;
    j["decoder"] = m;
  };
}

void expect_cases(const Tokenizer& t, const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    EXPECT_EQ(t.encode(c.text), c.ids) << "'" << c.text << "'";
    EXPECT_EQ(t.decode(c.ids), c.decoded) << "'" << c.text << "'";
    EXPECT_EQ(t.decode(c.ids, true), c.decoded_skipped) << "'" << c.text << "'";
  }
}

TEST(TokenizerComponents, MetaspacePrependFirstNoSplit) {
  expect_cases(variant(metaspace("first", false)),
               {{"Hello world", {346, 306, 414, 263, 304, 341}, "Hello world", "Hello world"},
                {"  Hello  world ",
                 {410, 346, 306, 414, 410, 263, 304, 341, 410},
                 " Hello  world ",
                 " Hello  world "},
                {"<s>Hi there", {512, 440, 417, 383}, "<s>Hi there", "Hi there"},
                {"Hi <s> there", {320, 417, 410, 512, 383}, "Hi <s> there", "Hi  there"},
                {" a  dog", {261, 410, 400, 428}, "a  dog", "a  dog"}});
}

TEST(TokenizerComponents, MetaspaceAlwaysSplit) {
  expect_cases(variant(metaspace("always", true)),
               {{"<s>Hi there", {512, 320, 417, 383}, "<s> Hi there", "Hi there"},
                {"Hi <s> there", {320, 417, 410, 512, 383}, "Hi <s> there", "Hi  there"},
                {"Ben saw Benny and Ben.",
                 {368, 302, 394, 368, 302, 416, 422, 269, 368, 302, 426},
                 "Ben saw Benny and Ben.",
                 "Ben saw Benny and Ben."}});
}

TEST(TokenizerComponents, MetaspaceNeverSplit) {
  expect_cases(variant(metaspace("never", true)),
               {{"Hello world", {440, 411, 306, 414, 263, 304, 341}, "Hello world", "Hello world"},
                {"  Hello  world ",
                 {410, 346, 306, 414, 410, 263, 304, 341, 410},
                 "  Hello  world ",
                 "  Hello  world "},
                {"dog", {418, 414, 428}, "dog", "dog"}});
}

TEST(TokenizerComponents, AddedTokenFlags) {
  const Tokenizer t = variant([](nlohmann::json& j) {
    auto token = [](int id, const char* content, bool single_word, bool lstrip, bool rstrip,
                    bool normalized, bool special) {
      return nlohmann::json{{"id", id},          {"content", content}, {"single_word", single_word},
                            {"lstrip", lstrip},  {"rstrip", rstrip},   {"normalized", normalized},
                            {"special", special}};
    };
    j["added_tokens"].push_back(token(514, "Ben", true, false, false, false, false));
    j["added_tokens"].push_back(token(515, "<x>", false, true, true, false, true));
    j["added_tokens"].push_back(token(516, " dog", false, false, false, true, false));
  });
  expect_cases(t, {{"Ben saw Benny and Ben.",
                    {514, 410, 394, 368, 302, 416, 422, 269, 410, 514, 410, 426},
                    "Ben  saw Benny and Ben .",
                    "Ben  saw Benny and Ben ."},
                   {"a <x>  b<x>c", {261, 515, 268, 515, 280}, "a<x> b<x> c", "a b c"},
                   {" a  dog", {410, 261, 516}, " a  dog", " a  dog"},
                   {"Hi <s> there", {320, 417, 410, 512, 410, 383}, "Hi <s>  there", "Hi   there"},
                   {"dog", {400, 428}, "dog", "dog"}});
  EXPECT_EQ(t.vocab_size(), 517);
  EXPECT_TRUE(t.is_special(515));
  EXPECT_FALSE(t.is_special(514));
}

TEST(TokenizerComponents, UnknownTokenWithoutByteFallback) {
  auto without_fallback = [](bool fuse) {
    return variant([fuse](nlohmann::json& j) {
      j["model"]["byte_fallback"] = false;
      j["model"]["fuse_unk"] = fuse;
    });
  };
  const std::string japan = "\xE6\x97\xA5\xE6\x9C\xAC";  // 日本: not in this vocabulary
  expect_cases(without_fallback(true),
               {{japan + " is far", {410, 0, 410, 293, 272, 295}, "<unk> is far", " is far"}});
  expect_cases(
      without_fallback(false),
      {{japan + " is far", {410, 0, 0, 410, 293, 272, 295}, "<unk><unk> is far", " is far"}});
}

TEST(TokenizerComponents, LegacyMergesEqualPairMerges) {
  // "a b" strings (older files) and ["a", "b"] pairs (newer ones) are the same merges.
  const Tokenizer legacy = variant([](nlohmann::json& j) {
    for (auto& m : j["model"]["merges"]) {
      m = m[0].get<std::string>() + " " + m[1].get<std::string>();
    }
  });
  for (const std::string text : {"Once upon a time, there was a little girl named Lily.",
                                 "She liked to play with her toys\nand her dog."}) {
    EXPECT_EQ(legacy.encode(text, true), stories().encode(text, true)) << text;
  }
}

TEST(TokenizerComponents, SubwordPrefixAndSuffix) {
  // A WordPiece-flavoured BPE: "##" on non-initial characters, "</w>" on the last one; no decoder,
  // so decode joins the tokens with spaces.
  const nlohmann::json j = nlohmann::json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
    "normalizer": null, "post_processor": null, "decoder": null,
    "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed",
                      "invert": false},
    "model": {"type": "BPE", "dropout": null, "unk_token": "[UNK]",
              "continuing_subword_prefix": "##", "end_of_word_suffix": "</w>",
              "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
              "vocab": {"[UNK]": 0, "a": 1, "##b": 2, "##b</w>": 3, "ab</w>": 4, "ab": 5,
                        "##c</w>": 6, "abc</w>": 7, "a</w>": 8},
              "merges": ["a ##b</w>", "a ##b", "ab ##c</w>"]}})");
  ScratchDir dir;
  const Tokenizer t = Tokenizer::from_file(dir.write("tokenizer.json", j.dump()));
  expect_cases(t, {{"ab abc  a xyz",
                    {4, 7, 8, 0, 0, 0},
                    "ab</w> abc</w> a</w> [UNK] [UNK] [UNK]",
                    "ab</w> abc</w> a</w> [UNK] [UNK] [UNK]"},
                   {"abab", {5, 0, 3}, "ab [UNK] ##b</w>", "ab [UNK] ##b</w>"}});
}

TEST(Utf8, LossyReplacesMaximalSubparts) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8::lossy("a\x80z"), "a" + r + "z");
  EXPECT_EQ(utf8::lossy("\xF0\x9F\x98z"), r + "z");   // one U+FFFD for a truncated sequence
  EXPECT_EQ(utf8::lossy("\xE0\x80"), r + r);          // E0 80 cannot start a character
  EXPECT_EQ(utf8::lossy("\xED\xA0\x80"), r + r + r);  // surrogate
  EXPECT_EQ(utf8::lossy("\xC3\xA9\xF0\x9F\xA6\x99"), "\xC3\xA9\xF0\x9F\xA6\x99");
  EXPECT_EQ(utf8::first_invalid("ab\xC3"), 2u);
  EXPECT_EQ(utf8::python_strip("\xE3\x80\x80 x \n\x1F"), "x");
}

TEST(Regex, OnigurumaWhitespaceAndUnicode16Classes) {
  // \s is White_Space: U+0085 is whitespace, U+180E (a format character since Unicode 6.3) not.
  const Regex space = Regex::compile(R"(\s+)", "test");
  EXPECT_EQ(space
                .find_all("a\xC2\x85"
                          "b")
                .size(),
            1u);
  EXPECT_TRUE(space
                  .find_all("a\xE1\xA0\x8E"
                            "b")
                  .empty());
  // U+10D40 (Garay digit zero, Unicode 16) is a number; U+11F04 (Kawi letter, Unicode 15) a letter.
  const Regex number = Regex::compile(R"(\p{N}+)", "test");
  EXPECT_EQ(number.find_all("\xF0\x90\xB5\x80"), (std::vector<std::pair<size_t, size_t>>{{0, 4}}));
  const Regex not_letter = Regex::compile(R"([^\s\p{L}]+)", "test");
  EXPECT_TRUE(not_letter.find_all("\xF0\x91\xBC\x84").empty());
  EXPECT_THROW(Regex::compile(R"([^\P{L}])", "test"), Error);
}

TEST(Regex, EmptyMatchesAdvanceLikeOniguruma) {
  const Regex re = Regex::compile("a*", "test");
  EXPECT_EQ(re.find_all("baab"), (std::vector<std::pair<size_t, size_t>>{{0, 0}, {1, 3}, {4, 4}}));
  EXPECT_EQ(Regex::literal("a.b", "test").find_all("a.b axb a.b"),
            (std::vector<std::pair<size_t, size_t>>{{0, 3}, {8, 11}}));
}

}  // namespace
}  // namespace sagellm::testing
